"""What a client may ask before anything else: which service and version answers."""

from fastapi import APIRouter
from pydantic import BaseModel

from service import __version__
from service.dependencies import SettingsDep

router = APIRouter(tags=["meta"])


class ServiceInfo(BaseModel):
    name: str
    version: str


@router.get("/info", summary="The service's name and version (no authentication)")
async def info(settings: SettingsDep) -> ServiceInfo:
    return ServiceInfo(name=settings.service_name, version=__version__)
