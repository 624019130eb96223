"""The app factory: middleware order, routers, error handlers. No logic."""

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.api import api_router
from service.errors import install_error_handlers
from service.health.router import router as health_router
from service.lifespan import make_lifespan
from service.middleware import BodySizeLimitMiddleware
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Glasshouse",
        version=__version__,
        summary="Users, JWT auth with roles, and items owned by users.",
        lifespan=make_lifespan(settings),
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(health_router)
    # Added last = outermost: the body limit applies before anything reads the body.
    if settings.http.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.http.max_body_bytes)
    return app
