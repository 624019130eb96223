from typing import Annotated

import structlog
from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer

from service.auth import sessions
from service.auth.security import AccessClaims
from service.dependencies import AccessTokensDep, SessionDep
from service.errors import AuthenticationError, ForbiddenError, InactiveUserError, InvalidTokenError
from service.users.models import Role, User

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 (a path, not a secret)

# auto_error=False: a missing token is rendered by our own error handler, in our error shape.
_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def get_access_claims(
    access_tokens: AccessTokensDep, token: Annotated[str | None, Depends(_bearer)]
) -> AccessClaims:
    if not token:
        raise AuthenticationError()
    return access_tokens.decode(token)


AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


async def get_current_user(session: SessionDep, claims: AccessClaimsDep) -> User:
    user = await sessions.get_session_user(
        session=session, user_id=claims.user_id, session_id=claims.session_id
    )
    if user is None:
        raise InvalidTokenError()
    if not user.is_active:
        raise InactiveUserError()
    # Lands in every log line of this request, the access line included.
    structlog.contextvars.bind_contextvars(user_id=user.id)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_admin(user: CurrentUser) -> User:
    if user.role != Role.admin:
        raise ForbiddenError("This operation needs the admin role.")
    return user


AdminUser = Annotated[User, Depends(require_admin)]
