"""Key-value stores behind the cache and the login rate limit: fastapi-cache2's Redis and
in-memory backends, extended with the few operations this service needs in one round trip
(read several keys, count within a window, bump a version)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from fastapi_cache.backends.inmemory import InMemoryBackend
from fastapi_cache.backends.redis import RedisBackend
from redis.asyncio import Redis

# Wraps one round trip to Redis: (span name, number of commands) -> a context manager.
# Tracing sets it (service/observability/tracing.py); the store only says where round trips are.
RoundTripObserver = Callable[[str, int], AbstractContextManager[object]]
_UNOBSERVED = nullcontext()


def _unobserved(_: str, __: int) -> AbstractContextManager[object]:
    return _UNOBSERVED


class RedisStore(RedisBackend):
    """fastapi-cache2's Redis backend on a client with short timeouts and no retries: a slow
    Redis must cost a bounded wait, not a retry loop."""

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self.client = client
        self.round_trip: RoundTripObserver = _unobserved

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

    async def delete(self, key: str) -> None:
        with self.round_trip("DEL", 1):
            await self.client.delete(key)

    async def hit_window(self, key: str, window_seconds: int) -> tuple[int, int]:
        """Counts one event in a fixed window; returns (events so far, seconds left)."""
        with self.round_trip("MULTI INCR EXPIRE TTL EXEC", 3):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, window_seconds, nx=True)
                pipe.ttl(key)
                count, _, ttl = await pipe.execute()
        return int(count), max(int(ttl), 1)

    async def window(self, keys: list[str]) -> list[tuple[int, int]]:
        """(events, seconds left) of each counter, without counting."""
        with self.round_trip("GET TTL", 2 * len(keys)):
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.ttl(key)
                raw = await pipe.execute()
        return [(int(raw[i] or 0), max(int(raw[i + 1]), 0)) for i in range(0, len(raw), 2)]

    async def ping(self) -> None:
        with self.round_trip("PING", 1):
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class _Entry:
    value: bytes
    expires_at: float


class MemoryStore(InMemoryBackend):
    """fastapi-cache2's in-memory backend with a store per instance (the library's is shared
    by every instance in the process) and sub-second expiry. Only correct in one process."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= time.monotonic():
            del self._entries[key]
            return None
        return entry

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

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def hit_window(self, key: str, window_seconds: int) -> tuple[int, int]:
        entry = self._live(key)
        if entry is None:
            entry = _Entry(b"0", time.monotonic() + window_seconds)
            self._entries[key] = entry
        entry.value = str(int(entry.value) + 1).encode()
        return int(entry.value), max(int(entry.expires_at - time.monotonic()), 1)

    async def window(self, keys: list[str]) -> list[tuple[int, int]]:
        found = []
        for key in keys:
            entry = self._live(key)
            if entry is None:
                found.append((0, 0))
            else:
                found.append((int(entry.value), max(int(entry.expires_at - time.monotonic()), 1)))
        return found

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()


Store = RedisStore | MemoryStore


def new_version() -> bytes:
    """A fresh version token: any value differing from the last one invalidates."""
    return uuid.uuid4().hex[:16].encode()
