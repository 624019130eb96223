"""The pool tests a connection only after it sat idle (service/db/session.py): a connection the
database dropped meanwhile is replaced before a request uses it, and a busy pool pays nothing.

PostgreSQL only (its connections are what is dropped), on the server's admin database: the
tests create no tables and end only connections they opened themselves."""

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db.session import create_engine
from service.settings import DatabaseSettings
from tests.conftest import POSTGRES_ADMIN_URL, unavailable


@pytest.fixture
async def terminator() -> AsyncIterator[AsyncEngine]:
    """A connection of its own, to end another one as a database restart would."""
    engine = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect():
            pass
    except OSError as exc:
        unavailable(f"PostgreSQL unreachable: {exc}")
    yield engine
    await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        pid = await connection.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


async def terminate(terminator: AsyncEngine, pid: int) -> None:
    async with terminator.connect() as connection:
        ended = await connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    assert ended


async def test_a_connection_dropped_while_idle_is_replaced_unseen(
    terminator: AsyncEngine,
) -> None:
    engine = create_engine(DatabaseSettings(url=POSTGRES_ADMIN_URL, pool_pre_ping_idle_seconds=0.2))
    try:
        dropped = await backend_pid(engine)
        await terminate(terminator, dropped)
        await asyncio.sleep(0.3)
        assert await backend_pid(engine) != dropped  # tested, found dead, replaced: no error
    finally:
        await engine.dispose()


async def test_a_connection_used_a_moment_ago_is_not_tested(terminator: AsyncEngine) -> None:
    # The other side of the trade: within the idle window a dead connection is handed out,
    # and its request fails (the app answers 503), after which the pool replaces it.
    engine = create_engine(DatabaseSettings(url=POSTGRES_ADMIN_URL, pool_pre_ping_idle_seconds=60))
    try:
        dropped = await backend_pid(engine)
        await terminate(terminator, dropped)
        await asyncio.sleep(0.1)
        with pytest.raises(sqlalchemy.exc.DBAPIError):
            await backend_pid(engine)
        assert await backend_pid(engine) != dropped
    finally:
        await engine.dispose()
