"""The pool tests a connection only after it sat idle (service/db/session.py): a connection the
database dropped meanwhile is replaced before a request uses it, and a busy pool pays nothing."""

import asyncio

import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.session import create_engine
from service.settings import DatabaseSettings


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        pid = await connection.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


async def terminate(database_engine: AsyncEngine, pid: int) -> None:
    async with database_engine.connect() as connection:
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await connection.commit()


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's connections only")
    return database_url


async def test_a_connection_dropped_while_idle_is_replaced_unseen(
    postgres_url: str, database_engine: AsyncEngine
) -> None:
    engine = create_engine(DatabaseSettings(url=postgres_url, pool_pre_ping_idle_seconds=0.2))
    try:
        dropped = await backend_pid(engine)
        await terminate(database_engine, dropped)
        await asyncio.sleep(0.3)
        assert await backend_pid(engine) != dropped  # tested, found dead, replaced: no error
    finally:
        await engine.dispose()


async def test_a_connection_used_a_moment_ago_is_not_tested(
    postgres_url: str, database_engine: AsyncEngine
) -> None:
    # The other side of the trade: within the idle window a dead connection is handed out,
    # and its request fails (the app answers 503), after which the pool replaces it.
    engine = create_engine(DatabaseSettings(url=postgres_url, pool_pre_ping_idle_seconds=60))
    try:
        dropped = await backend_pid(engine)
        await terminate(database_engine, dropped)
        await asyncio.sleep(0.1)
        with pytest.raises(sqlalchemy.exc.DBAPIError):
            await backend_pid(engine)
        assert await backend_pid(engine) != dropped
    finally:
        await engine.dispose()
