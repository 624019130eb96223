"""Migrations are the schema's source of truth: they must match the models and run both ways."""

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, func, insert, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.migrate import alembic_config, is_at_head, migration_transaction, upgrade_to_head
from service.db.models import AuthSession, Base, Item, RefreshToken, User
from service.db.session import create_engine
from service.settings import DatabaseSettings

BEFORE_AUTOINCREMENT = "f5735e081b12"


async def test_migrated_schema_matches_the_models(database_engine: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with database_engine.connect() as connection:
        assert await connection.run_sync(diff) == []
    assert await is_at_head(database_engine)


async def test_downgrade_to_base_and_upgrade_again(database_engine: AsyncEngine) -> None:
    def downgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    def table_names(connection: Connection) -> set[str]:
        return set(inspect(connection).get_table_names())

    async with database_engine.begin() as connection:
        await connection.run_sync(downgrade)
    async with database_engine.connect() as connection:
        assert await connection.run_sync(table_names) <= {"alembic_version"}
    assert not await is_at_head(database_engine)

    await upgrade_to_head(database_engine)
    async with database_engine.connect() as connection:
        assert {table.name for table in Base.metadata.sorted_tables} <= await connection.run_sync(
            table_names
        )
    assert await is_at_head(database_engine)


async def migrate(engine: AsyncEngine, step: Callable[[Config, str], None], revision: str) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        step(config, revision)

    async with migration_transaction(engine) as connection:
        await connection.run_sync(run)


async def test_sqlite_rebuild_keeps_every_row_and_never_reuses_ids(tmp_path: Path) -> None:
    """The embedded default migrates itself with foreign keys on, where dropping a table to
    rebuild it would cascade into every row that refers to it."""
    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"))

    async def row_counts() -> list[int]:
        async with engine.connect() as connection:
            tables = [User, AuthSession, RefreshToken, Item]
            return [await connection.scalar(select(func.count()).select_from(t)) for t in tables]

    try:
        await migrate(engine, command.upgrade, BEFORE_AUTOINCREMENT)
        async with engine.begin() as connection:
            for user_id in (1, 2):
                user = {"id": user_id, "email": f"{user_id}@example.com", "hashed_password": "-"}
                await connection.execute(insert(User).values(role="user", **user))
                await connection.execute(
                    insert(Item).values(id=user_id, owner_id=user_id, title="t")
                )
            await connection.execute(insert(AuthSession).values(id="s", user_id=1))
            expires_at = datetime.now(UTC)
            token = {"id": "r", "session_id": "s", "token_hash": "h", "expires_at": expires_at}
            await connection.execute(insert(RefreshToken).values(**token))

        await upgrade_to_head(engine)
        assert await row_counts() == [2, 1, 1, 2]

        async with engine.begin() as connection:
            await connection.execute(delete(User).where(User.id == 2))
            # Foreign keys are on again: the deleted user's item went with it.
            assert await connection.scalar(select(func.count()).select_from(Item)) == 1
            new_user = await connection.execute(
                insert(User).values(email="new@example.com", hashed_password="-", role="user")
            )
            new_item = await connection.execute(insert(Item).values(owner_id=1, title="new"))
        assert new_user.inserted_primary_key == (3,)
        assert new_item.inserted_primary_key == (3,)

        await migrate(engine, command.downgrade, BEFORE_AUTOINCREMENT)
        assert await row_counts() == [2, 1, 1, 2]
    finally:
        await engine.dispose()
