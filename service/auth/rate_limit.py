"""Failed logins are counted per account and per client address in Redis, so the limit holds
across workers and replicas. When Redis is unavailable the limit fails open: logins keep
working (argon2's cost still slows guessing) and the degradation shows in metrics and logs."""

from __future__ import annotations

import hashlib

from service.cache.resilient import Cache
from service.errors import TooManyRequestsError
from service.observability.metrics import LOGIN_ATTEMPTS, RATE_LIMITED
from service.settings import RateLimitSettings


class LoginRateLimiter:
    def __init__(self, cache: Cache, settings: RateLimitSettings) -> None:
        self.cache = cache
        self.settings = settings

    def _keys(self, email: str, address: str) -> tuple[str, str]:
        prefix = self.cache.settings.key_prefix
        # Hashed: the store needs no email addresses in its key space.
        account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return f"{prefix}:login-fail:account:{account}", f"{prefix}:login-fail:addr:{address}"

    async def check(self, email: str, address: str) -> None:
        """Raises 429 with Retry-After while either limit is exhausted."""
        if not self.settings.enabled:
            return
        account_key, address_key = self._keys(email, address)
        counts = await self.cache.window([account_key, address_key])
        if counts is None:
            return
        (account_failures, account_ttl), (address_failures, address_ttl) = counts
        limits = (
            (
                "login_account",
                account_failures,
                self.settings.max_failures_per_account,
                account_ttl,
            ),
            (
                "login_address",
                address_failures,
                self.settings.max_failures_per_address,
                address_ttl,
            ),
        )
        for name, failures, limit, retry_after in limits:
            if failures >= limit:
                RATE_LIMITED.labels(limit=name).inc()
                LOGIN_ATTEMPTS.labels(outcome="rate_limited").inc()
                raise TooManyRequestsError(
                    "Too many failed logins; try again later.", retry_after=max(retry_after, 1)
                )

    async def record_failure(self, email: str, address: str) -> None:
        if not self.settings.enabled:
            return
        for key in self._keys(email, address):
            await self.cache.hit_window(key, self.settings.window_seconds)

    async def record_success(self, email: str, address: str) -> None:
        if self.settings.enabled:
            await self.cache.delete(self._keys(email, address)[0])
