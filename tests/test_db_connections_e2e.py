"""The database pool under gunicorn does not churn: after the first burst, bursts of uncached
reads close and reopen no PostgreSQL connection, as PostgreSQL itself counts them
(pg_stat_database's sessions and pg_stat_activity's backends). With an overflow pool the same
bursts reconnect."""

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from service.settings import DatabaseSettings
from tests.factories import API
from tests.processes import migrated_postgres_database, running_gunicorn, sessions_established

WORKERS = 2
CONCURRENT_PER_WORKER = 16
BURSTS = 4
STATISTICS_SETTLE_SECONDS = 11.0


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


class ServerView:
    """One connection of the test's own, asking PostgreSQL about the service's connections."""

    def __init__(self, connection: asyncpg.Connection, database: str) -> None:
        self.connection = connection
        self.database = database

    async def sessions(self) -> int:
        """Sessions established so far, once every backend has reported them. A backend
        reports at most once a second and may hold a report back (when the shared statistics
        are busy) until it has been idle for PostgreSQL's idle interval, 10 s."""
        await asyncio.sleep(STATISTICS_SETTLE_SECONDS)
        return await sessions_established(self.connection, self.database)

    async def backends(self) -> set[tuple[int, float]]:
        rows = await self.connection.fetch(
            "SELECT pid, backend_start FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.database,
        )
        return {(row["pid"], row["backend_start"].timestamp()) for row in rows}


async def burst(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    fresh = {**headers, "Cache-Control": "no-cache"}  # every read goes to PostgreSQL
    responses = await asyncio.gather(
        *(client.get(path, headers=fresh) for _ in range(WORKERS * CONCURRENT_PER_WORKER))
    )
    assert {response.status_code for response in responses} == {200}


@dataclass
class PoolWatch:
    """PostgreSQL's view across the bursts after the first."""

    opened: int  # sessions established during the bursts
    after_first: set[tuple[int, float]]  # backends (pid, start) alive after the first burst
    at_end: set[tuple[int, float]]  # and after the last

    def churned(self) -> int:
        """Sessions opened after the first burst that are no longer there: closed, reopened."""
        return self.opened - len(self.at_end - self.after_first)


async def watch_bursts(service_url: str, database_url: str) -> PoolWatch:
    target = make_url(database_url)
    connection = await asyncpg.connect(
        host=target.host, port=target.port, user=target.username, database=target.database
    )
    view = ServerView(connection, str(target.database))
    limits = httpx.Limits(max_connections=WORKERS * CONCURRENT_PER_WORKER)
    async with httpx.AsyncClient(base_url=service_url, limits=limits, timeout=30) as client:
        email = f"pool-{time.monotonic_ns()}@example.com"
        credentials = {"email": email, "password": "correct horse battery"}
        (await client.post(f"{API}/auth/register", json=credentials)).raise_for_status()
        token = await client.post(
            f"{API}/auth/token", data={"username": email, "password": credentials["password"]}
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        item = await client.post(f"{API}/items", json={"title": "pool"}, headers=headers)
        path = f"{API}/items/{item.json()['id']}"

        await burst(client, path, headers)  # the pools fill up
        before = await view.sessions()
        after_first = await view.backends()
        for _ in range(BURSTS):
            await burst(client, path, headers)
        opened = await view.sessions() - before
        at_end = await view.backends()
    await connection.close()
    return PoolWatch(opened, after_first, at_end)


def test_bursts_of_uncached_reads_reopen_no_connection_with_the_default_pool(
    database_url: str, tmp_path: Path
) -> None:
    """Pools fill lazily: a worker that the kernel handed fewer of the first burst's requests
    may open the rest of its pool_size in a later one. What must never happen is a connection
    closed and opened again: every one opened is still there at the end."""
    with running_gunicorn(database_url, tmp_path, workers=WORKERS) as server:
        watch = asyncio.run(watch_bursts(server.url, database_url))
    assert watch.after_first <= watch.at_end, "a connection of the first burst was closed"
    assert watch.churned() == 0, watch
    assert len(watch.at_end) <= WORKERS * DatabaseSettings().pool_size


def test_an_overflow_pool_keeps_reconnecting(database_url: str, tmp_path: Path) -> None:
    """What the default avoids: connections beyond pool_size are closed when returned, so each
    burst opens them again. The counting above sees it: it cannot pass for want of looking."""
    with running_gunicorn(
        database_url,
        tmp_path,
        workers=WORKERS,
        GLASSHOUSE_DATABASE__POOL_SIZE="1",
        GLASSHOUSE_DATABASE__MAX_OVERFLOW="15",
    ) as server:
        watch = asyncio.run(watch_bursts(server.url, database_url))
    assert watch.churned() >= BURSTS, watch
