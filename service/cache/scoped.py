"""Entries that belong to one user, invalidated all at once by bumping that user's version.

A read fetches the entry and the user's current version in one round trip; the entry only
counts if it was written under that version. Writers bump the version *after* their commit and
readers read it *before* their database read, so a stale answer can never be stored under a
current version, on any worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.cache.resilient import Cache

_ABSENT = b"-"  # the version of a user who has not been invalidated since the key expired


@dataclass(frozen=True, slots=True)
class Lookup:
    value: bytes | None  # the cached value, on a hit
    version: bytes | None  # the version to write under after a miss; None: do not write


MISS_UNAVAILABLE = Lookup(value=None, version=None)


def parse(entry: bytes | None, version: bytes | None) -> Lookup:
    version = version or _ABSENT
    if entry is not None:
        entry_version, _, value = entry.partition(b"\n")
        if entry_version == version:
            return Lookup(value=value, version=version)
    return Lookup(value=None, version=version)


class UserScopedCache:
    """``base`` is the key prefix of this kind of entry, e.g. ``glasshouse:auth``."""

    def __init__(self, cache: Cache, *, base: str, ttl_seconds: int) -> None:
        self.cache = cache
        self.ttl_seconds = ttl_seconds
        self._base = base
        # Told each user whose entries were invalidated. Every credential change invalidates
        # the auth cache: open event streams listen here to check theirs again (service/events).
        self.invalidation_listeners: list[Callable[[int], Awaitable[None]]] = []

    def _version_key(self, user_id: int) -> str:
        return f"{self._base}:v:{user_id}"

    def _entry_key(self, user_id: int, key: str) -> str:
        return f"{self._base}:{user_id}:{key}"

    async def read(self, user_id: int, key: str) -> Lookup:
        found = await self.cache.get_many(
            [self._entry_key(user_id, key), self._version_key(user_id)]
        )
        return MISS_UNAVAILABLE if found is None else parse(found[0], found[1])

    async def write(self, user_id: int, key: str, lookup: Lookup, value: bytes) -> None:
        if lookup.version is None:
            return
        entry = lookup.version + b"\n" + value
        await self.cache.set_many({self._entry_key(user_id, key): entry}, self.ttl_seconds)

    async def invalidate(self, user_id: int) -> None:
        # The version outlives every entry written under it, so an expired version can never
        # bring an old entry back to life.
        await self.cache.bump_versions(
            [self._version_key(user_id)],
            ttl_seconds=self.ttl_seconds * 2,
            entries_ttl_seconds=self.ttl_seconds,
        )
        for listener in self.invalidation_listeners:
            await listener(user_id)
