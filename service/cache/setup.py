"""Which store backs the cache: Redis when configured; in one process without Redis, memory;
with several processes and no Redis, nothing (an in-process cache could not be invalidated
across workers, so it would serve stale data)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.cache.declared import AnswerCache, register_answer_backend
from service.cache.near import NearCache, NearCacheUnsupportedError
from service.cache.resilient import Cache
from service.cache.scoped import UserScopedCache
from service.cache.store import MemoryStore, RedisStore, Store
from service.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Caches:
    store: Cache  # also backs the login rate limit
    auth: UserScopedCache  # login-session checks
    answers: AnswerCache  # the answers of routes declared @cached

    def start(self) -> None:
        self.store.start()

    async def invalidate_user(self, user_id: int) -> None:
        """Every entry scoped to the user: for a deleted account, whose id must not hand its
        cached answers to anyone who later holds that id."""
        await self.auth.invalidate(user_id)
        await self.answers.invalidate_user(user_id)

    async def close(self) -> None:
        await self.store.close()


def create_redis_client(url: str, settings: Settings) -> Redis:
    return Redis.from_url(
        url,
        # No socket timeout of redis-py's own: every call is already bounded by Cache's
        # asyncio.timeout (operation_timeout_seconds), and redis-py drops a connection whose
        # command was cancelled half-way. Its own timeout wrapped each send in asyncio.wait_for,
        # a new task per command.
        socket_timeout=None,
        socket_connect_timeout=settings.cache.connect_timeout_seconds,
        # Retrying would multiply the wait on a sick Redis; the breaker decides instead.
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def _store(settings: Settings) -> Store | None:
    if settings.redis_url:
        return RedisStore(create_redis_client(settings.redis_url, settings))
    if settings.worker_processes == 1:
        return MemoryStore()
    log.warning(
        "cache_disabled",
        reason="no REDIS_URL and several worker processes: an in-process cache would go stale",
        workers=settings.worker_processes,
    )
    return None


def _near_cache(settings: Settings, prefixes: list[str]) -> NearCache | None:
    cache = settings.cache
    if not (settings.redis_url and cache.enabled and cache.near_cache):
        return None
    try:
        return NearCache(
            settings.redis_url,
            prefixes=prefixes,
            max_entries=cache.near_cache_max_entries,
            max_age_seconds=cache.near_cache_max_age_seconds,
            heartbeat_seconds=cache.near_cache_heartbeat_seconds,
            connect_timeout_seconds=cache.connect_timeout_seconds,
        )
    except NearCacheUnsupportedError as error:
        log.warning("near_cache_disabled", reason=str(error))
        return None


def build_caches(settings: Settings) -> Caches:
    """Call ``start()`` inside the event loop, ``close()`` at shutdown."""
    register_answer_backend()
    prefix = settings.cache.key_prefix
    auth_base, answers_base = f"{prefix}:auth", f"{prefix}:answers"
    near = _near_cache(settings, [f"{auth_base}:", f"{answers_base}:"])
    store = Cache(_store(settings), settings.cache, near=near)
    # Disabling the response cache keeps the store for rate limiting.
    response_store = store if settings.cache.enabled else Cache(None, settings.cache)
    return Caches(
        store=store,
        auth=UserScopedCache(
            response_store, base=auth_base, ttl_seconds=settings.cache.auth_ttl_seconds
        ),
        answers=AnswerCache(response_store, prefix=prefix, ttl_seconds=settings.cache.ttl_seconds),
    )
