from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Request, Response, status

from service.auth import service
from service.auth.dependencies import CurrentPrincipal
from service.auth.schemas import LoginForm, RefreshRequest, StreamTicket, TokenPair
from service.dependencies import (
    AccessTokensDep,
    AuthCacheDep,
    LoginLimiterDep,
    PasswordsDep,
    SessionDep,
    SettingsDep,
    StreamTicketsDep,
)
from service.errors import ForbiddenError
from service.users import service as users_service
from service.users.schemas import UserCreate, UserRead

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    summary="Create an account",
    responses={409: {"description": "Email already registered"}},
)
async def register(
    data: UserCreate, session: SessionDep, passwords: PasswordsDep, background: BackgroundTasks
) -> UserRead:
    user = await users_service.create_user(session=session, passwords=passwords, data=data)
    background.add_task(users_service.welcome, user_id=user.id)
    return UserRead.model_validate(user)


async def no_store(response: Response) -> None:
    """Responses that carry tokens must not be kept by any cache (RFC 6749, section 5.1)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"


@router.post(
    "/token",
    summary="Log in (OAuth2 password flow): email as username",
    dependencies=[Depends(no_store)],
    responses={
        401: {"description": "Incorrect email or password"},
        403: {"description": "The account is inactive"},
        429: {"description": "Too many failed logins (see Retry-After)"},
        503: {"description": "Too many password checks at once (see Retry-After)"},
    },
)
async def token(
    form: Annotated[LoginForm, Form()],
    request: Request,
    session: SessionDep,
    passwords: PasswordsDep,
    limiter: LoginLimiterDep,
    access_tokens: AccessTokensDep,
    settings: SettingsDep,
) -> TokenPair:
    user = await service.authenticate(
        session=session,
        passwords=passwords,
        limiter=limiter,
        email=form.username,
        password=form.password,
        client_address=request.client.host if request.client else "unknown",
    )
    return await service.login(
        session=session, access_tokens=access_tokens, settings=settings.auth, user=user
    )


@router.post(
    "/refresh",
    summary="Exchange a refresh token for a new pair (the old one stops working)",
    dependencies=[Depends(no_store)],
    responses={401: {"description": "Invalid, expired or reused refresh token"}},
)
async def refresh(
    data: RefreshRequest,
    session: SessionDep,
    auth_cache: AuthCacheDep,
    access_tokens: AccessTokensDep,
    settings: SettingsDep,
) -> TokenPair:
    return await service.refresh(
        session=session,
        auth_cache=auth_cache,
        access_tokens=access_tokens,
        settings=settings.auth,
        raw_refresh_token=data.refresh_token,
    )


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this login session: its access and refresh tokens stop working",
)
async def logout(
    session: SessionDep, auth_cache: AuthCacheDep, principal: CurrentPrincipal
) -> None:
    if principal.session_id is None:  # CurrentPrincipal is a login session's
        raise ForbiddenError("Only a login session can be logged out.")
    await service.logout(
        session=session,
        auth_cache=auth_cache,
        session_id=principal.session_id,
        user_id=principal.id,
    )


@router.post(
    "/stream-tickets",
    status_code=status.HTTP_201_CREATED,
    summary="A single-use ticket to open an event stream from a browser (EventSource cannot "
    "send an Authorization header; an access token never goes in a URL)",
    dependencies=[Depends(no_store)],
)
async def create_stream_ticket(
    principal: CurrentPrincipal, tickets: StreamTicketsDep
) -> StreamTicket:
    ticket = await tickets.issue(principal)
    return StreamTicket(ticket=ticket, expires_in=tickets.ttl_seconds)
