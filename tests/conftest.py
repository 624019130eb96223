"""Every API test runs twice: on a real PostgreSQL database created for this run (and dropped
after it) with the real Redis as cache, and on the embedded default, SQLite with the in-process
cache. Each test starts from empty tables and its own Redis key prefix."""

import contextlib
import gc
import json
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis.asyncio
from fastapi import FastAPI
from sqlalchemy import delete, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.types import ASGIApp, Receive, Scope, Send

from service.db.migrate import upgrade_to_head
from service.db.models import Base
from service.lifespan import AppState
from service.main import create_app
from service.observability.logging import configure_logging, reset_logging
from service.settings import (
    AuthSettings,
    CacheSettings,
    DatabaseSettings,
    Environment,
    JobsSettings,
    ObservabilitySettings,
    Settings,
)
from service.users.models import Role, User

POSTGRES_ADMIN_URL = os.environ.get(
    "GLASSHOUSE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("GLASSHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# The request pipeline the tests run through (GLASSHOUSE_OBSERVABILITY__INSTRUMENTATION): CI runs
# the API and end-to-end tests once more with "standard".
TEST_INSTRUMENTATION = os.environ.get("GLASSHOUSE_TEST_INSTRUMENTATION", "lean")
if TEST_INSTRUMENTATION not in {"lean", "standard"}:
    raise ValueError(f"GLASSHOUSE_TEST_INSTRUMENTATION={TEST_INSTRUMENTATION!r}: lean or standard")
STANDARD = TEST_INSTRUMENTATION == "standard"

# Settings come from the tests alone, never from the developer's shell or .env file.
# GLASSHOUSE_TEST_* are the tests' own, kept for their subprocesses.
for _name in list(os.environ):
    service_setting = _name.startswith(("GLASSHOUSE_", "OTEL_")) or _name in {
        "DATABASE_URL",
        "REDIS_URL",
    }
    if service_setting and not _name.startswith("GLASSHOUSE_TEST_"):
        del os.environ[_name]
# As gunicorn.conf.py sets it for the service: the instrumentations' stable HTTP attributes.
os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http"

# Cheap hashing keeps the suite fast; the production parameters are tested where they matter.
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 64, "argon2_parallelism": 1}


def unavailable(reason: str) -> None:
    """Outside CI a missing server skips its half of the suite, saying why; in CI it fails."""
    if IN_CI:
        pytest.fail(reason + " (CI=true: these tests must run)")
    pytest.skip(reason)


async def _create_postgres_database() -> str:
    name = f"glasshouse_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def _drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    admin = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def _check_redis() -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def steady_timing() -> Iterator[None]:
    """For a module whose tests hold the service to a time bound while this process runs part
    of the stage (a TCP proxy in a thread, the load, the clients). A full collection of the
    heap the whole session built up took seconds, and stalled all of them at once: everything
    alive now is frozen out of the collector's walks until the module ends."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(frozen=True)
class Backend:
    database_url: str
    redis_url: str | None  # None: the in-process cache


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "glasshouse.db"
        yield Backend(f"sqlite+aiosqlite:///{path}", None)
        return
    try:
        await _check_redis()
    except (OSError, ConnectionError, redis.exceptions.RedisError) as exc:
        unavailable(f"Redis at {REDIS_URL} unreachable: {exc}")
    try:
        url = await _create_postgres_database()
    except (OSError, ConnectionError) as exc:
        shown = make_url(POSTGRES_ADMIN_URL).render_as_string()
        unavailable(f"PostgreSQL at {shown} unreachable: {exc}")
    try:
        yield Backend(url, REDIS_URL)
    finally:
        await _drop_postgres_database(url)


@pytest.fixture(scope="session")
def database_url(backend: Backend) -> str:
    return backend.database_url


@pytest.fixture(scope="session")
async def database_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's own handle on the database: migrates it once, empties it after each test."""
    engine = create_async_engine(database_url)
    await upgrade_to_head(engine)
    yield engine
    await engine.dispose()


def make_settings(database_url: str, redis_url: str | None = None, **overrides: Any) -> Settings:
    """Test settings. With Redis, every call gets a key prefix of its own: nothing a test
    caches or counts can reach another test."""
    auth = overrides.pop("auth", None) or AuthSettings(**FAST_HASHING)
    observability = overrides.pop("observability", None) or ObservabilitySettings()
    if "instrumentation" not in observability.model_fields_set:
        observability = observability.model_copy(update={"instrumentation": TEST_INSTRUMENTATION})
    cache = overrides.pop("cache", None) or CacheSettings()
    # Jobs run inside the app unless a test starts a worker; each call has its own queue and
    # file directory.
    jobs = overrides.pop("jobs", None) or JobsSettings(broker="in_process")
    jobs_defaults: dict[str, Any] = {}
    if "queue_name" not in jobs.model_fields_set:
        jobs_defaults["queue_name"] = f"gh-test-jobs-{uuid.uuid4().hex}"
    if "files_dir" not in jobs.model_fields_set:
        jobs_defaults["files_dir"] = tempfile.mkdtemp(prefix="gh-test-files-")
    jobs = jobs.model_copy(update=jobs_defaults)
    if cache.key_prefix == CacheSettings().key_prefix:
        cache = cache.model_copy(update={"key_prefix": f"gh-test-{uuid.uuid4().hex}"})
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{
            "environment": Environment.test,
            "database": DatabaseSettings(url=database_url),
            "redis_url": redis_url,
            "auth": auth,
            "cache": cache,
            "jobs": jobs,
            "observability": observability,
            "auto_migrate": False,
            **overrides,
        },
    )


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return make_settings(backend.database_url, backend.redis_url)


@pytest.fixture
async def empty_database(database_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    yield database_engine
    async with database_engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(delete(table))


@dataclass(frozen=True)
class RunningApp:
    client: httpx.AsyncClient
    state: AppState


@contextlib.asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[tuple[ASGIApp, AppState]]:
    """The app's lifespan, run through Starlette's public ``lifespan_context``, and the app as a
    server serves it: each request's scope gets a copy of the lifespan state."""
    async with app.router.lifespan_context(app) as state:
        assert state is not None, "the service's lifespan yields its state"

        async def served(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in {"http", "websocket"}:
                scope["state"] = dict(state)
            await app(scope, receive, send)

        yield served, cast(AppState, state)


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[RunningApp]:
    """A freshly built app whose lifespan has started, an httpx client wired to it, and the
    lifespan state handed to each request as a server would."""
    async with started(create_app(settings)) as (served, state):
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http_client:
            yield RunningApp(http_client, state)


@contextlib.asynccontextmanager
async def running_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as app:
        yield app.client


@pytest.fixture
async def app(settings: Settings, empty_database: AsyncEngine) -> AsyncIterator[RunningApp]:
    async with running_app(settings) as running:
        yield running


@pytest.fixture
def client(app: RunningApp) -> httpx.AsyncClient:
    return app.client


UpdateUser = Callable[..., Awaitable[None]]
SetRole = Callable[[int, Role], Awaitable[None]]


@pytest.fixture
def update_user(empty_database: AsyncEngine, app: RunningApp) -> UpdateUser:
    """Changes a user row behind the API's back, as an operator with SQL would, then does what
    such a change needs: invalidating the user's cached session checks."""

    async def _update(user_id: int, **values: Any) -> None:
        async with empty_database.begin() as connection:
            await connection.execute(update(User).where(User.id == user_id).values(**values))
        await app.state["caches"].auth.invalidate(user_id)

    return _update


@pytest.fixture
def set_role(update_user: UpdateUser) -> SetRole:
    async def _set_role(user_id: int, role: Role) -> None:
        await update_user(user_id, role=role)

    return _set_role


class LogFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def access_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("logger") == "glasshouse.access"]


@pytest.fixture
def json_logs(tmp_path: Path) -> Iterator[LogFile]:
    """Production logging (JSON), written to a file this test reads back."""
    path = tmp_path / "service.log"
    with path.open("w") as stream:
        configure_logging(json=True, level="INFO", stream=stream, cache_loggers=False)
        try:
            yield LogFile(path)
        finally:
            stream.flush()
            reset_logging()
            logging.getLogger().handlers.clear()
