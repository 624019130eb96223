"""API-key authentication: a hash lookup with a cache, as cheap as an access token's check.

A key's answer is cached under its owner's auth-cache scope, so everything that invalidates the
owner's login sessions (deactivation, deletion, a role change) invalidates their keys too, on
every worker, and revoking or rotating a key invalidates the owner's scope after the commit.
Which user owns a key never changes, so each worker remembers it after the first lookup; until
then it reads the database and caches nothing (the owner's version must be read first)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.auth.metrics import API_KEY_FAILURES
from service.auth.principal import Principal
from service.auth.rate_limit import ApiKeyFailureLimiter
from service.auth.scopes import Scope
from service.auth.security import api_key_secret_matches, parse_api_key
from service.cache.scoped import MISS_UNAVAILABLE, UserScopedCache
from service.db.base import utc_now
from service.errors import InactiveUserError, InvalidApiKeyError
from service.service_accounts.models import ApiKey, ServiceAccount
from service.settings import ApiKeySettings
from service.users.models import Role, User

log = structlog.get_logger(__name__)

_KNOWN_SCOPES = frozenset(scope.value for scope in Scope)
# Key ids whose owner this worker knows; beyond this, the least recently used are forgotten.
_OWNERS_CAPACITY = 10_000


def cache_key(key_id: str) -> str:
    return f"key:{key_id}"


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a valid key grants, and what is checked on each use: the secret and the expiry."""

    principal: Principal
    secret_hash: str
    expires_at: float | None  # a Unix time

    def dumps(self) -> bytes:
        return orjson.dumps(
            {"p": self.principal.dumps().decode(), "h": self.secret_hash, "e": self.expires_at}
        )

    @classmethod
    def loads(cls, raw: bytes) -> KeyGrant:
        data = orjson.loads(raw)
        return cls(Principal.loads(data["p"].encode()), data["h"], data["e"])


class ApiKeyAuthenticator:
    def __init__(
        self,
        settings: ApiKeySettings,
        auth_cache: UserScopedCache,
        limiter: ApiKeyFailureLimiter,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self.auth_cache = auth_cache
        self.limiter = limiter
        self.sessionmaker = sessionmaker
        self._owners: OrderedDict[str, int] = OrderedDict()
        self._last_used_written: dict[str, float] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def authenticate(self, raw: str, *, session: AsyncSession, address: str) -> Principal:
        parts = parse_api_key(raw)
        if parts is None:
            await self._refuse("malformed", address, counted=False)
        owner_id = self._owners.get(parts.key_id)
        lookup = (
            MISS_UNAVAILABLE
            if owner_id is None
            else await self.auth_cache.read(owner_id, cache_key(parts.key_id))
        )
        cached = lookup.value is not None
        attempt = None
        if lookup.value is not None:
            grant: KeyGrant | str = KeyGrant.loads(lookup.value)
        else:
            # Counted before the database is asked, given back if the key is good: a stream of
            # made-up keys costs its sender a 429, not the database a query each.
            attempt = await self.limiter.reserve(address)
            grant = await self._load(session, parts.key_id)
        if isinstance(grant, str):
            await self._refuse(grant, address, counted=not cached)
        if not api_key_secret_matches(parts.secret, grant.secret_hash):
            await self._refuse("wrong_secret", address, counted=not cached)
        if grant.expires_at is not None and grant.expires_at <= time.time():
            await self._refuse("expired", address, counted=not cached)
        if not cached:
            await self.limiter.release(attempt)
            self._remember_owner(parts.key_id, grant.principal.id)
            await self.auth_cache.write(
                grant.principal.id, cache_key(parts.key_id), lookup, grant.dumps()
            )
        self._note_use(parts.key_id)
        return grant.principal

    async def still_grants(self, raw: str, *, session: AsyncSession) -> Principal | None:
        """What the key grants now, from the database (no cache, no failure counting): an
        open event stream checks its key again when the owner's credentials change."""
        parts = parse_api_key(raw)
        grant = None if parts is None else await self._load(session, parts.key_id)
        if parts is None or not isinstance(grant, KeyGrant):
            return None
        if not api_key_secret_matches(parts.secret, grant.secret_hash):
            return None
        if grant.expires_at is not None and grant.expires_at <= time.time():
            return None
        return grant.principal

    async def _load(self, session: AsyncSession, key_id: str) -> KeyGrant | str:
        """The key's grant from the database, or why it grants nothing."""
        row = (
            await session.execute(
                select(ApiKey, ServiceAccount.owner_id, User.role, User.is_active)
                .join(ServiceAccount, ServiceAccount.id == ApiKey.service_account_id)
                .join(User, User.id == ServiceAccount.owner_id)
                .where(ApiKey.id == key_id)
            )
        ).one_or_none()
        if row is None:
            return "unknown"
        key, owner_id, owner_role, owner_active = row
        if key.revoked_at is not None:
            return "revoked"
        if not owner_active:
            return "inactive"
        # A scope this version no longer knows grants nothing (rather than failing the request).
        scopes = frozenset(Scope(scope) for scope in key.scopes if scope in _KNOWN_SCOPES)
        # Admin powers need both: an admin owner and a key granted the admin scope.
        admin = owner_role == Role.admin and Scope.admin in scopes
        principal = Principal(
            id=owner_id,
            role=Role.admin if admin else Role.user,
            scopes=scopes,
            service_account_id=key.service_account_id,
        )
        expires_at = None if key.expires_at is None else key.expires_at.timestamp()
        return KeyGrant(principal=principal, secret_hash=key.secret_hash, expires_at=expires_at)

    async def _refuse(self, reason: str, address: str, *, counted: bool) -> NoReturn:
        API_KEY_FAILURES.labels(reason=reason).inc()
        log.info("api_key_refused", reason=reason)
        if not counted:
            await self.limiter.reserve(address)  # raises 429 once the address is over its limit
        if reason == "inactive":
            raise InactiveUserError()
        raise InvalidApiKeyError()

    def _remember_owner(self, key_id: str, owner_id: int) -> None:
        self._owners[key_id] = owner_id
        self._owners.move_to_end(key_id)
        if len(self._owners) > _OWNERS_CAPACITY:
            self._owners.popitem(last=False)

    def _note_use(self, key_id: str) -> None:
        """Writes the key's last-used time at most once per resolution per worker, after the
        response, so a request never waits for (or fails on) the write."""
        now = time.monotonic()
        if (
            now - self._last_used_written.get(key_id, -1e9)
            < self.settings.last_used_resolution_seconds
        ):
            return
        self._last_used_written[key_id] = now
        if len(self._last_used_written) > _OWNERS_CAPACITY:
            self._last_used_written.clear()
        task = asyncio.create_task(self._write_last_used(key_id, utc_now()))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_last_used(self, key_id: str, used_at: datetime) -> None:
        try:
            async with self.sessionmaker() as session:
                await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == key_id)
                    .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < used_at))
                    .values(last_used_at=used_at)
                )
                await session.commit()
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            # Only logged: the next use after the resolution writes it again.
            log.warning("api_key_last_used_not_written", error=type(error).__name__)

    async def close(self) -> None:
        """Lets pending last-used writes finish (at shutdown)."""
        if self._writes:
            await asyncio.wait(self._writes, timeout=5)
