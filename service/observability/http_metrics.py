"""HTTP request metrics, recorded by RequestContextMiddleware once routing has happened.

The same metric names and labels as prometheus-fastapi-instrumentator's defaults, so its
dashboards and queries keep working; probes and scrapes are not counted; every unknown path is
the one series handler="none", so 404 scans cannot create series.
"""

from __future__ import annotations

from service.observability import metrics

UNKNOWN_ROUTE = "none"
# Clients choose the method; any other token is one bounded value.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class HttpMetrics:
    def started(self, method: str) -> None:
        metrics.HTTP_IN_PROGRESS.labels(method_label(method)).inc()

    def finished(
        self,
        *,
        method: str,
        route: str | None,
        status: int,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        handler = route or UNKNOWN_ROUTE
        method = method_label(method)
        metrics.HTTP_IN_PROGRESS.labels(method).dec()
        metrics.HTTP_REQUESTS.labels(handler, method, f"{status // 100}xx").inc()
        metrics.HTTP_REQUEST_DURATION.labels(handler, method).observe(seconds)
        metrics.HTTP_REQUEST_SIZE.labels(handler).observe(request_bytes)
        metrics.HTTP_RESPONSE_SIZE.labels(handler).observe(response_bytes)
