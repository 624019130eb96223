"""The standard instrumentation (GLASSHOUSE_OBSERVABILITY__INSTRUMENTATION=standard): the official
libraries, tuned through their documented options, do what the lean path's own code does.

- HTTP metrics: prometheus-fastapi-instrumentator, with an instrumentation function of ours
  (its extension point) that writes the metrics declared in metrics.py, so names, labels and
  buckets are the lean path's; its own default metrics would clash with them in the registry.
- Server spans: opentelemetry-instrumentation-fastapi, outermost, without its receive and send
  spans and without its OpenTelemetry metrics (Prometheus has them).
- Redis spans: opentelemetry-instrumentation-redis on the cache store's client only.

Only the request pipeline differs between the two modes: the request ID, the access line, the
in-progress gauge, the pool and cache gauges, SQL spans and domain metrics are the same code in
both (setup.py). tests/test_instrumentation_conformance.py holds the two side by side.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info
from redis.asyncio import Redis
from starlette.datastructures import Headers

from service.observability import http_metrics
from service.observability.logging import may_hold_a_secret, redact_text
from service.observability.request_context import RouteTemplates
from service.observability.tracing import RecordedTracesOnlyProvider
from service.settings import Settings

# The requests request_context.is_probe names: for the instrumentator, patterns searched in the
# route template (or, unmatched, the path); for the tracing instrumentation, in the whole URL.
PROBE_HANDLERS = ["^/health", "^/metrics$"]
PROBE_URLS = r"^[a-z]+://[^/]*/health,^[a-z]+://[^/]*/metrics$"


def instrument_http_metrics(app: FastAPI, routes: RouteTemplates) -> None:
    """Probes and scrapes uncounted, unmatched paths grouped as handler "none", status codes as
    "2xx"; ``.expose()`` is not called: the service serves /metrics itself."""

    def record(info: Info) -> None:
        handler = info.modified_handler
        # A path that only a trailing-slash redirect matched is reported as itself, IDs and
        # all: one series per scanned URL. Only the app's templates are labels.
        if handler not in routes.known():
            handler = http_metrics.UNKNOWN_ROUTE
        response_bytes = _content_length(info.response.headers) if info.response else 0
        http_metrics.record(
            handler,
            http_metrics.method_label(info.method),
            info.modified_status,
            info.modified_duration,
            _content_length(info.request.headers),
            response_bytes,
        )

    Instrumentator(
        should_group_status_codes=True,
        should_group_untemplated=True,
        excluded_handlers=PROBE_HANDLERS,
    ).add(record).instrument(app)


def _content_length(headers: Headers) -> int:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


def instrument_server_spans(app: FastAPI, provider: TracerProvider) -> None:
    """Spans named "GET /api/v1/items/{item_id}" that continue an inbound traceparent; the
    request ID is added by RequestContextMiddleware, which runs inside (its hook runs before
    the request ID exists)."""
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        meter_provider=NoOpMeterProvider(),
        excluded_urls=PROBE_URLS,
        exclude_spans=["receive", "send"],
        server_request_hook=_mask_credentials_in_url,
    )


# The attributes, old and stable names, in which the instrumentation records the request URL.
_URL_ATTRIBUTES = ("url.path", "url.query", "url.full", "http.target", "http.url")


def _mask_credentials_in_url(span: Span, scope: dict[str, Any]) -> None:
    """A credential pasted into the URL (an API key, a bearer token) is masked in the span, as
    in the access line: the instrumentation records the path and query as they came."""
    raw = scope.get("path", "") + "?" + scope.get("query_string", b"").decode("latin-1")
    if not span.is_recording() or not may_hold_a_secret(raw):
        return
    recorded = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = recorded.get(name)
        if isinstance(value, str) and may_hold_a_secret(value):
            span.set_attribute(name, redact_text(value))


def instrument_redis_client(client: Redis, provider: TracerProvider) -> None:
    """This client only (the near cache's connection and other clients stay untraced). Spans
    start only inside recorded traces, as SQL spans do: the instrumentation would otherwise make
    every call outside a traced request (readiness checks, startup) a root span."""
    RedisInstrumentor.instrument_client(
        client, tracer_provider=RecordedTracesOnlyProvider(provider)
    )


def stable_http_attributes(settings: Settings) -> bool:
    """Whether the instrumentations emit the stable HTTP attribute names the dashboards and
    trace searches use (http.request.method, url.path, http.response.status_code)."""
    opt_in = settings.otel.semconv_stability_opt_in or ""
    return bool({"http", "http/dup"} & {part.strip() for part in opt_in.split(",")})
