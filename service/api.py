"""The API's routers: each domain's APIRouter, included under /api/v1 (health at the root)."""

from fastapi import APIRouter, FastAPI

from service.auth.router import router as auth_router
from service.events.router import router as events_router
from service.health.router import router as health_router
from service.item_files.router import router as item_files_router
from service.items.router import router as items_router
from service.jobs.router import router as jobs_router
from service.meta.router import router as meta_router
from service.service_accounts.router import router as service_accounts_router
from service.users.router import router as users_router

API_PREFIX = "/api/v1"

# A new domain's router is one more line here.
API_ROUTERS: tuple[APIRouter, ...] = (
    item_files_router,
    items_router,
    events_router,
    jobs_router,
    auth_router,
    users_router,
    meta_router,
    service_accounts_router,
)


# Routes that take a file upload: their body limit is jobs.max_upload_bytes, not http's.
UPLOAD_PATHS = (f"{API_PREFIX}{item_files_router.prefix}/imports",)


def mount(app: FastAPI) -> None:
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(health_router)
