"""Item events, kept for replay: the transactional outbox that live streams read from.

Neither table has a foreign key to users: the key check would take a share lock on the
user's row, which deadlocks against an account deletion in progress; ``delete_user`` removes
these rows itself."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, BigIntPrimaryKey, UtcDateTime, utc_now


class EventSequence(Base):
    """Each user's last event number. Bumping it locks the row until the commit, so one
    user's events are numbered in the order their transactions commit."""

    __tablename__ = "event_sequences"

    owner_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class ItemEvent(Base):
    __tablename__ = "item_events"
    __table_args__ = (
        Index("ix_item_events_owner_id_seq", "owner_id", "seq", unique=True),
        # The retention sweep.
        Index("ix_item_events_created_at", "created_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPrimaryKey, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    item_id: Mapped[int] = mapped_column(BigInteger)
    # The item as GET /items/{id} answers it; None for a deletion.
    item: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
