"""Probes. Liveness does no I/O: a database blip must not make Kubernetes restart every pod.
Readiness checks what serving needs, with a short timeout, so a pod without its database
leaves the load balancer instead of answering errors."""

import asyncio
from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy import text

from service.dependencies import StateDep

router = APIRouter(tags=["health"])

READINESS_TIMEOUT_SECONDS = 1.0


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    database: Literal["ok", "unavailable"]


@router.get("/health/live", summary="Liveness: the process can serve")
async def live() -> Liveness:
    return Liveness()


@router.get(
    "/health/ready",
    summary="Readiness: the database answers",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def ready(state: StateDep, response: Response) -> Readiness:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            async with state["engine"].connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "do not send me traffic"
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="not_ready", database="unavailable")
    return Readiness(status="ready", database="ok")
