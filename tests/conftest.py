"""Every API test runs twice: on a real PostgreSQL database created for this run (and dropped
after it) and on the embedded SQLite default. Each test starts from empty tables."""

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import delete, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db.migrate import upgrade_to_head
from service.db.models import Base
from service.main import create_app
from service.settings import AuthSettings, DatabaseSettings, Environment, Settings
from service.users.models import Role, User

POSTGRES_ADMIN_URL = os.environ.get(
    "GLASSHOUSE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Settings come from the tests alone, never from the developer's shell or .env file.
for _name in list(os.environ):
    if _name.startswith("GLASSHOUSE_") or _name == "DATABASE_URL":
        del os.environ[_name]

# Cheap hashing keeps the suite fast; the production parameters are tested where they matter.
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 64, "argon2_parallelism": 1}


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


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "glasshouse.db"
        url = f"sqlite+aiosqlite:///{path}"
        yield url
        return
    try:
        url = await _create_postgres_database()
    except (OSError, ConnectionError) as exc:
        reason = (
            f"PostgreSQL at {make_url(POSTGRES_ADMIN_URL).render_as_string()} unreachable: {exc}"
        )
        if IN_CI:
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)
    try:
        yield url
    finally:
        await _drop_postgres_database(url)


@pytest.fixture(scope="session")
async def database_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's own handle on the database: migrates it once, empties it after each test."""
    engine = create_async_engine(database_url)
    await upgrade_to_head(engine)
    yield engine
    await engine.dispose()


def make_settings(database_url: str, **overrides: object) -> Settings:
    auth = overrides.pop("auth", None) or AuthSettings(**FAST_HASHING)  # type: ignore[arg-type]
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment=Environment.test,
        database=DatabaseSettings(url=database_url),
        auth=auth,
        auto_migrate=False,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def empty_database(database_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    yield database_engine
    async with database_engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(delete(table))


@pytest.fixture
async def client(
    settings: Settings, empty_database: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(settings) as http_client:
        yield http_client


@contextlib.asynccontextmanager
async def running_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to a freshly built app whose lifespan has started, with the
    lifespan state handed to each request as a server would."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http_client:
            yield http_client


SetRole = Callable[[int, Role], Awaitable[None]]


@pytest.fixture
def set_role(empty_database: AsyncEngine) -> SetRole:
    async def _set_role(user_id: int, role: Role) -> None:
        async with empty_database.begin() as connection:
            await connection.execute(update(User).where(User.id == user_id).values(role=role))

    return _set_role
