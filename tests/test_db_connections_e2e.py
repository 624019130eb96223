"""The database pool under gunicorn does not churn: after the first burst, bursts of uncached
reads open no new PostgreSQL connection, as PostgreSQL itself counts them (pg_stat_database's
sessions and pg_stat_activity's backends). With an overflow pool the same bursts reconnect."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.factories import API
from tests.processes import migrated_postgres_database, running_gunicorn, sessions_established

WORKERS = 2
CONCURRENT_PER_WORKER = 16
BURSTS = 4


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
        # Backends report their counts at most once a second.
        await asyncio.sleep(1.2)
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


async def new_connections_per_burst(service_url: str, database_url: str) -> list[int]:
    """Sessions PostgreSQL saw opened during each burst after the first, and checks that the
    backends alive after the first are the ones alive after the last when none was opened."""
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
        after_first = await view.backends()
        opened = []
        for _ in range(BURSTS):
            before = await view.sessions()
            await burst(client, path, headers)
            opened.append(await view.sessions() - before)
        if not any(opened):
            assert await view.backends() == after_first
    await connection.close()
    return opened


def test_bursts_of_uncached_reads_open_no_connection_with_the_default_pool(
    database_url: str, tmp_path: Path
) -> None:
    with running_gunicorn(database_url, tmp_path, workers=WORKERS) as server:
        opened = asyncio.run(new_connections_per_burst(server.url, database_url))
    assert opened == [0] * BURSTS


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
        opened = asyncio.run(new_connections_per_burst(server.url, database_url))
    # Summed: a backend's connect can be reported to the statistics after the next reading.
    assert sum(opened) >= BURSTS, opened
