"""The API's routes are mounted flat for speed (service/api.py): what clients see must be what
include_router would have served."""

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

from service import api
from service.health.router import router as health_router


def included_app() -> FastAPI:
    app = FastAPI()
    for router in api.API_ROUTERS:
        app.include_router(router, prefix=api.API_PREFIX)
    app.include_router(health_router)
    return app


def mounted_app() -> FastAPI:
    app = FastAPI()
    api.mount(app)
    return app


def test_flat_routes_document_the_same_api_as_include_router() -> None:
    assert mounted_app().openapi() == included_app().openapi()


def test_every_operation_is_mounted_once_under_its_prefix() -> None:
    operations = [
        (method, route.path)  # type: ignore[attr-defined]
        for route in mounted_app().routes
        for method in getattr(route, "methods", None) or ()
        if route.path.startswith(("/api/", "/health"))  # type: ignore[attr-defined]
    ]
    assert len(operations) == len(set(operations))
    assert ("GET", "/api/v1/items/{item_id}") in operations
    assert ("GET", "/health/ready") in operations


async def _dependency() -> None:
    return None


def test_routers_that_need_include_router_are_refused() -> None:
    with pytest.raises(ValueError, match="include_router"):
        api.add_routes_flat(FastAPI(), APIRouter(dependencies=[Depends(_dependency)]), prefix="")
    mounted = APIRouter()
    mounted.add_route("/plain", lambda request: None)
    with pytest.raises(TypeError, match="include_router"):
        api.add_routes_flat(FastAPI(), mounted, prefix="")


def test_api_routes_are_tried_before_the_documentation_routes() -> None:
    routes = mounted_app().routes
    is_api = [isinstance(route, APIRoute) for route in routes]
    assert is_api == sorted(is_api, reverse=True)
    assert {"/openapi.json", "/docs", "/redoc"} <= {route.path for route in routes}  # type: ignore[attr-defined]
