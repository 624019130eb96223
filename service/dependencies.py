"""Dependencies every domain uses: the request's DB session and the lifespan state.

Every dependency is ``async def``, even the trivial ones: FastAPI runs a plain ``def``
dependency in a worker thread, and that hop cost more than the rest of a cached read. And each
reads the state from the request itself rather than through a shared state dependency: FastAPI
walks every node of the dependency tree again on each request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, cast

import sqlalchemy.exc
import structlog
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.auth.rate_limit import LoginRateLimiter
from service.auth.security import AccessTokenCodec, PasswordHasher
from service.auth.stream_tickets import StreamTickets
from service.cache.declared import AnswerCache
from service.cache.scoped import UserScopedCache
from service.cache.setup import Caches
from service.events.fanout import EventPublisher
from service.events.setup import LiveEvents
from service.jobs.setup import Jobs
from service.lifespan import AppState
from service.observability.jobs import current_traceparent
from service.settings import Settings

log = structlog.get_logger(__name__)


def state_of(request: Request) -> AppState:
    return cast(AppState, request.scope["state"])


async def get_state(request: Request) -> AppState:
    return state_of(request)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's database session. A GET only reads, so its session runs in autocommit
    (see create_read_sessionmaker; not behind PgBouncer in transaction mode): no BEGIN before
    its queries, no ROLLBACK after."""
    state = state_of(request)
    reads_only = request.method == "GET"
    sessionmaker = state["read_sessionmaker"] if reads_only else state["sessionmaker"]
    async with _session_of(sessionmaker) as session:
        yield session


@asynccontextmanager
async def _session_of(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    session = sessionmaker()
    try:
        yield session
    finally:
        await _close(session)


async def _close(session: AsyncSession) -> None:
    # A session that holds no transaction has no connection to give back: closing it anyway
    # costs a greenlet round trip.
    if session.in_transaction():
        try:
            await session.close()
        except (sqlalchemy.exc.DBAPIError, OSError, TimeoutError) as exc:
            # After a yield dependency this runs once the response has started: raising would
            # cut the client's connection. The work is committed or rolled back; the pool drops
            # the dead connection.
            log.warning("session_close_failed", error=type(exc).__name__)


async def get_settings_from_state(request: Request) -> Settings:
    return state_of(request)["settings"]


async def get_passwords(request: Request) -> PasswordHasher:
    return state_of(request)["passwords"]


async def get_access_tokens(request: Request) -> AccessTokenCodec:
    return state_of(request)["access_tokens"]


async def get_login_limiter(request: Request) -> LoginRateLimiter:
    return state_of(request)["login_limiter"]


async def get_auth_cache(request: Request) -> UserScopedCache:
    return state_of(request)["caches"].auth


async def get_answer_cache(request: Request) -> AnswerCache:
    return state_of(request)["caches"].answers


async def get_caches(request: Request) -> Caches:
    return state_of(request)["caches"]


async def get_read_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    """For a response that reads the database after it has started (an event stream): the
    request's own session is closed by then."""
    return state_of(request)["read_sessionmaker"]


async def get_stream_tickets(request: Request) -> StreamTickets:
    state = state_of(request)
    return StreamTickets(state["caches"].store, state["settings"].auth.stream_ticket_ttl_seconds)


async def get_live_events(request: Request) -> LiveEvents:
    return state_of(request)["live_events"]


async def get_event_publisher(request: Request) -> EventPublisher:
    return state_of(request)["live_events"].publisher


async def get_jobs(request: Request) -> Jobs:
    return state_of(request)["jobs"]


@dataclass(frozen=True, slots=True)
class JobOrigin:
    """The request a job is started by: its job's logs and trace join this request's."""

    request_id: str | None
    traceparent: str | None


async def get_job_origin(request: Request) -> JobOrigin:
    return JobOrigin(
        request_id=request.scope.get("state", {}).get("request_id"),
        traceparent=current_traceparent(),
    )


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_from_state)]
PasswordsDep = Annotated[PasswordHasher, Depends(get_passwords)]
AccessTokensDep = Annotated[AccessTokenCodec, Depends(get_access_tokens)]
AuthCacheDep = Annotated[UserScopedCache, Depends(get_auth_cache)]
AnswerCacheDep = Annotated[AnswerCache, Depends(get_answer_cache)]
CachesDep = Annotated[Caches, Depends(get_caches)]
LoginLimiterDep = Annotated[LoginRateLimiter, Depends(get_login_limiter)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
LiveEventsDep = Annotated[LiveEvents, Depends(get_live_events)]
EventPublisherDep = Annotated[EventPublisher, Depends(get_event_publisher)]
ReadSessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_read_sessionmaker)]
StreamTicketsDep = Annotated[StreamTickets, Depends(get_stream_tickets)]
JobOriginDep = Annotated[JobOrigin, Depends(get_job_origin)]
