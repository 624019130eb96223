from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from service.auth import service
from service.auth.dependencies import AccessClaimsDep, CurrentUser
from service.auth.schemas import RefreshRequest, TokenPair
from service.dependencies import AccessTokensDep, PasswordsDep, SessionDep, SettingsDep
from service.users import service as users_service
from service.users.schemas import UserCreate, UserRead

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    summary="Create an account",
    responses={409: {"description": "Email already registered"}},
)
async def register(data: UserCreate, session: SessionDep, passwords: PasswordsDep) -> UserRead:
    user = await users_service.create_user(session=session, passwords=passwords, data=data)
    return UserRead.model_validate(user)


@router.post(
    "/token",
    summary="Log in (OAuth2 password flow): email as username",
    responses={401: {"description": "Incorrect email or password"}},
)
async def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    passwords: PasswordsDep,
    access_tokens: AccessTokensDep,
    settings: SettingsDep,
) -> TokenPair:
    user = await service.authenticate(
        session=session, passwords=passwords, email=form.username, password=form.password
    )
    return await service.login(
        session=session, access_tokens=access_tokens, settings=settings.auth, user=user
    )


@router.post(
    "/refresh",
    summary="Exchange a refresh token for a new pair (the old one stops working)",
    responses={401: {"description": "Invalid, expired or reused refresh token"}},
)
async def refresh(
    data: RefreshRequest,
    session: SessionDep,
    access_tokens: AccessTokensDep,
    settings: SettingsDep,
) -> TokenPair:
    return await service.refresh(
        session=session,
        access_tokens=access_tokens,
        settings=settings.auth,
        raw_refresh_token=data.refresh_token,
    )


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this login session: its access and refresh tokens stop working",
)
async def logout(session: SessionDep, claims: AccessClaimsDep, user: CurrentUser) -> None:
    await service.logout(session=session, session_id=claims.session_id, user_id=user.id)
