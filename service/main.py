"""The app factory: middleware order, routers, error handlers. No logic."""

from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry.sdk.trace.export import SpanExporter

from service import __version__, api, api_docs, live_page
from service.cache.responses import CachedAnswerHeaders
from service.errors import document_errors, install_error_handlers
from service.health.lifecycle import Lifecycle
from service.jobs.uploads import ENVELOPE_BYTES
from service.lifespan import make_lifespan
from service.middleware import (
    BodySizeLimitMiddleware,
    SecurityHeadersMiddleware,
    TrustedProxyMiddleware,
)
from service.observability import setup as observability
from service.observability.metrics import FORWARDED_FOR_REJECTED
from service.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None, *, span_exporter: SpanExporter | None = None
) -> FastAPI:
    """``span_exporter`` replaces the OTLP exporter (tests export to memory)."""
    settings = settings or get_settings()
    observability.configure_process_logging(settings)
    tracer_provider = observability.create_tracer_provider(settings, span_exporter=span_exporter)
    lifecycle = Lifecycle()
    app = FastAPI(
        title="Glasshouse",
        version=__version__,
        summary="Users, JWT auth with roles, and items owned by users.",
        lifespan=make_lifespan(settings, lifecycle, tracer_provider),
        # Off in production unless enabled: the schema maps the whole attack surface.
        openapi_url="/openapi.json" if settings.api_docs_enabled else None,
        # FastAPI's own pages load Swagger UI and ReDoc from a CDN: service/api_docs serves them.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        # FastAPI's native OpenTelemetry traces, counts and logs every request as soon
        # as a global provider exists (opentelemetry-instrument sets one) or
        # FASTAPI_OTEL_AUTO_CONFIGURE=true: a second server span and its sub-spans per request
        # beside the service's own (service/observability). Off, and it stops looking the
        # global providers up on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    # The server flips it on SIGTERM (service/server.py); readiness reads it from the state.
    app.state.lifecycle = lifecycle
    install_error_handlers(app)
    api.mount(app)
    if app.openapi_url is not None:
        api_docs.mount(app, openapi_url=app.openapi_url)
        live_page.mount(app)

    # Middleware added later wraps what was added before. From the outside in:
    # trusted proxy (client address) -> security headers -> request context (span, ID,
    # metrics, logs, last-resort 500) -> CORS -> body size limit -> cached answers' ETag and
    # 304 -> routes.
    app.add_middleware(CachedAnswerHeaders)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.http.max_body_bytes,
        path_limits={
            path: settings.jobs.max_upload_bytes + ENVELOPE_BYTES for path in api.UPLOAD_PATHS
        },
    )
    if settings.http.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "traceresponse"],
        )
    observability.install_outer_middleware(app, settings, tracer_provider)
    app.add_middleware(SecurityHeadersMiddleware, headers={"X-Content-Type-Options": "nosniff"})
    # Outermost: everything inside, the access line included, sees the real client address.
    app.add_middleware(
        TrustedProxyMiddleware,
        trusted=settings.http.forwarded_allow_ips,
        on_rejected=FORWARDED_FOR_REJECTED.inc,
    )
    _document_errors_in_openapi(app)
    return app


def _document_errors_in_openapi(app: FastAPI) -> None:
    build_default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build_default())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
