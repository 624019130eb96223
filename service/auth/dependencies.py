from collections.abc import Callable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import sessions
from service.auth.principal import Principal
from service.auth.security import AccessClaims
from service.cache.scoped import Lookup, UserScopedCache
from service.dependencies import AuthCacheDep, SessionDep, state_of
from service.errors import AuthenticationError, ForbiddenError, InactiveUserError, InvalidTokenError
from service.users.models import Role, User

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 (a path, not a secret)


class _BearerClaims(OAuth2PasswordBearer):
    """The bearer token's verified claims, in one dependency that is also the OpenAPI security
    scheme. Decoding in a dependency of its own on top of the scheme made FastAPI solve one
    more node on every authenticated request."""

    async def __call__(self, request: Request) -> AccessClaims:  # type: ignore[override]
        token = await super().__call__(request)
        if not token:
            raise AuthenticationError()
        # The codec from the state directly, not as one more dependency.
        return state_of(request)["access_tokens"].decode(token)


# auto_error=False: a missing token is rendered by our own error handler, in our error shape.
# The scheme keeps the name OpenAPI clients know it by.
get_access_claims = _BearerClaims(
    tokenUrl=TOKEN_URL, scheme_name="OAuth2PasswordBearer", auto_error=False
)

AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


async def get_principal(
    claims: AccessClaimsDep, session: SessionDep, auth_cache: AuthCacheDep
) -> Principal:
    lookup = await auth_cache.read(claims.user_id, claims.session_id)
    return await principal_from(claims, lookup, open_session=lambda: session, auth_cache=auth_cache)


async def principal_from(
    claims: AccessClaims,
    lookup: Lookup,
    *,
    open_session: Callable[[], AsyncSession],
    auth_cache: UserScopedCache,
) -> Principal:
    """The token's login session must still be open and its user active. That answer is
    cached per session (``lookup``); revoking, deactivating or changing a role invalidates
    it at once. ``open_session`` is called only when the answer is not cached."""
    if lookup.value is not None:
        principal = Principal.loads(lookup.value)
    else:
        user = await sessions.get_session_user(
            session=open_session(), user_id=claims.user_id, session_id=claims.session_id
        )
        if user is None:
            raise InvalidTokenError()
        if not user.is_active:
            raise InactiveUserError()
        principal = Principal(id=user.id, role=Role(user.role), session_id=claims.session_id)
        await auth_cache.write(claims.user_id, claims.session_id, lookup, principal.dumps())
    # Lands in every log line of this request, the access line included.
    structlog.contextvars.bind_contextvars(user_id=principal.id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_current_user(principal: CurrentPrincipal, session: SessionDep) -> User:
    """The user's row, for the routes that read or change the account itself."""
    user = await session.get(User, principal.id)
    if user is None:  # deleted since the session was checked
        raise InvalidTokenError()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def require_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_admin:
        raise ForbiddenError("This operation needs the admin role.")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]
