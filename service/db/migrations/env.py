"""Alembic environment: async engine from the service settings, or a connection handed in by
service.db.migrate when the service migrates itself."""

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from service.db.base import UtcDateTime
from service.db.migrate import migration_transaction
from service.db.models import Base
from service.db.session import create_engine
from service.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def render_item(kind: str, value: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes the service's own column type with its import, so a new
    migration runs as written."""
    if kind == "type" and isinstance(value, UtcDateTime):
        autogen_context.imports.add("from service.db.base import UtcDateTime")
        return "UtcDateTime()"
    return False


def _run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(get_settings().database)
    try:
        async with migration_transaction(engine) as connection:
            await connection.run_sync(_run_migrations)
    finally:
        await engine.dispose()


connection = config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=get_settings().database.url, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    _run_migrations(connection)
else:
    asyncio.run(_run_online())
