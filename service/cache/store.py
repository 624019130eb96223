"""Key-value stores behind the cache and the login rate limit: fastapi-cache2 backends (its
Redis backend, constructed as its docs show; an in-memory one of ours through its public
``Backend`` interface), extended with the few operations this service needs in one round trip
(read several keys, count against limits, bump a version). Keys, versions, ETags and
invalidation are ours (service/cache/scoped.py, responses.py), not the library's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from fastapi_cache.backends.redis import RedisBackend
from fastapi_cache.types import Backend
from redis.asyncio import Redis

# Wraps one round trip to Redis: (span name, number of commands) -> a context manager.
# Tracing sets it (service/observability/tracing.py); the store only says where round trips are.
RoundTripObserver = Callable[[str, int], AbstractContextManager[object]]
_UNOBSERVED = nullcontext()


def _unobserved(_: str, __: int) -> AbstractContextManager[object]:
    return _UNOBSERVED


# Checked and counted in one script, so no number of concurrent attempts can all pass the
# check before any of them is counted. Returns {0, 0}, or {the exhausted counter (from 1),
# its seconds left}.
_RESERVE = """
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[i + 1]) then
    return {i, redis.call('TTL', key)}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[1], 'NX')
end
return {0, 0}
"""
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end
"""


class RedisStore(RedisBackend):
    """fastapi-cache2's Redis backend on a client with short timeouts and no retries: a slow
    Redis must cost a bounded wait, not a retry loop."""

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self.client = client
        self.round_trip: RoundTripObserver = _unobserved
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        with self.round_trip("MGET", 1):
            values = await self.client.mget(keys)
        return [value.encode() if isinstance(value, str) else value for value in values]

    async def set_many(self, items: dict[str, bytes], ttl_seconds: int) -> None:
        with self.round_trip("SET", len(items)):
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, ex=ttl_seconds)
                await pipe.execute()

    async def take(self, key: str) -> bytes | None:
        """The value, removed in the same step: whoever takes it is the only one."""
        with self.round_trip("GETDEL", 1):
            value = await self.client.getdel(key)
        return value.encode() if isinstance(value, str) else value

    async def delete(self, key: str) -> None:
        with self.round_trip("DEL", 1):
            await self.client.delete(key)

    async def reserve(
        self, keys: list[str], limits: list[int], window_seconds: int
    ) -> tuple[int, int] | None:
        """Counts one attempt against every counter, all or none, in one atomic step."""
        with self.round_trip("EVALSHA reserve", 1):
            index, ttl = await self._reserve(keys=keys, args=[window_seconds, *limits])
        return None if index == 0 else (int(index) - 1, max(int(ttl), 1))

    async def release(self, keys: list[str]) -> None:
        with self.round_trip("EVALSHA release", 1):
            await self._release(keys=keys)

    async def ping(self) -> None:
        with self.round_trip("PING", 1):
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class _Entry:
    value: bytes
    expires_at: float


class MemoryStore(Backend):
    """An in-memory fastapi-cache2 backend with a store per instance (the library's own
    InMemoryBackend shares one store among all instances in the process) and sub-second
    expiry. Only correct in one process."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= time.monotonic():
            del self._entries[key]
            return None
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def purge_expired(self) -> None:
        now = time.monotonic()
        self._entries = {
            key: entry for key, entry in self._entries.items() if entry.expires_at > now
        }

    async def get_with_ttl(self, key: str) -> tuple[int, bytes | None]:
        entry = self._live(key)
        if entry is None:
            return 0, None
        return max(int(entry.expires_at - time.monotonic()), 0), entry.value

    async def clear(self, namespace: str | None = None, key: str | None = None) -> int:
        if key is not None:
            return 1 if self._entries.pop(key, None) is not None else 0
        doomed = [name for name in self._entries if namespace is None or namespace in name]
        for name in doomed:
            del self._entries[name]
        return len(doomed)

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return entry.value if entry else None

    async def set(self, key: str, value: bytes, expire: int | None = None) -> None:
        self._entries[key] = _Entry(value, time.monotonic() + (expire or 3600))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set_many(self, items: dict[str, bytes], ttl_seconds: int) -> None:
        for key, value in items.items():
            await self.set(key, value, ttl_seconds)

    async def take(self, key: str) -> bytes | None:
        entry = self._live(key)
        self._entries.pop(key, None)
        return entry.value if entry else None

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def reserve(
        self, keys: list[str], limits: list[int], window_seconds: int
    ) -> tuple[int, int] | None:
        """As RedisStore.reserve; atomic because nothing here awaits."""
        now = time.monotonic()
        for index, (key, limit) in enumerate(zip(keys, limits, strict=True)):
            entry = self._live(key)
            if entry is not None and int(entry.value) >= limit:
                return index, max(int(entry.expires_at - now), 1)
        for key in keys:
            entry = self._live(key) or _Entry(b"0", now + window_seconds)
            entry.value = str(int(entry.value) + 1).encode()
            self._entries[key] = entry
        return None

    async def release(self, keys: list[str]) -> None:
        for key in keys:
            entry = self._live(key)
            if entry is not None:
                count = int(entry.value) - 1
                if count > 0:
                    entry.value = str(count).encode()
                else:
                    del self._entries[key]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()


Store = RedisStore | MemoryStore


def new_version() -> bytes:
    """A fresh version token: any value differing from the last one invalidates."""
    return uuid.uuid4().hex[:16].encode()
