from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, BigIntPrimaryKey, TimestampMixin


class ItemStatus(StrEnum):
    todo = "todo"
    doing = "doing"
    done = "done"


class Item(TimestampMixin, Base):
    __tablename__ = "items"
    # One index per filter a list offers, each led by owner_id (which the users.id cascade also
    # needs) and ending in the default order: a page in index order, its total from the same index.
    __table_args__ = (
        # An owner's list and total in created order; bounds the title sort and ?q= to the owner.
        Index("ix_items_owner_id_created_at_id", "owner_id", "created_at", "id"),
        # ?status=: those rows in created order, and their total.
        Index("ix_items_owner_id_status_created_at_id", "owner_id", "status", "created_at", "id"),
        # ?priority= and the priority sorts (ties in created order), and the filter's total.
        Index(
            "ix_items_owner_id_priority_created_at_id", "owner_id", "priority", "created_at", "id"
        ),
        # SQLite would otherwise hand a deleted item's id to the next one (PostgreSQL never does).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPrimaryKey, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[ItemStatus] = mapped_column(String(16), default=ItemStatus.todo)
    priority: Mapped[int] = mapped_column(Integer, default=3)
