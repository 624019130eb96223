"""OpenTelemetry traces: the SDK's TracerProvider per process (built after gunicorn forks, never
shared across a fork), a BatchSpanProcessor and the standard OTLP/HTTP exporter, server spans
from our request middleware, SQLAlchemy spans from its instrumentation, Redis spans from the
cache store's hook, and a bounded shutdown that flushes. (The standard instrumentation takes
its server and Redis spans from the official instrumentations instead: standard.py.)

Tracing is on when an OTLP endpoint is configured (the standard ``OTEL_EXPORTER_OTLP_*``
variables) or when forced by setting; the embedded default has none, so it exports nothing and
logs no connection errors.
"""

from __future__ import annotations

import random
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.util import types
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Scope

from service import __version__
from service.cache.store import RedisStore
from service.observability.logging import may_hold_a_secret, redact_text
from service.settings import Settings

log = structlog.get_logger(__name__)


def create_tracer_provider(
    settings: Settings, *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """The process's provider, or None when tracing is off. ``exporter`` (tests) replaces OTLP
    and is exported synchronously."""
    if exporter is None and not settings.tracing_enabled:
        return None
    provider = TracerProvider(resource=_resource(settings), sampler=_sampler(settings))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        # Endpoint, headers, TLS and compression come from the standard OTEL_* variables.
        otlp = OTLPSpanExporter(timeout=settings.observability.trace_export_timeout_seconds)
        provider.add_span_processor(BatchSpanProcessor(otlp))
    return provider


def _sampler(settings: Settings) -> Sampler | None:
    ratio = _root_ratio_sampling(settings)
    if ratio is None:
        return None  # the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG itself
    if settings.observability.instrumentation == "standard":
        return ParentBased(TraceIdRatioBased(ratio))
    # ParentBased(TraceIdRatio), with the ratio applied by ServerSpans before any span exists
    # (see root_sample_ratio): a request it does not trace makes no spans at all.
    return ParentBased(ALWAYS_ON)


def root_sample_ratio(settings: Settings) -> float:
    """The share of requests without an inbound trace that ServerSpans traces; 1.0 when
    the SDK's own sampler decides (an OTEL_TRACES_SAMPLER other than parentbased_traceidratio)."""
    ratio = _root_ratio_sampling(settings)
    return 1.0 if ratio is None else ratio


def _root_ratio_sampling(settings: Settings) -> float | None:
    """The ratio when the sampler is ParentBased(TraceIdRatio): the documented production
    setting (OTEL_TRACES_SAMPLER=parentbased_traceidratio) or ours (no OTEL_TRACES_SAMPLER)."""
    sampler = settings.otel.traces_sampler
    if not sampler:
        return settings.observability.trace_sample_ratio
    if sampler.strip().lower() != "parentbased_traceidratio":
        return None
    try:
        ratio = float(settings.otel.traces_sampler_arg or 1.0)
    except ValueError:
        return None  # the SDK warns about it and falls back as it always did
    return ratio if 0.0 <= ratio <= 1.0 else None


def _resource(settings: Settings) -> Resource:
    attributes: dict[str, str] = {
        "service.name": settings.otel.service_name or settings.service_name,
        "service.version": __version__,
        "deployment.environment": settings.environment.value,
        "deployment.environment.name": settings.environment.value,
        # One per worker process: spans from two workers of one pod stay distinguishable.
        "service.instance.id": f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}",
    }
    if settings.pod_name:
        attributes["k8s.pod.name"] = settings.pod_name
    if settings.pod_namespace:
        attributes["k8s.namespace.name"] = settings.pod_namespace
    # OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME are merged in by Resource.create.
    return Resource.create(attributes)


class ServerSpans:
    """A server span per request, started and ended by RequestContextMiddleware, in the same
    layer as the request ID, metrics and the access line (one send wrapper, one scan of the
    headers, the access line handed the span's context instead of looking it up).

    Ours (the lean instrumentation) rather than opentelemetry-instrumentation-fastapi's, which
    matched every route again and wrapped the app in two more layers, even for requests it
    would not sample (see bench/HISTORY.md); GLASSHOUSE_OBSERVABILITY__INSTRUMENTATION=standard
    uses that one. Spans keep its names ("GET /api/v1/items/{item_id}") and the stable HTTP
    semantic-convention attributes; the inbound W3C ``traceparent`` is continued through the
    configured propagators.

    It is also the root sampler: a request that arrives without a trace is traced with
    probability ``root_sample_ratio``, and one that is not gets no span and no trace context
    at all, so none of its SQL statements or Redis round trips starts a span either. The share
    of traces kept is what the SDK's TraceIdRatioBased sampler would keep; what is lost is a
    trace ID on the log lines of requests whose trace is never exported anyway.
    """

    def __init__(self, tracer: trace.Tracer, *, root_sample_ratio: float = 1.0) -> None:
        self.tracer = tracer
        self.root_sample_ratio = root_sample_ratio

    def start(
        self, scope: Scope, trace_headers: dict[str, str] | None, request_id: str
    ) -> trace.Span | None:
        """The request's span, not yet current; None when the request is not traced.
        ``trace_headers``: the propagation headers it came with (PROPAGATION_HEADERS)."""
        parent = None
        if trace_headers is not None:
            parent = propagate.extract(trace_headers, getter=_HEADER_GETTER)
        # An upstream decision (a valid traceparent) is the parent-based sampler's to follow.
        inbound = parent is not None and trace.get_current_span(parent).get_span_context().is_valid
        if not inbound and random.random() >= self.root_sample_ratio:  # noqa: S311 (not crypto)
            return None
        # What is known before the app runs is given at the start, where a sampler can see it.
        path = scope["path"]
        attributes: dict[str, str | int] = {
            "http.request.method": scope["method"],
            # A credential pasted into the path is masked, as in the access line.
            "url.path": redact_text(path) if may_hold_a_secret(path) else path,
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
            "http.request_id": request_id,
        }
        if client := scope.get("client"):
            attributes["client.address"] = client[0]
        if server := scope.get("server"):
            attributes["server.address"] = server[0]
            if server[1] is not None:
                attributes["server.port"] = server[1]
        return self.tracer.start_span(
            scope["method"], context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )

    @staticmethod
    def describe(span: trace.Span, method: str, *, route: str | None, status: int) -> None:
        """Names the span after its route and adds what the response told, at the end."""
        attributes: dict[str, str | int] = {"http.response.status_code": status}
        if route:
            span.update_name(f"{method} {route}")
            attributes["http.route"] = route
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(trace.StatusCode.ERROR)


class _HeaderGetter(Getter[dict[str, str]]):
    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if value is not None else None

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


_HEADER_GETTER = _HeaderGetter()
# The headers the default propagators (W3C Trace Context and Baggage) read.
PROPAGATION_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def tracer_for_requests(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer("glasshouse.http", __version__)


class RedisRoundTripSpans:
    """A client span for each round trip the cache store makes to Redis, inside traced
    requests only (the store's ``round_trip`` hook).

    Ours (the lean instrumentation; the standard one uses the library) rather than
    opentelemetry-instrumentation-redis, which wrapped every command and built its attributes
    from the connection settings on each call, traced or not (see bench/HISTORY.md). They
    carry the database semantic conventions (``db.system.name``, ``db.operation.name``,
    ``server.address``...) plus the older ``db.system`` that the SQL spans carry too; the
    attributes are built once.
    """

    def __init__(self, tracer: trace.Tracer, connection: dict[str, Any]) -> None:
        self._tracer = tracer
        common: dict[str, str | int] = {
            "db.system": "redis",
            "db.system.name": "redis",
            "db.namespace": str(connection.get("db") or 0),
        }
        if "path" in connection:
            common["server.address"] = str(connection["path"])
            common["network.transport"] = "unix"
        else:
            common["server.address"] = str(connection.get("host", "localhost"))
            common["server.port"] = int(connection.get("port", 6379))
        self._common = common
        self._attributes: dict[tuple[str, int], dict[str, str | int]] = {}

    def __call__(self, operation: str, commands: int) -> AbstractContextManager[object]:
        if not trace.get_current_span().is_recording():
            return _NO_SPAN
        attributes = self._attributes.get((operation, commands))
        if attributes is None:
            attributes = {**self._common, "db.operation.name": operation}
            if commands > 1:
                attributes["db.operation.batch.size"] = commands
            if len(self._attributes) < 64:  # batch sizes vary little; bound it anyway
                self._attributes[(operation, commands)] = attributes
        span = self._tracer.start_span(operation, kind=trace.SpanKind.CLIENT, attributes=attributes)
        return _EndedOnExit(span)


class _EndedOnExit:
    """Ends a span on exit, recording the error that escaped, without making it current:
    nothing runs inside a Redis round trip that could start a child."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> trace.Span:
        return self._span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(trace.StatusCode.ERROR, type(error).__name__)
        self._span.end()


_NO_SPAN = nullcontext()


def trace_redis_store(store: RedisStore, provider: TracerProvider) -> None:
    tracer = provider.get_tracer("glasshouse.redis", __version__)
    connection = store.client.connection_pool.connection_kwargs
    store.round_trip = RedisRoundTripSpans(tracer, connection)


class RecordedTracesOnly(trace.Tracer):
    """Starts spans only inside a recorded trace; elsewhere it hands back a non-recording span
    and the wrapped tracer is never called.

    Given to the SQLAlchemy instrumentation, whose spans would otherwise become root spans, and
    be sampled as such, wherever no request is traced: every statement of a request the root
    sampler skipped, and each one run outside a request (readiness checks, startup).
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context)
        if not parent.is_recording():
            return trace.NonRecordingSpan(parent.get_span_context())
        return self.tracer.start_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception,
        )  # fmt: skip

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception,
        )  # fmt: skip
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class RecordedTracesOnlyProvider(trace.TracerProvider):
    """Hands out RecordedTracesOnly tracers of ``provider``: for an instrumentation that takes a
    provider, not a tracer (opentelemetry-instrumentation-redis)."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        tracer = self.provider.get_tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )
        return RecordedTracesOnly(tracer)


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """SQL spans for this engine only, in both instrumentations, from the official
    instrumentation's EngineTracer (what ``SQLAlchemyInstrumentor().instrument(engine=...)``
    builds). The instrumentor itself is a process-wide singleton that also patches
    ``create_engine`` and ``Engine.connect``: it would tie every engine the process creates
    later to the first provider. Its connection usage meter gets a no-op: pool gauges are ours
    (observability/setup.py)."""
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__)
    unused = NoOpMeterProvider().get_meter(__name__).create_up_down_counter("unused")
    EngineTracer(RecordedTracesOnly(tracer), engine.sync_engine, unused)  # type: ignore[no-untyped-call]


def shutdown_tracer_provider(provider: TracerProvider, timeout_seconds: float) -> None:
    """Flushes and stops the provider, giving up after ``timeout_seconds`` so that a dead
    collector can never hold a worker's exit hostage."""
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_seconds)
    if worker.is_alive():
        log.warning("tracer_shutdown_timed_out", timeout_seconds=timeout_seconds)
