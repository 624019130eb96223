"""HTTP request metrics through prometheus-fastapi-instrumentator.

The metric objects are the module-level ones from metrics.py (created once per process), so
building several apps in one process (tests, reloads) never registers a series twice.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from prometheus_fastapi_instrumentator.metrics import Info
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.types import ASGIApp

from service.observability import metrics

# Probes and the scrape itself are not API traffic: counting them would drown the API's rates
# and latencies in kubelet and Prometheus noise.
UNMEASURED_PATHS = ("^/health(/|$)", "^/metrics$")


def _content_length(headers: Any) -> int:
    value = headers.get("content-length")
    return int(value) if value and value.isdigit() else 0


def _record(info: Info) -> None:
    handler = info.modified_handler
    metrics.HTTP_REQUESTS.labels(handler, info.method, info.modified_status).inc()
    metrics.HTTP_REQUEST_DURATION.labels(handler, info.method).observe(info.modified_duration)
    metrics.HTTP_REQUEST_SIZE.labels(handler).observe(_content_length(info.request.headers))
    if info.response is not None:
        metrics.HTTP_RESPONSE_SIZE.labels(handler).observe(_content_length(info.response.headers))


class _SharedInProgressMiddleware(PrometheusInstrumentatorMiddleware):
    """The library creates its in-progress gauge per middleware instance, which collides the
    second time an app is built in a process; this one uses the gauge from metrics.py."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        super().__init__(app, **{**options, "should_instrument_requests_inprogress": False})
        self.should_instrument_requests_inprogress = True
        self.inprogress_labels = True
        self.inprogress = metrics.HTTP_IN_PROGRESS


def instrument_http(app: FastAPI) -> None:
    app.add_middleware(
        _SharedInProgressMiddleware,
        should_group_status_codes=True,  # 2xx/4xx/5xx: a bounded label
        should_ignore_untemplated=False,
        should_group_untemplated=True,  # every unknown path is one series: handler="none"
        excluded_handlers=UNMEASURED_PATHS,
        instrumentations=(_record,),
    )
