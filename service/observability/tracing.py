"""OpenTelemetry traces: a TracerProvider per process (built after gunicorn forks, never shared
across a fork), FastAPI and SQLAlchemy instrumentation, and a bounded shutdown that flushes.

Tracing is on when an OTLP endpoint is configured (the standard ``OTEL_EXPORTER_OTLP_*``
variables) or when forced by setting; the embedded default has none, so it exports nothing and
logs no connection errors.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service import __version__
from service.settings import Settings

log = structlog.get_logger(__name__)

# Probes and scrapes would be most of the traces and none of the insight.
UNTRACED_URLS = "/health,/metrics"


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
        # Endpoint, headers, timeout and compression come from the standard OTEL_* variables.
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(timeout=settings.observability.trace_export_timeout_seconds)
            )
        )
    return provider


def _sampler(settings: Settings) -> Sampler | None:
    if settings.otel.traces_sampler:
        return None  # the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG itself
    return ParentBased(TraceIdRatioBased(settings.observability.trace_sample_ratio))


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


def instrument_app(app: FastAPI, provider: TracerProvider) -> None:
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        meter_provider=NoOpMeterProvider(),  # metrics are Prometheus' job here
        excluded_urls=UNTRACED_URLS,
        # Per-message send/receive spans double the span count for no insight.
        exclude_spans=["receive", "send"],
    )


class _ChildSpansOnlyTracer:
    """Starts spans only inside an existing trace. Statements run outside a traced request
    (readiness checks, startup, migrations) would otherwise each become a one-span trace."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        if not trace.get_current_span().get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(*args, **kwargs)

    @contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:
        if not trace.get_current_span().get_span_context().is_valid:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(*args, **kwargs) as span:
            yield span


class _ChildSpansOnlyProvider:
    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider

    def get_tracer(self, *args: Any, **kwargs: Any) -> _ChildSpansOnlyTracer:
        return _ChildSpansOnlyTracer(self._provider.get_tracer(*args, **kwargs))


def instrument_redis(client: Redis, provider: TracerProvider) -> None:
    """Redis command spans, for this client only, and only inside a traced request."""
    RedisInstrumentor.instrument_client(client, tracer_provider=_ChildSpansOnlyProvider(provider))  # type: ignore[arg-type]


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """DB spans for this engine only (the instrumentor's global patching would tie every
    engine in the process to the first provider)."""
    tracer = _ChildSpansOnlyProvider(provider).get_tracer(
        "opentelemetry.instrumentation.sqlalchemy", __version__
    )
    connections = NoOpMeterProvider().get_meter(__name__).create_up_down_counter("unused")
    EngineTracer(tracer, engine.sync_engine, connections)  # type: ignore[no-untyped-call]


def shutdown_tracer_provider(provider: TracerProvider, timeout_seconds: float) -> None:
    """Flushes and stops the provider, giving up after ``timeout_seconds`` so that a dead
    collector can never hold a worker's exit hostage."""
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_seconds)
    if worker.is_alive():
        log.warning("tracer_shutdown_timed_out", timeout_seconds=timeout_seconds)
