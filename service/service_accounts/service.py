"""Service accounts and their API keys, managed by the user who owns them."""

from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.principal import Principal
from service.auth.scopes import Scope
from service.auth.security import hash_api_key_secret, new_api_key
from service.cache.scoped import UserScopedCache
from service.db.base import utc_now
from service.errors import ConflictError, ForbiddenError, NotFoundError
from service.service_accounts.models import ApiKey, ServiceAccount
from service.service_accounts.schemas import ApiKeyCreate, ServiceAccountCreate
from service.settings import ApiKeySettings

log = structlog.get_logger(__name__)


async def create_account(
    *, session: AsyncSession, owner: Principal, data: ServiceAccountCreate, settings: ApiKeySettings
) -> ServiceAccount:
    owned = await session.scalar(
        select(func.count()).select_from(ServiceAccount).where(ServiceAccount.owner_id == owner.id)
    )
    if (owned or 0) >= settings.max_service_accounts_per_user:
        raise ConflictError(f"At most {settings.max_service_accounts_per_user} service accounts.")
    account = ServiceAccount(owner_id=owner.id, name=data.name)
    session.add(account)
    await session.commit()
    log.info("service_account_created", service_account_id=account.id)
    return account


async def list_accounts(*, session: AsyncSession, owner: Principal) -> list[ServiceAccount]:
    result = await session.scalars(
        select(ServiceAccount)
        .where(ServiceAccount.owner_id == owner.id)
        .order_by(ServiceAccount.id)
    )
    return list(result)


async def get_account(
    *, session: AsyncSession, owner: Principal, account_id: int
) -> ServiceAccount:
    account = await session.get(ServiceAccount, account_id)
    # Someone else's account answers exactly like a missing one, admins' included.
    if account is None or account.owner_id != owner.id:
        raise NotFoundError("No service account with that id.")
    return account


async def delete_account(
    *, session: AsyncSession, auth_cache: UserScopedCache, account: ServiceAccount
) -> None:
    await session.delete(account)  # its keys with it (ON DELETE CASCADE)
    await session.commit()
    # After the commit: every worker's cached answer for the account's keys is gone.
    await auth_cache.invalidate(account.owner_id)
    log.info("service_account_deleted", service_account_id=account.id)


async def create_key(
    *,
    session: AsyncSession,
    owner: Principal,
    account: ServiceAccount,
    data: ApiKeyCreate,
    settings: ApiKeySettings,
) -> tuple[ApiKey, str]:
    """The new key and its one showing; only the secret's hash is stored."""
    if Scope.admin in data.scopes and not owner.is_admin:
        raise ForbiddenError("Only an admin can give a key the admin scope.")
    await _refuse_past_the_limit(session, account, settings)
    lifetime = data.expires_in_seconds
    expires_at = None if lifetime is None else utc_now() + timedelta(seconds=lifetime)
    key, raw = _new_key(account, data.name, [scope.value for scope in data.scopes], expires_at)
    session.add(key)
    await session.commit()
    log.info("api_key_created", api_key_id=key.id, service_account_id=account.id)
    return key, raw


async def list_keys(*, session: AsyncSession, account: ServiceAccount) -> list[ApiKey]:
    result = await session.scalars(
        select(ApiKey).where(ApiKey.service_account_id == account.id).order_by(ApiKey.created_at)
    )
    return list(result)


async def get_key(*, session: AsyncSession, account: ServiceAccount, key_id: str) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or key.service_account_id != account.id:
        raise NotFoundError("No API key with that id.")
    return key


async def rotate_key(
    *,
    session: AsyncSession,
    auth_cache: UserScopedCache,
    account: ServiceAccount,
    key: ApiKey,
    grace_seconds: int,
    settings: ApiKeySettings,
) -> tuple[ApiKey, str]:
    """A new key with the old one's name, scopes and expiry; the old one keeps working for
    ``grace_seconds`` (or until it expires, if that is sooner), so clients can switch over."""
    now = utc_now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise ConflictError("A revoked or expired key cannot be rotated; create a new one.")
    successor = select(ApiKey.id).where(
        ApiKey.service_account_id == account.id, ApiKey.rotated_from_id == key.id
    )
    if await session.scalar(successor):
        raise ConflictError("This key was rotated already; rotate its successor.")
    # The new key needs a free place while the old one works on; with no grace, it takes the
    # old one's place.
    await _refuse_past_the_limit(
        session, account, settings, leaving=key if grace_seconds == 0 else None
    )
    new_key, raw = _new_key(account, key.name, key.scopes, key.expires_at)
    new_key.rotated_from_id = key.id
    grace_ends = now + timedelta(seconds=grace_seconds)
    key.expires_at = grace_ends if key.expires_at is None else min(key.expires_at, grace_ends)
    session.add(new_key)
    await session.commit()
    # The old key's cached answer carries its old expiry.
    await auth_cache.invalidate(account.owner_id)
    log.info("api_key_rotated", api_key_id=new_key.id, rotated_from_id=key.id)
    return new_key, raw


async def revoke_key(
    *, session: AsyncSession, auth_cache: UserScopedCache, account: ServiceAccount, key: ApiKey
) -> None:
    if key.revoked_at is None:
        key.revoked_at = utc_now()
        await session.commit()
    # After the commit, and also when it was revoked already: a retry of a revocation whose
    # invalidation failed still invalidates.
    await auth_cache.invalidate(account.owner_id)
    log.info("api_key_revoked", api_key_id=key.id)


async def _refuse_past_the_limit(
    session: AsyncSession,
    account: ServiceAccount,
    settings: ApiKeySettings,
    *,
    leaving: ApiKey | None = None,
) -> None:
    """409 when the account holds its maximum of keys that still work (a rotated key in its
    grace period counts; a revoked or expired one does not)."""
    now = utc_now()
    working = (
        select(func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.service_account_id == account.id,
            ApiKey.revoked_at.is_(None),
            ApiKey.expires_at.is_(None) | (ApiKey.expires_at > now),
        )
    )
    if leaving is not None:
        working = working.where(ApiKey.id != leaving.id)
    if (await session.scalar(working) or 0) >= settings.max_keys_per_service_account:
        raise ConflictError(f"At most {settings.max_keys_per_service_account} working keys.")


def _new_key(
    account: ServiceAccount, name: str, scopes: list[str], expires_at: datetime | None
) -> tuple[ApiKey, str]:
    raw, parts = new_api_key()
    key = ApiKey(
        id=parts.key_id,
        service_account_id=account.id,
        name=name,
        scopes=scopes,
        secret_hash=hash_api_key_secret(parts.secret),
        expires_at=expires_at,
    )
    return key, raw
