"""Failed-login limits that hold under any concurrency, across workers and replicas.

Every attempt is counted *before* its password is checked, in one atomic step that refuses it
if a limit is already reached; an attempt whose password was right gives its count back. So no
burst of simultaneous guesses gets more than the limit verified.

Three counters, each over ``window_seconds``: one account from one client address (the limit
a guesser meets), one address across accounts (guessing many accounts), and one account from
all addresses together, set far higher (guessing from many addresses). The owner, from an
address of their own, is not locked out by someone else's guesses short of that ceiling.

API keys have a limit of their own (ApiKeyFailureLimiter), per address only.

The counters live in Redis. Each worker also keeps a tally of its own attempts, checked first:
no worker goes past a limit on its own, even while Redis is unavailable or too slow to answer,
so the limits never fail open.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from service.auth.metrics import LOGIN_ATTEMPTS, RATE_LIMIT_FALLBACKS, RATE_LIMITED
from service.cache.resilient import Cache
from service.cache.store import MemoryStore
from service.errors import TooManyRequestsError
from service.settings import RateLimitSettings

# Metric labels of the counters, in the order of LoginRateLimiter.keys().
LIMIT_NAMES = ("login_client", "login_address", "login_account")
# Above this, the worker's own tally drops expired counters before counting more.
LOCAL_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Reservation:
    """One counted attempt; ``release`` gives it back when the password was right."""

    keys: list[str]
    counted_in_redis: bool


class AttemptLimiter:
    """Counts attempts against limits: this worker's own tally first, then Redis, in one atomic
    step that refuses the attempt (429) if a limit is already reached."""

    # Metric labels of the counters, in the order of the keys given to _reserve.
    limit_names: tuple[str, ...] = ()
    refusal = "Too many attempts; try again later."

    def __init__(self, cache: Cache, settings: RateLimitSettings) -> None:
        self.cache = cache
        self.settings = settings
        self.local = MemoryStore()  # this worker's own tally

    async def _reserve(self, keys: list[str], limits: list[int]) -> Reservation | None:
        if not self.settings.enabled:
            return None
        window = self.settings.window_seconds
        if len(self.local) > LOCAL_MAX_KEYS:
            self.local.purge_expired()
        # This worker's own tally first: it holds even when Redis cannot answer in time.
        refusal = await self.local.reserve(keys, limits, window)
        counted_in_redis = False
        if refusal is None:
            counted_in_redis, refusal = await self.cache.reserve(
                keys, limits, window, timeout_seconds=self.settings.count_timeout_seconds
            )
            if not counted_in_redis:
                RATE_LIMIT_FALLBACKS.inc()
            elif refusal is not None:
                await self.local.release(keys)
        if refusal is not None:
            index, retry_after = refusal
            RATE_LIMITED.labels(limit=self.limit_names[index]).inc()
            self._refused()
            raise TooManyRequestsError(self.refusal, retry_after=retry_after)
        return Reservation(keys=keys, counted_in_redis=counted_in_redis)

    def _refused(self) -> None:
        """Hook for a limiter's own metrics."""

    async def release(self, reservation: Reservation | None) -> None:
        if reservation is None:
            return
        if reservation.counted_in_redis:
            await self.cache.release(reservation.keys)
        await self.local.release(reservation.keys)


class LoginRateLimiter(AttemptLimiter):
    limit_names = LIMIT_NAMES
    refusal = "Too many failed logins; try again later."

    def keys(self, email: str, address: str) -> list[str]:
        prefix = f"{self.cache.settings.key_prefix}:login-fail"
        # Hashed: the store needs no email addresses in its key space.
        account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return [
            f"{prefix}:client:{account}:{address}",
            f"{prefix}:addr:{address}",
            f"{prefix}:account:{account}",
        ]

    @property
    def limits(self) -> list[int]:
        return [
            self.settings.max_failures_per_client,
            self.settings.max_failures_per_address,
            self.settings.max_failures_per_account,
        ]

    async def reserve(self, email: str, address: str) -> Reservation | None:
        """Counts the attempt, or raises 429 with Retry-After while any limit is reached.
        ``address`` must be a validated client address (it becomes part of a key)."""
        return await self._reserve(self.keys(email, address), self.limits)

    def _refused(self) -> None:
        LOGIN_ATTEMPTS.labels(outcome="rate_limited").inc()


class ApiKeyFailureLimiter(AttemptLimiter):
    """Failed API-key checks, per client address only: counting per key would let anyone who
    knows a key's id lock it out."""

    limit_names = ("api_key_address",)
    refusal = "Too many failed API-key checks; try again later."

    def __init__(self, cache: Cache, settings: RateLimitSettings, max_failures: int) -> None:
        super().__init__(cache, settings)
        self.max_failures = max_failures

    async def reserve(self, address: str) -> Reservation | None:
        key = f"{self.cache.settings.key_prefix}:api-key-fail:addr:{address}"
        return await self._reserve([key], [self.max_failures])
