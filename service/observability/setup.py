"""Wires logs, metrics and traces into an app and its engine. main.py and lifespan.py call
these; nothing else in the service needs to know how observability is done."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.cache.near import NearCache
from service.cache.setup import Caches
from service.cache.store import RedisStore
from service.observability import metrics, standard, tracing
from service.observability.http_metrics import HttpMetrics
from service.observability.logging import configure_logging, flush_logs
from service.observability.request_context import RequestContextMiddleware, RouteTemplates
from service.settings import Environment, Settings

BUILD = "dev"

log = structlog.get_logger(__name__)


def configure_process_logging(settings: Settings) -> None:
    # Tests configure logging themselves, with their own stream.
    if settings.environment is not Environment.test:
        configure_logging(
            json=settings.json_logs,
            level=settings.observability.log_level,
            access_flush_seconds=settings.observability.access_log_flush_seconds,
        )


def create_tracer_provider(
    settings: Settings, *, span_exporter: SpanExporter | None
) -> TracerProvider | None:
    if not settings.observability.enabled:
        return None
    provider = tracing.create_tracer_provider(settings, exporter=span_exporter)
    if (
        provider is not None
        and _standard(settings)
        and not standard.stable_http_attributes(settings)
    ):
        log.warning(
            "server_spans_use_old_attribute_names",
            hint="set OTEL_SEMCONV_STABILITY_OPT_IN=http (gunicorn.conf.py does when unset)",
        )
    return provider


def _standard(settings: Settings) -> bool:
    return settings.observability.instrumentation == "standard"


def install_outer_middleware(
    app: FastAPI, settings: Settings, provider: TracerProvider | None
) -> None:
    """Request IDs, access logs and (lean) metrics and server spans: one middleware, outermost;
    in the standard instrumentation the libraries' middleware record the metrics and spans."""
    if not settings.observability.enabled:
        return
    http_metrics = None
    if settings.observability.metrics:
        metrics.initialize_series(version=__version__, build=BUILD)
        http_metrics = HttpMetrics(
            flush_seconds=settings.observability.metrics_flush_seconds,
            records_requests=not _standard(settings),
        )
        # The lifespan flushes it at shutdown (flush_buffers).
        app.state.http_metrics = http_metrics
    server_spans = None
    if provider is not None and not _standard(settings):
        server_spans = tracing.ServerSpans(
            tracing.tracer_for_requests(provider),
            root_sample_ratio=tracing.root_sample_ratio(settings),
        )
    routes = RouteTemplates(app)
    app.add_middleware(
        RequestContextMiddleware,
        routes=routes,
        access_log_enabled=settings.observability.access_log,
        http_metrics=http_metrics,
        server_spans=server_spans,
        outer_server_span=provider is not None and _standard(settings),
    )
    if _standard(settings):
        if http_metrics is not None:
            # Around the request-context layer: it sees the last-resort 500 as sent.
            standard.instrument_http_metrics(app, routes)
        if provider is not None:
            standard.instrument_server_spans(app, provider)
    if settings.observability.metrics_on_api:
        registry_dir = settings.prometheus_multiproc_dir

        async def metrics_endpoint(_: Request) -> Response:
            if http_metrics is not None:
                http_metrics.flush()  # this worker's sampled gauges, at least, are current
            body = generate_latest(metrics.exposition_registry(registry_dir))
            return Response(body, media_type=CONTENT_TYPE_LATEST)

        app.add_route("/metrics", metrics_endpoint, include_in_schema=False)


def flush_buffers(app: FastAPI) -> None:
    """At shutdown: the last gauge samples and buffered access lines."""
    http_metrics: HttpMetrics | None = getattr(app.state, "http_metrics", None)
    if http_metrics is not None:
        http_metrics.flush()
    flush_logs()


def observe_engine(
    app: FastAPI, engine: AsyncEngine, settings: Settings, provider: TracerProvider | None
) -> None:
    if provider is not None:
        tracing.instrument_engine(engine, provider)
    http_metrics: HttpMetrics | None = getattr(app.state, "http_metrics", None)
    if http_metrics is not None and not settings.database.is_sqlite:
        _sample_pool(engine, settings, http_metrics)


def observe_worker_engine(engine: AsyncEngine, provider: TracerProvider | None) -> None:
    """The job worker's database: SQL spans under the job's span."""
    if provider is not None:
        tracing.instrument_engine(engine, provider)


def observe_cache(
    app: FastAPI, caches: Caches, settings: Settings, provider: TracerProvider | None
) -> None:
    store = caches.store.store
    if provider is not None and isinstance(store, RedisStore):
        if _standard(settings):
            standard.instrument_redis_client(store.client, provider)
        else:
            tracing.trace_redis_store(store, provider)
    near = caches.store.near
    http_metrics: HttpMetrics | None = getattr(app.state, "http_metrics", None)
    if near is not None and http_metrics is not None:
        http_metrics.sample_on_flush(_near_cache_sampler(near))


def _near_cache_sampler(near: NearCache) -> Callable[[], None]:
    """The near cache's tallies since the last flush, added to its counters."""
    published = {"hits": 0, "invalidations": 0, "resets": 0}
    counters = {
        "hits": metrics.CACHE_NEAR_HITS,
        "invalidations": metrics.CACHE_NEAR_INVALIDATIONS,
        "resets": metrics.CACHE_NEAR_RESETS,
    }

    def sample() -> None:
        for name, counter in counters.items():
            total = getattr(near, name)
            if total > published[name]:
                counter.inc(total - published[name])
                published[name] = total
        metrics.CACHE_NEAR_ENTRIES.set(near.entries)

    return sample


def _sample_pool(engine: AsyncEngine, settings: Settings, http_metrics: HttpMetrics) -> None:
    """Pool gauges, read whenever the HTTP metrics are flushed (every second under load, and
    before an in-process scrape). Setting them on every checkout and checkin instead cost four
    locked file writes and two event dispatches per database request, a visible share of an
    uncached read (bench/HISTORY.md). A scrape reads a point in time either way."""
    pool: Any = engine.sync_engine.pool
    metrics.DB_POOL_SIZE.set(settings.database.pool_size + settings.database.max_overflow)
    # Connects are rare in a healthy pool: counted as they happen, not sampled.
    event.listen(engine.sync_engine, "connect", lambda *_: metrics.DB_CONNECTIONS_OPENED.inc())
    in_use = metrics.DB_POOL_CONNECTIONS.labels(state="in_use")
    overflow = metrics.DB_POOL_CONNECTIONS.labels(state="overflow")

    def sample() -> None:
        in_use.set(pool.checkedout())
        overflow.set(max(pool.overflow(), 0))

    sample()
    http_metrics.sample_on_flush(sample)


def shutdown_tracing(provider: TracerProvider | None, settings: Settings) -> None:
    if provider is not None:
        tracing.shutdown_tracer_provider(
            provider, settings.observability.trace_shutdown_timeout_seconds
        )


def start_metrics_listener(settings: Settings) -> str | None:
    """For a single process (python -m service): /metrics on its own port, in a thread.
    Under gunicorn the master does this instead (gunicorn.conf.py)."""
    port = settings.observability.metrics_port
    if not port or not settings.observability.metrics:
        return None
    host = settings.observability.metrics_host
    try:
        start_http_server(port, addr=host, registry=metrics.exposition_registry(None))
    except OSError as exc:
        log.warning("metrics_listener_failed", port=port, error=str(exc))
        return None
    return f"http://{host}:{port}/metrics"
