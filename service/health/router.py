"""Probes, and what each one means to Kubernetes.

- liveness  /health/live: no I/O. "This process can serve." A database or Redis outage must
  not make Kubernetes restart every pod at once.
- readiness /health/ready: unless draining, traffic may come. PostgreSQL and Redis are checked
  and reported, but their outage leaves the pod ready and degraded: every pod shares them, so
  failing readiness would turn "writes get a 503 problem, cached reads work, the metrics count
  it" into "the load balancer has no endpoint". readiness_requires_* change that per dependency.
- startup   /health/startup: the database is reachable and its schema is at the newest
  migration; until then liveness and readiness are not asked.
- /health: every dependency's status and latency, for humans.

Probes are not cached, traced or counted in the API's metrics, and each check has a timeout.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy import text

from service import __version__
from service.cache.near import NearCache
from service.db.migrate import is_at_head
from service.dependencies import StateDep
from service.lifespan import AppState

router = APIRouter(prefix="/health", tags=["health"])

CheckStatus = Literal["ok", "unavailable", "not_configured"]


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class DependencyCheck(BaseModel):
    status: CheckStatus
    latency_ms: float | None = None
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "not_ready", "draining"]
    database: CheckStatus
    redis: CheckStatus


class Startup(BaseModel):
    status: Literal["started", "starting"]
    database: CheckStatus
    migrations: Literal["at_head", "behind", "unknown"]


class Health(BaseModel):
    status: Literal["ok", "degraded", "failing", "draining"]
    version: str
    uptime_seconds: float
    checks: dict[str, DependencyCheck]
    cache_breaker: str
    # live: this worker serves copies Redis keeps coherent; down: its invalidation connection
    # is not up, so every read goes to Redis; off: no near cache configured.
    near_cache: str


async def _timed(check: Callable[[], Awaitable[object]], limit_seconds: float) -> DependencyCheck:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_seconds):
            await check()
    except Exception as exc:  # any failure is "unavailable"; the type says which
        return DependencyCheck(status="unavailable", error=type(exc).__name__)
    return DependencyCheck(status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def _check_database(state: AppState) -> DependencyCheck:
    async def select_one() -> None:
        async with state["engine"].connect() as connection:
            await connection.execute(text("SELECT 1"))

    return await _timed(select_one, state["settings"].health.check_timeout_seconds)


async def _check_redis(state: AppState) -> DependencyCheck:
    if not state["settings"].redis_url:
        return DependencyCheck(status="not_configured")
    return await _timed(state["caches"].store.ping, state["settings"].health.check_timeout_seconds)


@router.get("/live", summary="Liveness: the process can serve (no I/O)")
async def live() -> Liveness:
    return Liveness()


@router.get(
    "/ready",
    summary="Readiness: send traffic here",
    responses={503: {"model": Readiness, "description": "Not ready, or draining"}},
)
async def ready(state: StateDep, response: Response) -> Readiness:
    if state["lifecycle"].draining:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="draining", database="ok", redis="ok")
    database, redis = await asyncio.gather(_check_database(state), _check_redis(state))
    settings = state["settings"].health
    required = [database] if settings.readiness_requires_database else []
    required += [redis] if settings.readiness_requires_redis else []
    verdict: Literal["ready", "degraded", "not_ready"] = "ready"
    if any(check.status == "unavailable" for check in required):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        verdict = "not_ready"
    elif "unavailable" in {database.status, redis.status}:
        verdict = "degraded"
    return Readiness(status=verdict, database=database.status, redis=redis.status)


@router.get(
    "/startup",
    summary="Startup: database reachable and migrations at head",
    responses={503: {"model": Startup, "description": "Still starting"}},
)
async def startup(state: StateDep, response: Response) -> Startup:
    database = await _check_database(state)
    migrations: Literal["at_head", "behind", "unknown"] = "unknown"
    if database.status == "ok":
        try:
            async with asyncio.timeout(state["settings"].health.check_timeout_seconds):
                migrations = "at_head" if await is_at_head(state["engine"]) else "behind"
        except Exception:  # unknown is not started
            migrations = "unknown"
    started = database.status == "ok" and migrations == "at_head"
    if not started:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Startup(
        status="started" if started else "starting",
        database=database.status,
        migrations=migrations,
    )


@router.get("", summary="Every dependency's status and latency, for humans")
async def health(state: StateDep, response: Response) -> Health:
    database, redis = await asyncio.gather(_check_database(state), _check_redis(state))
    overall: Literal["ok", "degraded", "failing", "draining"] = "ok"
    if state["lifecycle"].draining:
        overall = "draining"
    elif database.status != "ok":
        overall = "failing"
    elif redis.status == "unavailable":
        overall = "degraded"
    if overall in {"failing", "draining"}:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status=overall,
        version=__version__,
        uptime_seconds=round(state["lifecycle"].uptime_seconds, 1),
        checks={"database": database, "redis": redis},
        cache_breaker=state["caches"].store.breaker.state.value,
        near_cache=_near_cache_state(state["caches"].store.near),
    )


def _near_cache_state(near: NearCache | None) -> str:
    if near is None:
        return "off"
    return "live" if near.live else "down"
