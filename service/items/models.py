from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, BigIntPrimaryKey, TimestampMixin


class ItemStatus(StrEnum):
    todo = "todo"
    doing = "doing"
    done = "done"


class Item(TimestampMixin, Base):
    __tablename__ = "items"
    # SQLite would otherwise hand a deleted item's id to the next one (PostgreSQL never does).
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigIntPrimaryKey, primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[ItemStatus] = mapped_column(String(16), default=ItemStatus.todo)
    priority: Mapped[int] = mapped_column(Integer, default=3)
