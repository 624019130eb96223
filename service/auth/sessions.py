"""Login sessions and their rotating refresh tokens (the data layer of auth)."""

import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.models import AuthSession, RefreshToken
from service.auth.security import hash_refresh_token, new_refresh_token
from service.db.base import utc_now
from service.users.models import User


async def open_session(*, session: AsyncSession, user_id: int) -> AuthSession:
    auth_session = AuthSession(id=str(uuid.uuid4()), user_id=user_id)
    session.add(auth_session)
    return auth_session


def add_refresh_token(*, session: AsyncSession, session_id: str, ttl_seconds: int) -> str:
    raw = new_refresh_token()
    session.add(
        RefreshToken(
            id=str(uuid.uuid4()),
            session_id=session_id,
            token_hash=hash_refresh_token(raw),
            expires_at=utc_now() + timedelta(seconds=ttl_seconds),
        )
    )
    return raw


async def find_refresh_token(*, session: AsyncSession, raw: str) -> RefreshToken | None:
    result = await session.scalars(
        select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(raw))
    )
    return result.one_or_none()


async def mark_used(*, session: AsyncSession, token_id: str) -> bool:
    """Atomically claims the token: False means another request used it first."""
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token_id, RefreshToken.used_at.is_(None))
        .values(used_at=utc_now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def revoke_session(*, session: AsyncSession, session_id: str, reason: str) -> int:
    result = await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utc_now(), revoked_reason=reason)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def revoke_all_sessions(*, session: AsyncSession, user_id: int, reason: str) -> int:
    """Returns how many open sessions were revoked."""
    result = await session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utc_now(), revoked_reason=reason)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def get_session_user(*, session: AsyncSession, user_id: int, session_id: str) -> User | None:
    """The user behind an access token, if its login session is still open (one query)."""
    result = await session.scalars(
        select(User)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(
            User.id == user_id,
            AuthSession.id == session_id,
            AuthSession.revoked_at.is_(None),
        )
    )
    return result.one_or_none()
