"""item events

The outbox and replay log of live item events (docs/realtime.md), and each user's event
counter: two new tables; nothing else changes.

Revision ID: c81e5a0f4d27
Revises: b26df5c288ff
Create Date: 2026-12-05 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db.base import UtcDateTime

revision: str = "c81e5a0f4d27"
down_revision: str | None = "b26df5c288ff"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_sequences",
        sa.Column("owner_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", name=op.f("pk_event_sequences")),
    )
    op.create_table(
        "item_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("item", sa.JSON(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_item_events_owner_id_seq", "item_events", ["owner_id", "seq"], unique=True)
    op.create_index("ix_item_events_created_at", "item_events", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_item_events_created_at", table_name="item_events")
    op.drop_index("ix_item_events_owner_id_seq", table_name="item_events")
    op.drop_table("item_events")
    op.drop_table("event_sequences")
