from typing import Annotated, Any

from fastapi import APIRouter, Body, status

from service.auth.dependencies import CurrentPrincipal
from service.dependencies import AuthCacheDep, SessionDep, SettingsDep
from service.service_accounts import service
from service.service_accounts.dependencies import OwnedAccount, OwnedKey
from service.service_accounts.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    ApiKeyRotate,
    ServiceAccountCreate,
    ServiceAccountRead,
)

# Login sessions only (every route takes CurrentPrincipal): a key cannot make keys.
router = APIRouter(prefix="/service-accounts", tags=["service accounts"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such account or key"}}
LIMIT: dict[int | str, dict[str, Any]] = {409: {"description": "The limit is reached"}}


@router.post(
    "", status_code=status.HTTP_201_CREATED, summary="Create a service account", responses=LIMIT
)
async def create_account(
    data: ServiceAccountCreate, owner: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> ServiceAccountRead:
    account = await service.create_account(
        session=session, owner=owner, data=data, settings=settings.api_keys
    )
    return ServiceAccountRead.model_validate(account)


@router.get("", summary="List your service accounts")
async def list_accounts(owner: CurrentPrincipal, session: SessionDep) -> list[ServiceAccountRead]:
    accounts = await service.list_accounts(session=session, owner=owner)
    return [ServiceAccountRead.model_validate(account) for account in accounts]


@router.get("/{account_id}", summary="Get a service account", responses=NOT_FOUND)
async def get_account(account: OwnedAccount) -> ServiceAccountRead:
    return ServiceAccountRead.model_validate(account)


@router.delete(
    "/{account_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a service account; its keys stop working at once",
    responses=NOT_FOUND,
)
async def delete_account(
    account: OwnedAccount, session: SessionDep, auth_cache: AuthCacheDep
) -> None:
    await service.delete_account(session=session, auth_cache=auth_cache, account=account)


@router.post(
    "/{account_id}/keys",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key (its secret is shown this once)",
    responses={**NOT_FOUND, **LIMIT, 403: {"description": "`admin` needs an admin owner"}},
)
async def create_key(
    data: ApiKeyCreate,
    account: OwnedAccount,
    owner: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> ApiKeyCreated:
    key, raw = await service.create_key(
        session=session, owner=owner, account=account, data=data, settings=settings.api_keys
    )
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), key=raw)


@router.get(
    "/{account_id}/keys",
    summary="List the account's keys (never their secrets)",
    responses=NOT_FOUND,
)
async def list_keys(account: OwnedAccount, session: SessionDep) -> list[ApiKeyRead]:
    keys = await service.list_keys(session=session, account=account)
    return [ApiKeyRead.model_validate(key) for key in keys]


@router.post(
    "/{account_id}/keys/{key_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    summary="Replace a key: a new one now, the old one valid for a grace period",
    responses={
        **NOT_FOUND,
        409: {"description": "The key is revoked, expired or rotated already, or the limit"},
    },
)
async def rotate_key(
    account: OwnedAccount,
    key: OwnedKey,
    session: SessionDep,
    auth_cache: AuthCacheDep,
    settings: SettingsDep,
    data: Annotated[ApiKeyRotate | None, Body()] = None,
) -> ApiKeyCreated:
    grace = None if data is None else data.grace_seconds
    new_key, raw = await service.rotate_key(
        session=session,
        auth_cache=auth_cache,
        account=account,
        key=key,
        grace_seconds=settings.api_keys.rotation_grace_seconds if grace is None else grace,
        settings=settings.api_keys,
    )
    return ApiKeyCreated(**ApiKeyRead.model_validate(new_key).model_dump(), key=raw)


@router.delete(
    "/{account_id}/keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a key: it stops working on every worker before this answers",
    responses=NOT_FOUND,
)
async def revoke_key(
    account: OwnedAccount, key: OwnedKey, session: SessionDep, auth_cache: AuthCacheDep
) -> None:
    await service.revoke_key(session=session, auth_cache=auth_cache, account=account, key=key)
