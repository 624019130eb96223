"""The service behind a real PgBouncer in transaction mode (Debian's `pgbouncer` with the dev
overlay's pgbouncer.ini, on a free loopback port, in front of a database of its own), with more
concurrent requests than server connections, so clients share them: with
`pgbouncer_transaction_mode` on, all the work succeeds under PgBouncer's statement_timeout; with
it off, prepared statements collide."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.settings import AuthSettings, DatabaseSettings, Settings
from tests.conftest import (
    FAST_HASHING,
    RunningApp,
    _create_postgres_database,
    _drop_postgres_database,
    make_settings,
    running_app,
)
from tests.factories import API, make_account, make_item
from tests.faults import _wait_for_port
from tests.processes import REPO, base_env, free_port, migrated_postgres_database

SERVER_CONNECTIONS = 3
CONCURRENT_USERS = 20  # each with its own client connection: far more than the server ones
DEV_PGBOUNCER_INI = REPO / "deploy" / "k8s" / "overlays" / "dev" / "pgbouncer.ini"
# What its connect_query gives every server connection: the service's default.
STATEMENT_TIMEOUT = "10s"
PREPARED_STATEMENT_ERROR = re.compile(r"prepared statement \S+ (already exists|does not exist)")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    with running_pgbouncer(postgres_url) as url:
        yield url


@contextlib.contextmanager
def running_pgbouncer(postgres_url: str) -> Iterator[str]:
    """The dev overlay's PgBouncer, on a free loopback port in front of ``postgres_url``."""
    binary = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        pytest.fail("pgbouncer is not installed: run scripts/install-test-tools")
    server = make_url(postgres_url)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="glasshouse-pgbouncer-") as directory:
        workdir = Path(directory)
        workdir.chmod(0o755)  # read by the unprivileged user PgBouncer switches to as root
        # Trust, as the local PostgreSQL has; PgBouncer still wants the user listed.
        (workdir / "userlist.txt").write_text(f'"{server.username}" ""\n')
        config = workdir / "pgbouncer.ini"
        ini = local_pgbouncer_ini(server, port, workdir / "userlist.txt")
        if version_of(binary) < (1, 21):
            # Older than prepared-statement tracking (Debian 12 has 1.18): it does what
            # max_prepared_statements = 0 asks, and refuses the unknown setting.
            ini = re.sub(r"(?m)^max_prepared_statements = 0\n", "", ini)
        config.write_text(ini)
        for path in workdir.iterdir():
            path.chmod(0o644)
        # PgBouncer refuses to run as root; -u makes it switch user instead.
        as_user = ["-u", "nobody"] if os.geteuid() == 0 else []
        with (workdir / "pgbouncer.log").open("wb") as log:
            process = subprocess.Popen([binary, *as_user, str(config)], stdout=log, stderr=log)
            try:
                _wait_for_port(port)
                yield server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
            finally:
                process.terminate()
                process.wait(timeout=10)


def version_of(binary: str) -> tuple[int, int]:
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    found = re.match(r"PgBouncer (\d+)\.(\d+)", output)
    assert found is not None, output
    return int(found[1]), int(found[2])


def local_pgbouncer_ini(server: URL, port: int, auth_file: Path) -> str:
    """deploy/k8s/overlays/dev/pgbouncer.ini, pointed at ``server``: its pool mode, reset and
    statement_timeout (connect_query) stay as they are; where it listens, how clients log in
    and how many server connections it opens change."""
    overrides = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "auth_type": "trust",
        "auth_file": str(auth_file),
        "default_pool_size": str(SERVER_CONNECTIONS),
    }
    lines: list[str] = []
    section = ""
    for line in DEV_PGBOUNCER_INI.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if line.startswith("["):
            section = line
        elif section == "[databases]" and "=" in line and not line.startswith(";"):
            connect_query = re.search(r"connect_query='[^']*'", line)
            assert connect_query is not None, line
            line = (
                f"{server.database} = host={server.host} port={server.port or 5432} "
                f"dbname={server.database} {connect_query.group()}"
            )
        elif section == "[pgbouncer]" and key in overrides:
            line = f"{key} = {overrides.pop(key)}"
        lines.append(line)
    assert overrides == {}, f"not in {DEV_PGBOUNCER_INI.name}: {overrides}"
    return "\n".join(lines) + "\n"


def settings_through(pgbouncer_url: str, **database: Any) -> Settings:
    # Every user registers and logs in at once: no 503 for too many password checks.
    auth = AuthSettings.model_validate(
        {**FAST_HASHING, "max_concurrent_password_checks": CONCURRENT_USERS}
    )
    settings = make_settings(pgbouncer_url, auth=auth)
    # One client connection per concurrent request: PgBouncer, not this pool, is the bottleneck.
    database = {"url": pgbouncer_url, "pool_size": CONCURRENT_USERS, **database}
    return settings.model_copy(update={"database": DatabaseSettings(**database)})


async def a_users_work(client: httpx.AsyncClient, n: int) -> None:
    """Register, log in, then every kind of item request, each checked."""
    account = await make_account(client)
    fresh = {**account.headers, "Cache-Control": "no-cache"}
    item = await make_item(client, account, title=f"Fern {n}")
    url = f"{API}/items/{item['id']}"
    read = await client.get(url, headers=fresh)
    assert read.status_code == 200, read.text
    assert read.json()["title"] == f"Fern {n}"
    page = await client.get(f"{API}/items", headers=fresh)
    assert page.status_code == 200, page.text
    assert page.json()["total"] == 1
    patched = await client.patch(url, json={"title": f"Repotted fern {n}"}, headers=fresh)
    assert patched.status_code == 200, patched.text
    assert (await client.get(url, headers=fresh)).json()["title"] == f"Repotted fern {n}"
    deleted = await client.delete(url, headers=fresh)
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(url, headers=fresh)).status_code == 404


async def concurrent_work(app: RunningApp) -> list[BaseException | None]:
    return await asyncio.gather(
        *(a_users_work(app.client, n) for n in range(CONCURRENT_USERS)), return_exceptions=True
    )


async def test_concurrent_work_through_pgbouncer_succeeds(pgbouncer_url: str) -> None:
    settings = settings_through(pgbouncer_url, pgbouncer_transaction_mode=True)
    async with running_app(settings) as app:
        for _ in range(2):  # the second round reuses warm client and server connections
            failures = [result for result in await concurrent_work(app) if result is not None]
            assert failures == []
        # Statements closed after their transaction ended do not pile up on the server
        # connections: PgBouncer's reset drops them (only the asking statement is left).
        sessionmaker = app.state["sessionmaker"]

        async def prepared_statements() -> int:
            async with sessionmaker() as session:
                return int(
                    await session.scalar(text("SELECT count(*) FROM pg_prepared_statements"))
                )

        counts = await asyncio.gather(*(prepared_statements() for _ in range(10)))
        assert set(counts) == {1}


async def test_statement_timeout_is_pgbouncers_on_every_server_connection(
    pgbouncer_url: str,
) -> None:
    """statement_timeout_ms is not sent in this mode (PgBouncer would refuse the login): the
    timeout in force is the one each server connection got from PgBouncer's connect_query."""
    settings = settings_through(
        pgbouncer_url, pgbouncer_transaction_mode=True, statement_timeout_ms=60_000
    )
    async with running_app(settings) as app:
        sessionmaker = app.state["sessionmaker"]

        async def shown() -> str:
            async with sessionmaker() as session:
                return str(await session.scalar(text("SHOW statement_timeout")))

        # More sessions at once than server connections: every one of them is asked.
        assert set(await asyncio.gather(*(shown() for _ in range(10)))) == {STATEMENT_TIMEOUT}


async def test_without_the_setting_prepared_statements_collide(pgbouncer_url: str) -> None:
    """What the setting prevents: asyncpg's numbered statement names meet on a shared server
    connection, or a statement runs where it was not prepared. statement_timeout_ms=0, or
    PgBouncer would refuse the login before any statement runs (the test below)."""
    settings = settings_through(pgbouncer_url, statement_timeout_ms=0)
    async with running_app(settings) as app:
        results = await concurrent_work(app)
        assert any(result is not None for result in results)
        # The same engine, its sessions used directly: the error itself, which a 500 hides.
        errors = await statements_concurrently(app.state["sessionmaker"])
    assert any(PREPARED_STATEMENT_ERROR.search(str(error)) for error in errors), errors[:3]


async def statements_concurrently(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> list[BaseException]:
    async def transactions(n: int) -> None:
        for _ in range(3):
            async with sessionmaker() as session, session.begin():
                await session.execute(text("SELECT count(*) FROM users"))
                await session.execute(text("SELECT count(*) FROM items WHERE id > :n"), {"n": n})

    results = await asyncio.gather(
        *(transactions(n) for n in range(CONCURRENT_USERS)), return_exceptions=True
    )
    return [result for result in results if result is not None]


async def test_without_the_setting_pgbouncer_refuses_the_statement_timeout(
    pgbouncer_url: str,
) -> None:
    settings = settings_through(pgbouncer_url, startup_wait_seconds=0)
    with pytest.raises(Exception, match="statement_timeout"):
        async with running_app(settings):
            pass


def test_the_migration_job_migrates_through_pgbouncer() -> None:
    """As in the dev overlay, where the Job's DATABASE_URL is PgBouncer's too."""
    url = asyncio.run(_create_postgres_database())
    try:
        with running_pgbouncer(url) as pgbouncer_url:
            env = {
                **base_env(),
                "DATABASE_URL": pgbouncer_url,
                "GLASSHOUSE_DATABASE__PGBOUNCER_TRANSACTION_MODE": "true",
            }
            outputs = []
            for command in (["upgrade", "head"], ["current"]):
                migrate = subprocess.run(
                    [sys.executable, "-m", "alembic", *command],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert migrate.returncode == 0, migrate.stderr
                outputs.append(migrate.stdout)
            assert "(head)" in outputs[-1]
    finally:
        asyncio.run(_drop_postgres_database(url))
