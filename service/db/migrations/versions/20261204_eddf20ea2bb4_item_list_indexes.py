"""item list indexes

An owner's list, filtered by status or priority or not, read in the index's order and counted
from the same index (docs/performance.md, "The list endpoint: indexes and plans"). The
composite indexes lead on owner_id, so the single-column index on it goes. Plain CREATE INDEX
on both databases: it blocks writes to items while it builds, as every migration here does.

Revision ID: eddf20ea2bb4
Revises: 0cc901d35bb3
Create Date: 2026-12-04 22:05:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "eddf20ea2bb4"
down_revision: str | None = "0cc901d35bb3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_items_owner_id_created_at_id": ["owner_id", "created_at", "id"],
    "ix_items_owner_id_status_created_at_id": ["owner_id", "status", "created_at", "id"],
    "ix_items_owner_id_priority_created_at_id": ["owner_id", "priority", "created_at", "id"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "items", columns, unique=False)
    op.drop_index("ix_items_owner_id", table_name="items")


def downgrade() -> None:
    op.create_index("ix_items_owner_id", "items", ["owner_id"], unique=False)
    for name in reversed(_INDEXES):
        op.drop_index(name, table_name="items")
