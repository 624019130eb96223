"""Engine and session factory built from settings; nothing here runs at import time."""

import logging
import time
import uuid
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from service.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    if settings.echo:
        # Through logging, not SQLAlchemy's own stderr handler, so SQL lines are structured too.
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    if settings.is_sqlite:
        engine = create_async_engine(settings.url)
        event.listen(engine.sync_engine, "connect", _enable_sqlite_foreign_keys)
        return engine
    connect_args: dict[str, Any] = {
        "timeout": settings.connect_timeout_seconds,
        # Client-side: bounds a statement even when the server (or the network) stalls.
        "command_timeout": settings.command_timeout_seconds,
    }
    if settings.pgbouncer_transaction_mode:
        connect_args |= _TRANSACTION_POOLING_ARGS
    elif settings.statement_timeout_ms:
        # Sent at login. PgBouncer cannot pass it on to the server connections it shares: in
        # transaction mode they get it from PgBouncer or the role (docs/operations.md, "PgBouncer").
        connect_args["server_settings"] = {"statement_timeout": str(settings.statement_timeout_ms)}
    ping_every_checkout = settings.pool_pre_ping and settings.pool_pre_ping_idle_seconds == 0
    engine = create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.pool_recycle_seconds,
        pool_pre_ping=ping_every_checkout,
        connect_args=connect_args,
    )
    if settings.pool_pre_ping and not ping_every_checkout:
        _ping_when_idle(engine, settings.pool_pre_ping_idle_seconds)
    return engine


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


# Behind PgBouncer in transaction mode one server connection serves many clients, one
# transaction at a time, and a client's next transaction may run on another one:
# - statement_cache_size=0: asyncpg's own queries (type introspection, pings) use unnamed
#   statements, parsed and run in one round trip;
# - prepared_statement_cache_size=0: SQLAlchemy prepares each statement where it runs instead
#   of reusing one prepared on a server connection this client may no longer have;
# - prepared_statement_name_func: asyncpg numbers statements per client connection
#   (__asyncpg_stmt_1__, ...), so two clients sharing a server connection would collide.
_TRANSACTION_POOLING_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": _unique_statement_name,
}

_LAST_USED = "glasshouse_last_used"


def _ping_when_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """SQLAlchemy's pre-ping, for connections idle at least ``idle_seconds`` only.

    The plain pre-ping costs three round trips (BEGIN, ";", ROLLBACK with asyncpg) on every
    checkout, more than the query of a primary-key read. A connection checked in a moment ago
    has just worked; one that sat idle (through a database restart, say) is tested, and a dead
    one is replaced before anyone uses it, as with the plain pre-ping. A connection that dies
    while in use fails that request (503) and, as always, SQLAlchemy then discards every
    pooled connection older than the failure.
    """

    def mark_used(_: Any, record: ConnectionPoolEntry, *__: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        if time.monotonic() - record.info.get(_LAST_USED, 0.0) < idle_seconds:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            # The pool discards this connection and checks out another (up to three times).
            raise exc.DisconnectionError() from error

    event.listen(engine.sync_engine, "connect", mark_used)
    event.listen(engine.sync_engine, "checkin", mark_used)
    event.listen(engine.sync_engine, "checkout", ping_if_idle)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: responses are built from objects after the commit.
    return async_sessionmaker(engine, expire_on_commit=False)


def create_read_sessionmaker(
    engine: AsyncEngine, settings: DatabaseSettings
) -> async_sessionmaker[AsyncSession]:
    """Sessions for requests that only read: in autocommit mode there is no BEGIN before the
    query and no ROLLBACK after it, two of a primary-key read's three round trips. Nothing is
    lost: at READ COMMITTED every statement takes its own snapshot, transaction or not.

    Not behind PgBouncer in transaction mode: SQLAlchemy prepares a statement, then runs it,
    and only a transaction keeps both on the same server connection."""
    if settings.pgbouncer_transaction_mode:
        return create_sessionmaker(engine)
    return create_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))


def _enable_sqlite_foreign_keys(dbapi_connection: DBAPIConnection, _: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # Write-ahead logging: a long read (an export streaming its rows) no longer blocks the
    # writes beside it (its progress, other requests). In-memory databases keep their mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
