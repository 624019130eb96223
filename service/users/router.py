from typing import Annotated, Any

from fastapi import APIRouter, Depends, status

from service.auth.dependencies import AdminPrincipal, CurrentUser, ProfileReader
from service.dependencies import AuthCacheDep, CachesDep, PasswordsDep, SessionDep
from service.schemas import Page, PageParams, page_params
from service.users import service
from service.users.dependencies import UserById
from service.users.schemas import PasswordChange, UserAdminUpdate, UserRead, UserUpdateMe

router = APIRouter(prefix="/users", tags=["users"])

_not_found: dict[int | str, dict[str, Any]] = {404: {"description": "No such user"}}


@router.get("/me", summary="Your own account")
async def read_me(viewer: ProfileReader, session: SessionDep) -> UserRead:
    user = await service.get_user(session=session, user_id=viewer.id)
    return UserRead.model_validate(user)


@router.patch("/me", summary="Change your name or email", responses={409: {}})
async def update_me(data: UserUpdateMe, user: CurrentUser, session: SessionDep) -> UserRead:
    updated = await service.update_me(session=session, user=user, data=data)
    return UserRead.model_validate(updated)


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change your password (ends every login session)",
)
async def change_password(
    data: PasswordChange,
    user: CurrentUser,
    session: SessionDep,
    passwords: PasswordsDep,
    auth_cache: AuthCacheDep,
) -> None:
    await service.change_password(
        session=session, passwords=passwords, auth_cache=auth_cache, user=user, data=data
    )


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete your account and everything it owns",
    responses={409: {"description": "The last active admin cannot be removed"}},
)
async def delete_me(user: CurrentUser, session: SessionDep, caches: CachesDep) -> None:
    await service.delete_user(session=session, caches=caches, user=user)


@router.get("", summary="List users (admin)")
async def list_users(
    _: AdminPrincipal, session: SessionDep, page: Annotated[PageParams, Depends(page_params)]
) -> Page[UserRead]:
    users, total = await service.list_users(session=session, page=page)
    return Page[UserRead](
        items=[UserRead.model_validate(user) for user in users],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{user_id}", summary="Get a user (admin)", responses=_not_found)
async def get_user(_: AdminPrincipal, user: UserById) -> UserRead:
    return UserRead.model_validate(user)


@router.patch(
    "/{user_id}",
    summary="Change a user's role or status (admin)",
    responses={**_not_found, 409: {"description": "The last active admin cannot be removed"}},
)
async def update_user(
    data: UserAdminUpdate,
    _: AdminPrincipal,
    user: UserById,
    session: SessionDep,
    auth_cache: AuthCacheDep,
) -> UserRead:
    updated = await service.admin_update(
        session=session, auth_cache=auth_cache, user=user, data=data
    )
    return UserRead.model_validate(updated)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (admin)",
    responses={**_not_found, 409: {"description": "The last active admin cannot be removed"}},
)
async def delete_user(
    _: AdminPrincipal, user: UserById, session: SessionDep, caches: CachesDep
) -> None:
    await service.delete_user(session=session, caches=caches, user=user)
