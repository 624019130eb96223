from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import sessions
from service.auth.metrics import AUTHENTICATED_REQUESTS
from service.auth.principal import Principal
from service.auth.scopes import Scope
from service.auth.security import AccessClaims
from service.cache.scoped import Lookup, UserScopedCache
from service.db.base import utc_now
from service.dependencies import AuthCacheDep, SessionDep, StreamTicketsDep, state_of
from service.errors import (
    AmbiguousCredentialsError,
    AuthenticationError,
    ForbiddenError,
    InactiveUserError,
    InsufficientScopeError,
    InvalidApiKeyError,
    InvalidTokenError,
)
from service.users.models import Role, User

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 (a path, not a secret)
API_KEY_HEADER = "X-API-Key"


class _BearerClaims(OAuth2PasswordBearer):
    """The bearer token's verified claims, if one was sent, in one dependency that is also the
    OpenAPI security scheme. Decoding in a dependency of its own on top of the scheme made
    FastAPI solve one more node on every authenticated request."""

    async def __call__(self, request: Request) -> AccessClaims | None:  # type: ignore[override]
        token = await super().__call__(request)
        # The codec from the state directly, not as one more dependency.
        return state_of(request)["access_tokens"].decode(token) if token else None


# auto_error=False: a missing credential is rendered by our own error handler, in our error
# shape. The schemes keep the names OpenAPI clients know them by.
get_access_claims = _BearerClaims(
    tokenUrl=TOKEN_URL, scheme_name="OAuth2PasswordBearer", auto_error=False
)
# Its own header, not a bearer token: a key is told apart from a token before anything is
# parsed, and never lands where tokens are expected (docs/api-keys.md).
get_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="APIKeyHeader",
    description="A service account's API key (gh_...): docs/api-keys.md.",
    auto_error=False,
)

AccessClaimsDep = Annotated[AccessClaims | None, Depends(get_access_claims)]
ApiKeyDep = Annotated[str | None, Depends(get_api_key)]
_SESSION_REQUESTS = AUTHENTICATED_REQUESTS.labels(method="session")
_API_KEY_REQUESTS = AUTHENTICATED_REQUESTS.labels(method="api_key")


async def get_principal(
    request: Request, claims: AccessClaimsDep, session: SessionDep, auth_cache: AuthCacheDep
) -> Principal:
    """The signed-in user, through a login session's access token. A route that takes this is
    closed to API keys (and its OpenAPI operation names the token scheme alone): a key reaches
    only the routes that name a scope, through ``requires``."""
    if claims is None:
        if request.headers.get(API_KEY_HEADER):
            raise InsufficientScopeError("This needs a login session; API keys cannot use it.")
        raise AuthenticationError()
    if API_KEY_HEADER in request.headers:
        raise AmbiguousCredentialsError()
    lookup = await auth_cache.read(claims.user_id, claims.session_id)
    principal = await principal_from(
        claims, lookup, open_session=lambda: session, auth_cache=auth_cache
    )
    _SESSION_REQUESTS.inc()
    return principal


async def get_caller(
    request: Request,
    claims: AccessClaimsDep,
    api_key: ApiKeyDep,
    session: SessionDep,
    auth_cache: AuthCacheDep,
) -> Principal:
    """A login session or an API key. Only ``requires`` takes this: a key's request is always
    checked against the route's scope."""
    if api_key is None:
        if API_KEY_HEADER in request.headers:  # sent empty, which APIKeyHeader reads as none
            raise InvalidApiKeyError()
        return await get_principal(request, claims, session, auth_cache)
    if claims is not None:
        raise AmbiguousCredentialsError()
    address = request.client.host if request.client else "unknown"
    principal = await state_of(request)["api_keys"].authenticate(
        api_key, session=session, address=address
    )
    _API_KEY_REQUESTS.inc()
    # In every log line of this request, the access line included; never the key.
    structlog.contextvars.bind_contextvars(
        user_id=principal.id, service_account_id=principal.service_account_id
    )
    return principal


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
Caller = Annotated[Principal, Depends(get_caller)]


async def get_current_user(principal: CurrentPrincipal, session: SessionDep) -> User:
    """The user's row, for the routes that read or change the account itself."""
    user = await session.get(User, principal.id)
    if user is None:  # deleted since the session was checked
        raise InvalidTokenError()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


# Each scope's check, one dependency per scope (FastAPI solves each once per request). A test
# holds every authenticated route to having one.
SCOPE_CHECKS: dict[Callable[..., Awaitable[Principal]], Scope] = {}


def requires(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """The dependency that lets a request through if its credential has ``scope``: a login
    session has every scope, an API key those it was given. The one way a key gets in."""
    for check, checked in SCOPE_CHECKS.items():
        if checked is scope:
            return check

    async def check_scope(principal: Caller) -> Principal:
        if not principal.allows(scope):
            raise InsufficientScopeError(f"This needs the {scope.value} scope.")
        return principal

    SCOPE_CHECKS[check_scope] = scope
    return check_scope


ItemsReader = Annotated[Principal, Depends(requires(Scope.items_read))]
ItemsWriter = Annotated[Principal, Depends(requires(Scope.items_write))]
ProfileReader = Annotated[Principal, Depends(requires(Scope.profile_read))]


async def require_admin(
    principal: Annotated[Principal, Depends(requires(Scope.admin))],
) -> Principal:
    if not principal.is_admin:
        raise ForbiddenError("This operation needs the admin role.")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]


async def get_items_stream_reader(
    request: Request,
    claims: AccessClaimsDep,
    api_key: ApiKeyDep,
    session: SessionDep,
    auth_cache: AuthCacheDep,
    tickets: StreamTicketsDep,
    ticket: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=100,
            description="A single-use ticket from POST /api/v1/auth/stream-tickets, for a "
            "browser's EventSource (which cannot send headers). Other clients send their "
            "Authorization header or API key as for any request.",
        ),
    ] = None,
) -> Principal:
    """An event stream's reader, with the items:read scope: by the usual credentials, or by a
    ticket that stands for the login session that took it."""
    if ticket is None:
        principal = await get_caller(request, claims, api_key, session, auth_cache)
    else:
        if claims is not None or api_key is not None:
            raise AmbiguousCredentialsError()
        user_id, session_id = await tickets.redeem(ticket)
        ticket_claims = AccessClaims(
            user_id=user_id,
            session_id=session_id,
            token_id="stream-ticket",  # noqa: S106 (a label, not a secret)
            expires_at=utc_now(),
        )
        principal = await principal_from(
            ticket_claims,
            await auth_cache.read(user_id, session_id),
            open_session=lambda: session,
            auth_cache=auth_cache,
        )
    if not principal.allows(Scope.items_read):
        raise InsufficientScopeError(f"This needs the {Scope.items_read.value} scope.")
    return principal


SCOPE_CHECKS[get_items_stream_reader] = Scope.items_read
ItemsStreamReader = Annotated[Principal, Depends(get_items_stream_reader)]
