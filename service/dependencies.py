"""Dependencies every domain uses: the request's DB session and the lifespan state."""

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.security import AccessTokenCodec, PasswordHasher
from service.lifespan import AppState
from service.settings import Settings


def get_state(request: Request) -> AppState:
    return cast(AppState, request.scope["state"])


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state["sessionmaker"]() as session:
        yield session


def get_settings_from_state(state: StateDep) -> Settings:
    return state["settings"]


def get_passwords(state: StateDep) -> PasswordHasher:
    return state["passwords"]


def get_access_tokens(state: StateDep) -> AccessTokenCodec:
    return state["access_tokens"]


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_from_state)]
PasswordsDep = Annotated[PasswordHasher, Depends(get_passwords)]
AccessTokensDep = Annotated[AccessTokenCodec, Depends(get_access_tokens)]
