"""Apply Alembic migrations from inside the service (the embedded default does this itself)."""

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["configure_logging"] = False
    return config


@asynccontextmanager
async def migration_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that commits at the end.

    On SQLite, foreign keys are off meanwhile and checked before the commit: batch mode
    rebuilds a table by dropping it, and dropping a table that others refer to with foreign
    keys on deletes every row of theirs that refers to it (ON DELETE CASCADE)."""
    async with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        enforced = False
        if sqlite:
            # SQLite ignores this pragma inside a transaction, so it comes first, committed.
            enforced = await connection.scalar(text("PRAGMA foreign_keys")) == 1
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            if await connection.scalar(text("PRAGMA foreign_keys")) != 0:
                raise RuntimeError("cannot turn SQLite foreign keys off to migrate safely")
            await connection.commit()
        try:
            async with connection.begin():
                yield connection
                if sqlite:
                    broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).first()
                    if broken is not None:
                        raise RuntimeError(f"migration broke a foreign key: {tuple(broken)}")
        finally:
            if enforced:
                # The connection goes back to the pool: the app relies on its cascades.
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()


async def upgrade_to_head(engine: AsyncEngine) -> None:
    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    # Every start of the embedded default comes here: one that has nothing to migrate skips
    # the foreign key check, which reads every row that has a foreign key.
    if await is_at_head(engine):
        return
    async with migration_transaction(engine) as connection:
        await connection.run_sync(upgrade)


@functools.cache
def _head_revisions() -> frozenset[str]:
    """Read once: the migration files do not change while the process runs, and parsing them
    on every startup probe blocked the event loop."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


async def is_at_head(engine: AsyncEngine) -> bool:
    heads = _head_revisions()

    def current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        return await connection.run_sync(current) == heads
