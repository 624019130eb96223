from enum import StrEnum

from sqlalchemy import Boolean, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, BigIntPrimaryKey, TimestampMixin


class Role(StrEnum):
    user = "user"
    admin = "admin"


class User(TimestampMixin, Base):
    __tablename__ = "users"
    # SQLite would otherwise hand a deleted user's id to the next one (PostgreSQL never does).
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigIntPrimaryKey, primary_key=True)
    # Stored lower-cased, so uniqueness is case-insensitive on every backend.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    full_name: Mapped[str | None] = mapped_column(String(200))
    hashed_password: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(String(16), default=Role.user)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
