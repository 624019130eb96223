"""The cache never fails a request: every call is bounded by a short timeout, failures open a
circuit breaker that skips Redis for a while, and then one call probes whether it is back.
Degradation costs latency for a few requests per worker, not errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import structlog
from redis.exceptions import RedisError

from service.cache.near import NearCache
from service.cache.store import Store, new_version
from service.observability import cache_events
from service.settings import CacheSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")

_FAILURES = (RedisError, OSError, TimeoutError, ConnectionError)


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class CircuitBreaker:
    def __init__(self, *, failure_threshold: int, open_seconds: float) -> None:
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self.state = BreakerState.closed
        self._failures = 0
        self._retry_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        if self.state is BreakerState.closed:
            return True
        if self.state is BreakerState.open and time.monotonic() >= self._retry_at:
            self.state = BreakerState.half_open
            self._probing = False
        if self.state is BreakerState.half_open and not self._probing:
            self._probing = True  # exactly one call finds out whether Redis is back
            return True
        return False

    def succeeded(self) -> None:
        if self.state is not BreakerState.closed:
            log.warning("cache_recovered")
            cache_events.cache_available(True)
        self.state = BreakerState.closed
        self._failures = 0
        self._probing = False

    def failed(self, error: BaseException) -> None:
        self._failures += 1
        self._probing = False
        if self.state is BreakerState.half_open or self._failures >= self.failure_threshold:
            if self.state is not BreakerState.open:
                # Logged once per opening (at most once per open_seconds): rate-limited.
                log.warning(
                    "cache_unavailable",
                    error=type(error).__name__,
                    retry_in_seconds=self.open_seconds,
                )
                cache_events.cache_available(False)
            self.state = BreakerState.open
            self._retry_at = time.monotonic() + self.open_seconds


@dataclass(frozen=True, slots=True)
class _OwedVersion:
    ttl_seconds: int
    deadline: float  # monotonic time after which no entry it invalidates can still exist


class Cache:
    """Fail-open access to the store. ``None`` from a read means "unavailable": callers go to
    the database.

    Version bumps (``bump_versions``) are what keeps every other worker and pod from serving
    an answer a write replaced, so they never wait for the breaker: each is tried at once, then
    retried in the background until it lands or nothing it would invalidate can still exist.
    Meanwhile this worker reads around the cache.

    ``near``: copies of what was read, in this process, that Redis keeps coherent
    (service/cache/near.py; off unless configured); served only while the breaker is closed."""

    def __init__(
        self, store: Store | None, settings: CacheSettings, near: NearCache | None = None
    ) -> None:
        self.store = store
        self.near = near
        self.settings = settings
        self.breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failures, open_seconds=settings.breaker_open_seconds
        )
        self._owed_versions: dict[str, _OwedVersion] = {}
        self._retrying: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self.store is not None

    async def get_many(self, keys: list[str]) -> list[bytes | None] | None:
        store = self.store
        if store is None or self._owed_versions:
            # A version bump this worker owes is not in Redis yet: its entries may be stale.
            return None
        near = self.near
        if near is None:
            return (await self._call(lambda: store.get_many(keys)))[1]
        if self.breaker.state is BreakerState.closed:
            found = near.get_many(keys)
            if found is not None:
                return found
        since = near.reading()
        done, found = await self._call(lambda: store.get_many(keys))
        if done and found is not None:
            near.keep(keys, found, since)
        return found

    async def set_many(self, items: dict[str, bytes], ttl_seconds: int) -> None:
        store = self.store
        if store is not None:
            await self._write(list(items), lambda: store.set_many(items, ttl_seconds))

    async def bump_versions(
        self, keys: list[str], *, ttl_seconds: int, entries_ttl_seconds: int
    ) -> None:
        """Gives each key a new version, invalidating entries that live at most
        ``entries_ttl_seconds``: tried now whatever the breaker says, once more with a longer
        wait (a busy worker can miss the first), then in the background until it lands.

        Every attempt writes a version never used before: one that timed out may still land
        later, and must not bring back a version another write has already replaced."""
        store = self.store
        if store is None:
            return
        timeout = self.settings.operation_timeout_seconds
        error: Exception | None = None
        try:
            for wait in (timeout, timeout * 3):
                try:
                    async with asyncio.timeout(wait):
                        await store.set_many(dict.fromkeys(keys, new_version()), ttl_seconds)
                except _FAILURES as failure:
                    error = failure
                    continue
                self.breaker.succeeded()
                return
            assert error is not None
            self.breaker.failed(error)
            cache_events.cache_error()
            self._defer(keys, ttl_seconds, entries_ttl_seconds, error)
        finally:
            self._forget_copies(keys)

    def _defer(
        self, keys: list[str], ttl_seconds: int, entries_ttl_seconds: int, error: Exception
    ) -> None:
        cache_events.invalidation_deferred()
        log.warning(
            "cache_invalidation_deferred",
            error=type(error).__name__,
            keys=len(keys),
            retry_for_seconds=entries_ttl_seconds,
        )
        # Entries written before the commit expire by then; those written after hold new data.
        deadline = time.monotonic() + entries_ttl_seconds
        for key in keys:
            self._owed_versions[key] = _OwedVersion(ttl_seconds, deadline)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(
                self._retry_versions(), name="cache-invalidation-retry"
            )

    async def _retry_versions(self) -> None:
        assert self.store is not None
        interval = max(self.settings.operation_timeout_seconds, 0.05)
        while self._owed_versions:
            await asyncio.sleep(interval)
            now = time.monotonic()
            expired = [key for key, owed in self._owed_versions.items() if owed.deadline <= now]
            for key in expired:
                del self._owed_versions[key]
            if expired:
                # Not needed any more: every entry these versions would invalidate has expired.
                log.warning("cache_invalidation_dropped", keys=len(expired))
            owed = dict(self._owed_versions)
            if not owed:
                return
            try:
                async with asyncio.timeout(self.settings.operation_timeout_seconds):
                    await self.store.set_many(
                        dict.fromkeys(owed, new_version()),
                        max(version.ttl_seconds for version in owed.values()),
                    )
            except _FAILURES:
                continue
            for key, version in owed.items():
                if self._owed_versions.get(key) is version:
                    del self._owed_versions[key]
            self._forget_copies(list(owed))
            log.info("cache_invalidation_delivered", keys=len(owed))

    async def reserve(
        self, keys: list[str], limits: list[int], window_seconds: int, *, timeout_seconds: float
    ) -> tuple[bool, tuple[int, int] | None]:
        """(done, refusal): see RedisStore.reserve; done is False when the store was skipped
        or failed. Its own bound: a count that falls back to one worker's tally multiplies
        the limit by the number of workers."""
        store = self.store
        if store is None:
            return False, None
        return await self._call(
            lambda: store.reserve(keys, limits, window_seconds), timeout_seconds=timeout_seconds
        )

    async def release(self, keys: list[str]) -> None:
        store = self.store
        if store is not None:
            await self._call(lambda: store.release(keys))

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> bool:
        """One entry; whether it was stored (a caller that needs it refuses without it)."""
        store = self.store
        if store is None:
            return False
        return await self._write([key], lambda: store.set_many({key: value}, ttl_seconds))

    async def take(self, key: str) -> bytes | None:
        """Reads and removes one entry in one step; None if absent or the store is away."""
        store = self.store
        if store is None:
            return None
        return (await self._call(lambda: store.take(key)))[1]

    async def delete(self, key: str) -> None:
        store = self.store
        if store is not None:
            await self._write([key], lambda: store.delete(key))

    async def ping(self) -> None:
        """For health checks: the real state of the store, breaker or not."""
        if self.store is None:
            return
        async with asyncio.timeout(self.settings.operation_timeout_seconds * 5):
            await self.store.ping()

    def start(self) -> None:
        if self.near is not None:
            self.near.start()

    async def close(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
        if self.near is not None:
            await self.near.close()
        if self.store is not None:
            await self.store.close()

    async def _write(self, keys: list[str], operation: Callable[[], Awaitable[None]]) -> bool:
        """A write through the breaker; whether it was done."""
        try:
            done, _ = await self._call(operation)
        finally:
            self._forget_copies(keys)
        return done

    def _forget_copies(self, keys: list[str]) -> None:
        """After this worker wrote keys, succeeded or not: its own next read must not be
        answered from a copy older than the write (Redis's message about it comes later)."""
        if self.near is not None:
            self.near.forget(keys)

    async def _call(
        self, operation: Callable[[], Awaitable[T]], *, timeout_seconds: float | None = None
    ) -> tuple[bool, T | None]:
        """(done, result): done is False when the store was skipped or failed."""
        if not self.breaker.allow():
            return False, None
        try:
            async with asyncio.timeout(timeout_seconds or self.settings.operation_timeout_seconds):
                result = await operation()
        except _FAILURES as error:
            self.breaker.failed(error)
            cache_events.cache_error()
            return False, None
        self.breaker.succeeded()
        return True, result
