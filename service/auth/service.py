"""Login, refresh rotation with reuse detection, logout."""

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import sessions
from service.auth.metrics import LOGIN_ATTEMPTS, SESSIONS_REVOKED, TOKENS_REFRESHED
from service.auth.models import AuthSession
from service.auth.rate_limit import LoginRateLimiter
from service.auth.schemas import TokenPair
from service.auth.security import AccessTokenCodec, PasswordHasher
from service.cache.scoped import UserScopedCache
from service.db.base import utc_now
from service.errors import (
    InactiveUserError,
    InvalidCredentialsError,
    InvalidTokenError,
    RefreshTokenReusedError,
)
from service.settings import AuthSettings
from service.users.models import User
from service.users.service import get_by_email

log = structlog.get_logger(__name__)

# No account can have longer ones; refusing early keeps argon2 from hashing megabytes.
MAX_EMAIL_LENGTH = 320
MAX_PASSWORD_LENGTH = 128


async def authenticate(
    *,
    session: AsyncSession,
    passwords: PasswordHasher,
    limiter: LoginRateLimiter,
    email: str,
    password: str,
    client_address: str,
) -> User:
    if len(email) > MAX_EMAIL_LENGTH or len(password) > MAX_PASSWORD_LENGTH or "\x00" in email:
        raise InvalidCredentialsError()
    # A password-check slot first: a login that could not be checked now is refused (503)
    # before it costs a rate-limit count or a query.
    with passwords.capacity():
        attempt = await limiter.reserve(email, client_address)
        try:
            user = await get_by_email(session=session, email=email)
            # Ends the read, so no pooled connection waits while argon2 runs; `user` stays
            # usable.
            await session.commit()
            valid, new_hash = await passwords.verify_and_update(
                password, user.hashed_password if user else None
            )
        except Exception:
            await limiter.release(attempt)  # the password was never checked: not a failure
            raise
    if user is None or not valid:
        log.info("login_failed", reason="invalid_credentials")
        LOGIN_ATTEMPTS.labels(outcome="invalid_credentials").inc()
        raise InvalidCredentialsError()  # the reserved attempt stays counted
    await limiter.release(attempt)
    if not user.is_active:
        log.info("login_failed", reason="inactive", user_id=user.id)
        LOGIN_ATTEMPTS.labels(outcome="inactive").inc()
        raise InactiveUserError()
    if new_hash is not None:
        # Hashing parameters were raised since this hash was made: upgrade it transparently.
        user.hashed_password = new_hash
        log.info("password_rehashed", user_id=user.id)
    return user


async def login(
    *,
    session: AsyncSession,
    access_tokens: AccessTokenCodec,
    settings: AuthSettings,
    user: User,
) -> TokenPair:
    auth_session = await sessions.open_session(session=session, user_id=user.id)
    refresh = sessions.add_refresh_token(
        session=session, session_id=auth_session.id, ttl_seconds=settings.refresh_token_ttl_seconds
    )
    await session.commit()
    log.info("login_succeeded", user_id=user.id)
    LOGIN_ATTEMPTS.labels(outcome="success").inc()
    access = access_tokens.issue(user_id=user.id, session_id=auth_session.id)
    return TokenPair(access_token=access.token, expires_in=access.expires_in, refresh_token=refresh)


async def refresh(
    *,
    session: AsyncSession,
    auth_cache: UserScopedCache,
    access_tokens: AccessTokenCodec,
    settings: AuthSettings,
    raw_refresh_token: str,
) -> TokenPair:
    token = await sessions.find_refresh_token(session=session, raw=raw_refresh_token)
    if token is None:
        raise InvalidTokenError()
    auth_session = await session.get(AuthSession, token.session_id)
    if auth_session is None or auth_session.revoked_at is not None:
        raise InvalidTokenError()
    if token.used_at is not None or not await sessions.mark_used(
        session=session, token_id=token.id
    ):
        # A rotated token came back: either the client or a thief holds a copy. End the
        # whole session so that neither can go on with it.
        revoked = await sessions.revoke_session(
            session=session, session_id=auth_session.id, reason="refresh_reuse"
        )
        await session.commit()
        await auth_cache.invalidate(auth_session.user_id)
        SESSIONS_REVOKED.labels(reason="refresh_reuse").inc(revoked)
        log.warning("refresh_token_reused", user_id=auth_session.user_id)
        raise RefreshTokenReusedError()
    if token.expires_at <= utc_now():
        await session.rollback()
        raise InvalidTokenError()
    user = await session.get(User, auth_session.user_id)
    if user is None or not user.is_active:
        await session.rollback()
        raise InvalidTokenError()
    new_refresh = sessions.add_refresh_token(
        session=session, session_id=auth_session.id, ttl_seconds=settings.refresh_token_ttl_seconds
    )
    await session.commit()
    log.info("token_refreshed", user_id=user.id)
    TOKENS_REFRESHED.inc()
    access = access_tokens.issue(user_id=user.id, session_id=auth_session.id)
    return TokenPair(
        access_token=access.token, expires_in=access.expires_in, refresh_token=new_refresh
    )


async def logout(
    *, session: AsyncSession, auth_cache: UserScopedCache, session_id: str, user_id: int
) -> None:
    revoked = await sessions.revoke_session(session=session, session_id=session_id, reason="logout")
    await session.commit()
    await auth_cache.invalidate(user_id)
    SESSIONS_REVOKED.labels(reason="logout").inc(revoked)
    log.info("logged_out", user_id=user_id)
