from fastapi import APIRouter

from service.auth.router import router as auth_router
from service.items.router import router as items_router
from service.users.router import router as users_router

API_PREFIX = "/api/v1"

api_router = APIRouter(prefix=API_PREFIX)
api_router.include_router(auth_router)
api_router.include_router(users_router)
api_router.include_router(items_router)
