"""never reuse ids on sqlite

SQLite gives a new row the largest id in use plus one, so deleting the newest user or item
handed its id to the next one; AUTOINCREMENT never goes back. SQLite cannot alter a table's
primary key, so the two tables are rebuilt (data, indexes and foreign keys kept). PostgreSQL's
sequences never reuse an id: nothing to do there.

Revision ID: 0cc901d35bb3
Revises: f5735e081b12
Create Date: 2026-12-04 16:03:12.208130
"""

from collections.abc import Sequence

from alembic import op

from service.db.base import NAMING_CONVENTION

revision: str = "0cc901d35bb3"
down_revision: str | None = "f5735e081b12"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("users", "items")


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for table in _TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for table in _TABLES:
        # The convention names the primary key again: an AUTOINCREMENT key is declared
        # inline, without its name.
        with op.batch_alter_table(table, recreate="always", naming_convention=NAMING_CONVENTION):
            pass
