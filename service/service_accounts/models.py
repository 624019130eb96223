"""Service accounts act for the user who owns them, through API keys with scopes."""

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, BigIntPrimaryKey, UtcDateTime, utc_now


class ServiceAccount(Base):
    __tablename__ = "service_accounts"
    # SQLite would otherwise hand a deleted account's id to the next one (PostgreSQL never does).
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigIntPrimaryKey, primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)


class ApiKey(Base):
    __tablename__ = "api_keys"

    # The public part of the key (gh_<id>_<secret>): found by it, checked by the secret's hash.
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    service_account_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("service_accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # Only a SHA-256 of the secret is stored: a database leak hands out no usable key.
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The key this one replaced by rotation, which stays valid until its grace period ends.
    rotated_from_id: Mapped[str | None] = mapped_column(String(16))
