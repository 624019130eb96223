"""HTTP request metrics, recorded by RequestContextMiddleware once routing has happened.

The same metric names and labels as prometheus-fastapi-instrumentator's defaults, so its
dashboards and queries keep working; probes and scrapes are not counted; every unknown path is
the one series handler="none", so 404 scans cannot create series.

Recording is batched. A request only adds to plain tallies of this process; every
``flush_seconds`` the tallies are written to the Prometheus values in one go (under gunicorn,
the memory-mapped files the master reads). Writing through cost nine locked file writes and
five label lookups a request, 45 us in-process; a flush costs that once per series and second.
The price: a scrape may be up to ``flush_seconds`` behind, and a worker killed with SIGKILL
loses at most that much (the lifespan flushes at a normal exit).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

from service.observability import metrics

UNKNOWN_ROUTE = "none"
# Clients choose the method; any other token is one bounded value.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKET_BOUNDS = metrics.LATENCY_BUCKETS  # the histogram adds +Inf after the last


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


@dataclass(slots=True)
class _Tally:
    """What one series (route, method, status class) saw since the last flush."""

    requests: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_BUCKET_BOUNDS) + 1))
    request_bytes: int = 0
    response_bytes: int = 0


class HttpMetrics:
    def __init__(self, *, flush_seconds: float) -> None:
        self.flush_seconds = flush_seconds
        self._in_progress: dict[str, int] = {}
        self._tallies: dict[tuple[str | None, str, int], _Tally] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._samplers: list[Callable[[], None]] = []

    def sample_on_flush(self, sampler: Callable[[], None]) -> None:
        """Runs ``sampler`` at every flush: for gauges of state that only requests change (the
        database pool's), read at the same moments instead of written on every change."""
        self._samplers.append(sampler)

    def started(self, method: str) -> str:
        """Counts a request in progress; returns its method label, for ``finished``."""
        method = method_label(method)
        self._in_progress[method] = self._in_progress.get(method, 0) + 1
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
        """``method``: the label ``started`` returned. Positional: called on every request,
        where keyword arguments and a second label lookup cost 1.4k instructions."""
        self._in_progress[method] -= 1
        # Tallied by the status itself: its class ("2xx") is worked out once per series, at
        # the flush, not formatted on every request.
        key = (route, method, status)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        tally.requests += 1
        tally.seconds += seconds
        # Prometheus buckets are "less than or equal": the first bound >= seconds.
        tally.buckets[bisect_left(_BUCKET_BOUNDS, seconds)] += 1
        tally.request_bytes += request_bytes
        tally.response_bytes += response_bytes
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
        """Writes everything recorded so far (also called before a scrape of this process)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        tallies, self._tallies = self._tallies, {}
        for (route, method, status), tally in tallies.items():
            handler = route or UNKNOWN_ROUTE
            metrics.HTTP_REQUESTS.labels(handler, method, f"{status // 100}xx").inc(tally.requests)
            # prometheus_client has no public "observe n values": its per-bucket values are
            # what observe() itself increments (tests/test_observability_costs.py checks the sums).
            duration = metrics.HTTP_REQUEST_DURATION.labels(handler, method)
            for index, count in enumerate(tally.buckets):
                if count:
                    duration._buckets[index].inc(count)
            duration._sum.inc(tally.seconds)
            for summary, total in (
                (metrics.HTTP_REQUEST_SIZE, tally.request_bytes),
                (metrics.HTTP_RESPONSE_SIZE, tally.response_bytes),
            ):
                child = summary.labels(handler)
                child._count.inc(tally.requests)
                child._sum.inc(total)
        for method, in_progress in self._in_progress.items():
            metrics.HTTP_IN_PROGRESS.labels(method).set(in_progress)
        for sampler in self._samplers:
            sampler()
