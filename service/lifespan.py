"""Everything the app holds open for its lifetime, created at startup and closed at shutdown.

The state is typed and reaches handlers through ``request.state`` (Starlette's lifespan state),
never through module globals, so several apps (tests, workers) never share a pool.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.auth.security import AccessTokenCodec, PasswordHasher
from service.db.migrate import upgrade_to_head
from service.db.session import create_engine, create_sessionmaker
from service.observability import setup as observability
from service.settings import Settings
from service.users.service import ensure_bootstrap_admin


class AppState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    passwords: PasswordHasher
    access_tokens: AccessTokenCodec


def make_lifespan(
    settings: Settings, tracer_provider: TracerProvider | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[AppState]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[AppState]:
        engine = create_engine(settings.database)
        observability.observe_engine(engine, settings, tracer_provider)
        try:
            if settings.should_auto_migrate:
                await upgrade_to_head(engine)
            sessionmaker = create_sessionmaker(engine)
            passwords = PasswordHasher(settings.auth)
            async with sessionmaker() as session:
                await ensure_bootstrap_admin(session, passwords, settings.auth)
            yield AppState(
                settings=settings,
                engine=engine,
                sessionmaker=sessionmaker,
                passwords=passwords,
                access_tokens=AccessTokenCodec(settings.auth),
            )
        finally:
            await engine.dispose()
            # Last, so that spans of the shutdown itself are flushed too.
            observability.shutdown_tracing(tracer_provider, settings)

    return lifespan
