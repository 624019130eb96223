"""Who an event stream belongs to, and how it checks, later, that it still may be open.

A WebSocket carries its credential in the handshake (``Sec-WebSocket-Protocol: bearer.<token>``,
or an Authorization / X-API-Key header from clients that can set one) or in its first message;
never in the URL, which ends up in access logs. An SSE stream uses the usual headers or a
single-use stream ticket (service/auth/stream_tickets.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import sessions
from service.auth.api_keys import ApiKeyAuthenticator
from service.auth.dependencies import principal_from
from service.auth.principal import Principal
from service.auth.scopes import Scope
from service.db.base import utc_now
from service.errors import (
    AmbiguousCredentialsError,
    AuthenticationError,
    ForbiddenError,
    InsufficientScopeError,
)
from service.events.hub import StillAllowed
from service.lifespan import AppState
from service.users.models import Role

PROTOCOL = "glasshouse.events.v1"
BEARER_PROTOCOL_PREFIX = "bearer."


@dataclass(frozen=True, slots=True)
class StreamCredential:
    principal: Principal
    still_allowed: StillAllowed
    ends_at: datetime  # the token's expiry, or max_stream_seconds from now


def credential_for(
    principal: Principal,
    *,
    api_key: str | None,
    api_keys: ApiKeyAuthenticator,
    everyone: bool,
    expires_at: datetime | None,
    max_seconds: float,
) -> StreamCredential:
    """Checks the principal may open the stream, and how the stream checks it again."""
    if not principal.allows(Scope.items_read):
        raise InsufficientScopeError(f"This needs the {Scope.items_read.value} scope.")
    if everyone and not (principal.is_admin and principal.allows(Scope.admin)):
        raise ForbiddenError("Watching every user's events needs the admin role.")

    async def still_allowed(session: AsyncSession) -> bool:
        if principal.session_id is not None:
            user = await sessions.get_session_user(
                session=session, user_id=principal.id, session_id=principal.session_id
            )
            return user is not None and user.is_active and (not everyone or user.role == Role.admin)
        assert api_key is not None
        granted = await api_keys.still_grants(api_key, session=session)
        return granted is not None and (not everyone or granted.is_admin)

    latest_end = utc_now() + timedelta(seconds=max_seconds)
    ends_at = latest_end if expires_at is None else min(expires_at, latest_end)
    return StreamCredential(principal, still_allowed, ends_at)


def offered_token(subprotocols: list[str]) -> str | None:
    for offered in subprotocols:
        if offered.startswith(BEARER_PROTOCOL_PREFIX):
            return offered.removeprefix(BEARER_PROTOCOL_PREFIX)
    return None


async def authenticate(
    state: AppState,
    session: AsyncSession,
    *,
    token: str | None,
    api_key: str | None,
    address: str,
    everyone: bool,
) -> StreamCredential:
    """A WebSocket's credential: an access token or an API key (exactly one)."""
    settings = state["settings"].realtime
    if token is not None and api_key is not None:
        raise AmbiguousCredentialsError()
    if api_key is not None:
        principal = await state["api_keys"].authenticate(api_key, session=session, address=address)
        expires_at = None
    elif token is not None:
        claims = state["access_tokens"].decode(token)
        auth_cache = state["caches"].auth
        principal = await principal_from(
            claims,
            await auth_cache.read(claims.user_id, claims.session_id),
            open_session=lambda: session,
            auth_cache=auth_cache,
        )
        expires_at = claims.expires_at
    else:
        raise AuthenticationError()
    return credential_for(
        principal,
        api_key=api_key,
        api_keys=state["api_keys"],
        everyone=everyone,
        expires_at=expires_at,
        max_seconds=settings.max_stream_seconds,
    )
