"""Migrations are the schema's source of truth: they must match the models and run both ways."""

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.migrate import alembic_config, is_at_head, upgrade_to_head
from service.db.models import Base


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
