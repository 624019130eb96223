"""The API's routers, mounted under /api/v1 by main.py.

Each is included into the app directly (not through one /api/v1 parent router), hottest
first: FastAPI matches routes in order, and every level of nesting is matched again on each
request, which measurably slowed every call.
"""

from fastapi import APIRouter

from service.auth.router import router as auth_router
from service.items.router import router as items_router
from service.meta.router import router as meta_router
from service.users.router import router as users_router

API_PREFIX = "/api/v1"

API_ROUTERS: tuple[APIRouter, ...] = (items_router, auth_router, users_router, meta_router)
