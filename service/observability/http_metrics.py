"""HTTP request metrics, recorded by RequestContextMiddleware once routing has happened (lean
instrumentation) or by prometheus-fastapi-instrumentator (standard, observability/standard.py),
both through ``record``.

The same metric names and labels as prometheus-fastapi-instrumentator's defaults, so its
dashboards and queries keep working; probes and scrapes are not counted; every unknown path is
the one series handler="none", so 404 scans cannot create series.

Like the instrumentator, each request is written through the metrics' public methods as it
ends (under gunicorn, to this worker's memory-mapped files, which the master reads), so a
scrape is always current. Gauges of state that only requests change (the database pool's) are
sampled at most every ``flush_seconds`` while requests come in, and before a scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.observability import metrics

UNKNOWN_ROUTE = "none"
# Clients choose the method; any other token is one bounded value.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def record(
    handler: str,
    method: str,
    status_class: str,
    seconds: float,
    request_bytes: int,
    response_bytes: int,
) -> None:
    """One finished request, whichever instrumentation saw it (``method``: a ``method_label``,
    ``status_class``: "2xx")."""
    metrics.HTTP_REQUESTS.labels(handler, method, status_class).inc()
    metrics.HTTP_REQUEST_DURATION.labels(handler, method).observe(seconds)
    metrics.HTTP_REQUEST_SIZE.labels(handler).observe(request_bytes)
    metrics.HTTP_RESPONSE_SIZE.labels(handler).observe(response_bytes)


class HttpMetrics:
    """``records_requests``: False when prometheus-fastapi-instrumentator records each request
    (the standard instrumentation, through ``record``); the middleware then still counts the
    requests in progress, which the instrumentator cannot label by method alone."""

    def __init__(self, *, flush_seconds: float, records_requests: bool = True) -> None:
        self.flush_seconds = flush_seconds
        self.records_requests = records_requests
        self._flush_timer: asyncio.TimerHandle | None = None
        self._samplers: list[Callable[[], None]] = []

    def sample_on_flush(self, sampler: Callable[[], None]) -> None:
        """Runs ``sampler`` at every flush: for gauges of state that only requests change (the
        database pool's), read at the same moments instead of written on every change."""
        self._samplers.append(sampler)

    def started(self, method: str) -> str:
        """Counts a request in progress; returns its method label, for ``finished``."""
        method = method_label(method)
        metrics.HTTP_IN_PROGRESS.labels(method).inc()
        if self._flush_timer is None:
            self._flush_soon()
        return method

    def finished(
        self,
        method: str,
        route: str | None,
        status: int,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """``method``: the label ``started`` returned."""
        metrics.HTTP_IN_PROGRESS.labels(method).dec()
        if self.records_requests:
            status_class = f"{status // 100}xx"
            record(
                route or UNKNOWN_ROUTE, method, status_class, seconds, request_bytes, response_bytes
            )
        if self._flush_timer is None:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Called while no flush is scheduled (the callers check, once per request)."""
        if self.flush_seconds <= 0:
            self.flush()
        else:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self.flush_seconds, self.flush
            )

    def flush(self) -> None:
        """Samples the gauges registered with ``sample_on_flush`` (also called before a scrape
        of this process, and at shutdown)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for sampler in self._samplers:
            sampler()
