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

# auto_error=False: a missing token is rendered by our own error handler, in our error shape.
_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


async def get_access_claims(
    request: Request, token: Annotated[str | None, Depends(_bearer)]
) -> AccessClaims:
    # The codec from the state directly, not as one more dependency: FastAPI solves every
    # node of the graph again on each request, and this one is on every authenticated route.
    if not token:
        raise AuthenticationError()
    return state_of(request)["access_tokens"].decode(token)


AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


async def get_principal(
    claims: AccessClaimsDep, session: SessionDep, auth_cache: AuthCacheDep
) -> Principal:
    lookup = await auth_cache.read(claims.user_id, claims.session_id)
    return await principal_from(claims, lookup, session=session, auth_cache=auth_cache)


async def principal_from(
    claims: AccessClaims, lookup: Lookup, *, session: AsyncSession, auth_cache: UserScopedCache
) -> Principal:
    """The token's login session must still be open and its user active. That answer is
    cached per session (``lookup``); revoking, deactivating or changing a role invalidates
    it at once."""
    if lookup.value is not None:
        principal = Principal.loads(lookup.value)
    else:
        user = await sessions.get_session_user(
            session=session, user_id=claims.user_id, session_id=claims.session_id
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
