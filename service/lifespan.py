"""Everything the app holds open for its lifetime, created at startup and closed at shutdown.

The state is typed and reaches handlers through ``request.state`` (Starlette's lifespan state),
never through module globals, so several apps (tests, workers) never share a pool.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypedDict

import structlog
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.auth.api_keys import ApiKeyAuthenticator
from service.auth.rate_limit import ApiKeyFailureLimiter, LoginRateLimiter
from service.auth.security import AccessTokenCodec, PasswordHasher
from service.cache.setup import Caches, build_caches
from service.db.migrate import upgrade_to_head
from service.db.session import create_engine, create_read_sessionmaker, create_sessionmaker
from service.events.setup import LiveEvents, start_live_events
from service.health.lifecycle import Lifecycle
from service.jobs.setup import Jobs, start_jobs
from service.observability import setup as observability
from service.settings import Settings
from service.tasks import JOB_HANDLERS
from service.users.service import ensure_bootstrap_admin

log = structlog.get_logger(__name__)


class AppState(TypedDict):
    settings: Settings
    lifecycle: Lifecycle
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]
    caches: Caches
    login_limiter: LoginRateLimiter
    passwords: PasswordHasher
    access_tokens: AccessTokenCodec
    api_keys: ApiKeyAuthenticator
    jobs: Jobs
    live_events: LiveEvents


def make_lifespan(
    settings: Settings, lifecycle: Lifecycle, tracer_provider: TracerProvider | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[AppState]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        engine = create_engine(settings.database)
        observability.observe_engine(app, engine, settings, tracer_provider)
        caches = build_caches(settings)
        caches.start()
        observability.observe_cache(app, caches, settings, tracer_provider)
        passwords = PasswordHasher(settings.auth)
        api_keys: ApiKeyAuthenticator | None = None
        jobs: Jobs | None = None
        live_events: LiveEvents | None = None
        try:
            await _wait_for_database(engine, settings)
            if settings.should_auto_migrate:
                await upgrade_to_head(engine)
            sessionmaker = create_sessionmaker(engine)
            async with sessionmaker() as session:
                await ensure_bootstrap_admin(session, passwords, settings.auth, caches.auth)
            api_keys = ApiKeyAuthenticator(
                settings.api_keys,
                caches.auth,
                ApiKeyFailureLimiter(
                    caches.store, settings.rate_limit, settings.api_keys.max_failures_per_address
                ),
                sessionmaker,
            )
            jobs = await start_jobs(
                settings,
                sessionmaker,
                JOB_HANDLERS,
                answers=caches.answers,
                tracer_provider=tracer_provider,
            )
            read_sessionmaker = create_read_sessionmaker(engine, settings.database)
            live_events = start_live_events(settings, read_sessionmaker)
            lifecycle.stream_enders.append(live_events.end_streams)
            caches.auth.invalidation_listeners.append(live_events.publisher.credentials_changed)
            yield AppState(
                settings=settings,
                lifecycle=lifecycle,
                engine=engine,
                sessionmaker=sessionmaker,
                read_sessionmaker=read_sessionmaker,
                caches=caches,
                login_limiter=LoginRateLimiter(caches.store, settings.rate_limit),
                passwords=passwords,
                access_tokens=AccessTokenCodec(settings.auth),
                api_keys=api_keys,
                jobs=jobs,
                live_events=live_events,
            )
        finally:
            lifecycle.begin_draining()
            passwords.close()
            if live_events is not None:
                await live_events.close()
            if jobs is not None:
                await jobs.close()
            if api_keys is not None:
                await api_keys.close()
            await caches.close()
            await engine.dispose()
            observability.flush_buffers(app)
            # Last, so that spans of the shutdown itself are flushed too.
            observability.shutdown_tracing(tracer_provider, settings)
            log.info("shutdown_complete")

    return lifespan


async def _wait_for_database(engine: AsyncEngine, settings: Settings) -> None:
    """A database that is briefly unreachable at boot is waited for; one that stays
    unreachable (or is misconfigured) stops the start with one clear line."""
    deadline = time.monotonic() + settings.database.startup_wait_seconds
    while True:
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                log.error(
                    "database_unreachable_at_startup",
                    database=settings.database.url,
                    error=f"{type(exc).__name__}: {exc}",
                    waited_seconds=settings.database.startup_wait_seconds,
                )
                raise
            await asyncio.sleep(0.5)
