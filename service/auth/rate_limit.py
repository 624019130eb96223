"""Failed-login limits that hold under any concurrency, across workers and replicas.

Every attempt is counted *before* its password is checked, in one atomic step that refuses it
if a limit is already reached; an attempt whose password was right gives its count back. So no
burst of simultaneous guesses gets more than the limit verified.

Three counters, each over ``window_seconds``: one account from one client address (the limit
a guesser meets), one address across accounts (guessing many accounts), and one account from
all addresses together, set far higher (guessing from many addresses). The owner, from an
address of their own, is not locked out by someone else's guesses short of that ceiling.

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


class LoginRateLimiter:
    def __init__(self, cache: Cache, settings: RateLimitSettings) -> None:
        self.cache = cache
        self.settings = settings
        self.local = MemoryStore()  # this worker's own tally

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
        if not self.settings.enabled:
            return None
        keys = self.keys(email, address)
        window = self.settings.window_seconds
        if len(self.local) > LOCAL_MAX_KEYS:
            self.local.purge_expired()
        # This worker's own tally first: it holds even when Redis cannot answer in time.
        refusal = await self.local.reserve(keys, self.limits, window)
        counted_in_redis = False
        if refusal is None:
            counted_in_redis, refusal = await self.cache.reserve(
                keys, self.limits, window, timeout_seconds=self.settings.count_timeout_seconds
            )
            if not counted_in_redis:
                RATE_LIMIT_FALLBACKS.inc()
            elif refusal is not None:
                await self.local.release(keys)
        if refusal is not None:
            index, retry_after = refusal
            RATE_LIMITED.labels(limit=LIMIT_NAMES[index]).inc()
            LOGIN_ATTEMPTS.labels(outcome="rate_limited").inc()
            raise TooManyRequestsError(
                "Too many failed logins; try again later.", retry_after=retry_after
            )
        return Reservation(keys=keys, counted_in_redis=counted_in_redis)

    async def release(self, reservation: Reservation | None) -> None:
        if reservation is None:
            return
        if reservation.counted_in_redis:
            await self.cache.release(reservation.keys)
        await self.local.release(reservation.keys)
