"""Observability across the job queue: the enqueuing request's trace travels in the message
(taskiq's OpenTelemetry middleware: a PRODUCER span in the request, a CONSUMER span around the
job in the worker), and the worker's own metrics and liveness listener."""

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from opentelemetry import context, propagate
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import make_wsgi_app
from taskiq import TaskiqMiddleware
from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware

log = structlog.get_logger(__name__)


def job_middlewares(tracer_provider: TracerProvider | None) -> list[TaskiqMiddleware]:
    if tracer_provider is None:
        return []
    return [OpenTelemetryMiddleware(tracer_provider=tracer_provider)]


def current_traceparent() -> str | None:
    """The current span's W3C traceparent, stored with a job so its later attempts (retries,
    requeues by the sweeper) join the same trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def continued_trace(traceparent: str | None) -> Iterator[None]:
    """Makes ``traceparent`` the current trace context (a job kicked again by the sweeper)."""
    if traceparent is None:
        yield
        return
    token = context.attach(propagate.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        context.detach(token)


class LoopHeartbeat:
    """Beats from the worker's event loop; the liveness check (served from a thread) fails
    when the loop stops beating, whether or not Redis or the database answer."""

    def __init__(self, stale_after_seconds: float) -> None:
        self.stale_after_seconds = stale_after_seconds
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last < self.stale_after_seconds


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes and probes every few seconds: not worth a line each


def start_worker_listener(host: str, port: int, heartbeat: LoopHeartbeat) -> WSGIServer:
    """/metrics (this process's registry) and /livez, in a daemon thread."""
    metrics_app = make_wsgi_app()

    def app(environ: Mapping[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") == "/livez":
            alive = heartbeat.alive()
            start_response(
                "200 OK" if alive else "503 Service Unavailable",
                [("Content-Type", "text/plain")],
            )
            return [b"ok\n" if alive else b"event loop stalled\n"]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host, port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    log.info("worker_listener_started", url=f"http://{host}:{port}/metrics")
    return server
