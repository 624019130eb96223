"""The API's routers, mounted under /api/v1 by main.py.

Each domain keeps its own APIRouter, but the app gets their routes flat (``mount``), hottest
first, instead of through ``include_router``: FastAPI 0.165 wraps an included router in a
layer that is matched once to select it and again to dispatch inside it, on every request.
Flat, every request skips that layer (figures in bench/HISTORY.md); the OpenAPI document is
the same either way (tests/test_api_mount.py).
"""

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service.auth.router import router as auth_router
from service.health.router import router as health_router
from service.items.router import router as items_router
from service.meta.router import router as meta_router
from service.users.router import router as users_router

API_PREFIX = "/api/v1"

API_ROUTERS: tuple[APIRouter, ...] = (items_router, auth_router, users_router, meta_router)


def mount(app: FastAPI) -> None:
    for router in API_ROUTERS:
        add_routes_flat(app, router, prefix=API_PREFIX)
    add_routes_flat(app, health_router, prefix="")
    # FastAPI adds its documentation routes (/openapi.json, /docs, /redoc) first, and the
    # router tries every route in order: after the API's, an API request no longer pays four
    # failed matches. No two of these paths can match the same request, so order is free.
    app.router.routes.sort(key=lambda route: not isinstance(route, APIRoute))


def add_routes_flat(app: FastAPI, router: APIRouter, *, prefix: str) -> None:
    """What include_router(router, prefix=prefix) serves, as routes of the app itself. Only for
    routers of plain path operations, which is what every domain router here is."""
    if router.dependencies or router.on_startup or router.on_shutdown:
        raise ValueError("router-level dependencies and events need include_router")
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r} is not a path operation; use include_router")
        app.router.add_api_route(
            prefix + route.path,
            route.endpoint,
            methods=route.methods,
            name=route.name,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
        )
