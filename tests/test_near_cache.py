"""The near cache (service/cache/near.py): copies of cache entries in the worker's memory that
Redis keeps coherent. Against the shared Redis under a key prefix of each test's own, and
against a throwaway redis-server where a test flushes or breaks it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cache.near import NearCache
from service.cache.resilient import Cache
from service.cache.store import RedisStore
from service.settings import CacheSettings
from tests.conftest import REDIS_URL, Backend, make_settings, running_app
from tests.factories import API, make_account, make_item
from tests.faults import ProxyMode, running_proxy, running_redis
from tests.processes import Gunicorn, migrated_postgres_database, running_gunicorn

# Copies are an opt-in (docs/caching.md says what they can leave stale, and for how long).
OPT_IN = CacheSettings(near_cache=True)


@pytest.fixture
def prefix() -> str:
    return f"gh-near-{uuid.uuid4().hex}:"


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def live_near_cache(url: str, prefix: str, **options: float) -> AsyncIterator[NearCache]:
    near = NearCache(
        url,
        prefixes=[prefix],
        max_entries=int(options.get("max_entries", 100)),
        max_age_seconds=options.get("max_age_seconds", 60.0),
        heartbeat_seconds=options.get("heartbeat_seconds", 0.2),
        connect_timeout_seconds=0.5,
    )
    near.start()
    try:
        await wait_until(lambda: near.live)
        yield near
    finally:
        await near.close()


class CountedStore(RedisStore):
    """The real store, counting its round trips to Redis."""

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self.round_trips = 0
        self.round_trip = self._count

    def _count(self, _: str, __: int) -> AbstractContextManager[object]:
        self.round_trips += 1
        return nullcontext()


@asynccontextmanager
async def cache_with_copies(
    url: str, prefix: str, **options: float
) -> AsyncIterator[tuple[Cache, CountedStore, NearCache, Redis]]:
    """A cache with a near cache, and a second client standing for another worker."""
    store = CountedStore(Redis.from_url(url))
    other = Redis.from_url(url)
    async with live_near_cache(url, prefix, **options) as near:
        try:
            yield Cache(store, CacheSettings(), near=near), store, near, other
        finally:
            keys = [key async for key in other.scan_iter(match=f"{prefix}*")]
            if keys:
                await other.delete(*keys)
            await other.aclose()
            await store.close()


async def written_elsewhere(other: Redis, *commands: tuple[str, ...]) -> None:
    """Another worker's writes. The PING after them makes sure Redis has sent its invalidation
    messages (it sends them before it goes on to the next command's turn)."""
    for command in commands:
        await other.execute_command(*command)
    await other.ping()


async def test_a_repeated_read_is_answered_from_memory(prefix: str) -> None:
    keys = [f"{prefix}entry", f"{prefix}version"]
    async with cache_with_copies(REDIS_URL, prefix) as (cache, store, near, other):
        await other.set(keys[0], b"value")
        assert await cache.get_many(keys) == [b"value", None]
        assert store.round_trips == 1
        for _ in range(3):
            assert await cache.get_many(keys) == [b"value", None]
        assert (store.round_trips, near.hits) == (1, 3)


async def test_a_write_anywhere_is_seen_by_the_next_read(prefix: str) -> None:
    entry, version = f"{prefix}entry", f"{prefix}version"
    async with cache_with_copies(REDIS_URL, prefix) as (cache, store, _near, other):
        await other.set(entry, b"old")
        for _ in range(2):
            assert await cache.get_many([entry, version]) == [b"old", None]
        await written_elsewhere(other, ("SET", entry, "new"))
        assert await cache.get_many([entry, version]) == [b"new", None]
        # A key that did not exist was copied as absent; its creation is reported too.
        await written_elsewhere(other, ("SET", version, "v2"))
        assert await cache.get_many([entry, version]) == [b"new", b"v2"]
        await written_elsewhere(other, ("DEL", entry))
        assert await cache.get_many([entry, version]) == [None, b"v2"]
        assert store.round_trips == 4


async def test_expiry_in_redis_drops_the_copy(prefix: str) -> None:
    key = f"{prefix}short-lived"
    async with cache_with_copies(REDIS_URL, prefix) as (cache, _store, near, other):
        await other.set(key, b"soon gone", px=100)
        assert await cache.get_many([key]) == [b"soon gone"]
        assert near.get_many([key]) == [b"soon gone"]
        await wait_until(lambda: near.get_many([key]) is None)
        assert await cache.get_many([key]) == [None]


async def test_this_workers_own_writes_drop_its_copies_at_once(prefix: str) -> None:
    key = f"{prefix}entry"
    async with cache_with_copies(REDIS_URL, prefix) as (cache, store, near, _other):
        await cache.set_many({key: b"first"}, 60)
        assert await cache.get_many([key]) == [b"first"]
        await cache.bump_versions([key], ttl_seconds=60, entries_ttl_seconds=30)
        # No waiting for Redis's message: the write itself dropped the copy.
        assert near.get_many([key]) is None
        assert await cache.get_many([key]) not in ([b"first"], [None], None)
        await cache.delete(key)
        assert await cache.get_many([key]) == [None]
        assert store.round_trips == 3 + 3  # three writes, three reads


async def test_a_read_that_a_write_overtook_is_not_kept(prefix: str) -> None:
    key = f"{prefix}entry"
    async with cache_with_copies(REDIS_URL, prefix) as (_cache, _store, near, other):
        await other.set(key, b"old")
        since = near.reading()
        answered = await RedisStore(other).get_many([key])  # Redis answers "old"...
        await written_elsewhere(other, ("SET", key, "new"))  # ...and changes it before we keep it
        near.keep([key], answered, since)
        assert near.get_many([key]) is None
        # Without a change in between, the same read is kept.
        since = near.reading()
        near.keep([key], await RedisStore(other).get_many([key]), since)
        assert near.get_many([key]) == [b"new"]


async def test_only_tracked_keys_are_kept_and_copies_are_bounded(prefix: str) -> None:
    async with live_near_cache(REDIS_URL, prefix, max_entries=2, max_age_seconds=0.3) as near:
        near.keep(["elsewhere:key"], [b"x"], near.reading())
        assert near.get_many(["elsewhere:key"]) is None  # Redis would not report on it
        for name in ("a", "b", "c"):
            near.keep([prefix + name], [name.encode()], near.reading())
        assert near.entries == 2
        assert near.get_many([prefix + "a"]) is None  # the oldest went first
        assert near.get_many([prefix + "c"]) == [b"c"]
        await asyncio.sleep(0.35)
        assert near.get_many([prefix + "c"]) is None  # older than max_age_seconds


async def test_a_flush_of_the_database_drops_everything(tmp_path: Path, prefix: str) -> None:
    with running_redis(tmp_path) as redis_server:
        async with cache_with_copies(redis_server.url, prefix) as (cache, _store, near, other):
            await other.set(f"{prefix}a", b"1")
            await cache.get_many([f"{prefix}a", f"{prefix}b"])
            assert near.entries == 2
            await written_elsewhere(other, ("FLUSHALL",))
            assert near.get_many([f"{prefix}a", f"{prefix}b"]) is None
            assert near.entries == 0


async def test_copies_are_dropped_when_redis_goes_away_and_used_again_after(
    tmp_path: Path, prefix: str
) -> None:
    key = f"{prefix}entry"
    with running_redis(tmp_path) as redis_server:
        async with cache_with_copies(redis_server.url, prefix) as (cache, store, near, other):
            await other.set(key, b"before")
            await cache.get_many([key])
            assert near.get_many([key]) == [b"before"]
            redis_server.stop()
            await wait_until(lambda: not near.live, seconds=2)
            assert near.get_many([key]) is None
            assert (near.entries, near.resets) == (0, 1)
            # Back, empty (it keeps nothing on disk): the copy must not come back with it.
            redis_server.start()
            await wait_until(lambda: near.live, seconds=5)
            for client in (store.client, other):  # their connections died with the server
                await client.connection_pool.disconnect()
            assert await cache.get_many([key]) == [None]
            assert near.get_many([key]) == [None]


async def test_a_silent_redis_stops_the_copies_within_two_heartbeats(
    tmp_path: Path, prefix: str
) -> None:
    key = f"{prefix}entry"
    with running_redis(tmp_path) as redis_server, running_proxy(redis_server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with live_near_cache(url, prefix, heartbeat_seconds=0.2) as near:
            near.keep([key], [b"value"], near.reading())
            assert near.get_many([key]) == [b"value"]
            proxy.set_mode(ProxyMode.stall)  # the connection stays open; nothing comes back
            stalled = time.monotonic()
            await wait_until(lambda: not near.live, seconds=2)
            assert time.monotonic() - stalled <= 2 * 0.2 + 0.3
            assert near.get_many([key]) is None
            proxy.set_mode(ProxyMode.forward)
            await wait_until(lambda: near.live, seconds=5)
            assert near.get_many([key]) is None  # nothing survived the silence


async def test_a_redis_that_refuses_tracking_is_asked_again_rarely(tmp_path: Path) -> None:
    """CLIENT disabled (as an ACL or an older server would): no copies, reads go to Redis, and
    the worker does not reconnect every heartbeat."""
    with running_redis(tmp_path, "--rename-command", "CLIENT", "") as redis_server:
        counter = Redis.from_url(redis_server.url)
        near = NearCache(
            redis_server.url,
            prefixes=["refused:"],
            max_entries=10,
            max_age_seconds=60,
            heartbeat_seconds=0.05,
            connect_timeout_seconds=0.5,
        )
        try:
            before = (await counter.info("stats"))["total_connections_received"]
            near.start()
            await asyncio.sleep(0.6)  # a dozen heartbeats
            assert not near.live
            assert near.get_many(["refused:key"]) is None
            after = (await counter.info("stats"))["total_connections_received"]
            assert after - before == 1  # one attempt, refused; the next is a minute away
        finally:
            await near.close()
            await counter.aclose()


async def test_tls_urls_run_without_copies() -> None:
    from service.cache.setup import build_caches

    settings = make_settings("sqlite+aiosqlite://", "rediss://127.0.0.1:6380/0", cache=OPT_IN)
    assert build_caches(settings).store.near is None


async def test_copies_are_off_unless_configured() -> None:
    from service.cache.setup import build_caches

    assert build_caches(make_settings("sqlite+aiosqlite://", REDIS_URL)).store.near is None
    assert build_caches(make_settings("sqlite+aiosqlite://", REDIS_URL, cache=OPT_IN)).store.near


def item_title(response_json: object) -> str:
    assert isinstance(response_json, dict)
    return str(response_json["title"])


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_write_on_one_worker_is_read_on_another(
    backend: Backend, empty_database: AsyncEngine
) -> None:
    """Two apps on one database and one Redis prefix, as two workers: an item updated through
    one is read fresh through the other, whose near cache held the old answer."""
    settings = make_settings(backend.database_url, backend.redis_url, cache=OPT_IN)
    async with running_app(settings) as first, running_app(settings) as second:
        near = second.state["caches"].store.near
        assert near is not None
        await wait_until(lambda: near.live)
        account = await make_account(first.client)
        item = await make_item(first.client, account, title="before")
        path = f"{API}/items/{item['id']}"
        # The first reads fill the caches; Redis's messages about those fills may still come
        # in during the next read, whose answer is then not kept. Copies serve soon after.
        for _ in range(5):
            response = await second.client.get(path, headers=account.headers)
            assert item_title(response.json()) == "before"
        assert near.hits >= 2
        hits = near.hits
        updated = await first.client.patch(path, json={"title": "after"}, headers=account.headers)
        assert updated.status_code == 200, updated.text
        for _ in range(5):
            response = await second.client.get(path, headers=account.headers)
            assert item_title(response.json()) == "after"
        assert near.hits > hits  # copies serve again after the change

        # A signed-out session is refused by the other worker too, at once.
        signed_out = await first.client.post(f"{API}/auth/logout", headers=account.headers)
        assert signed_out.status_code == 204, signed_out.text
        assert (await second.client.get(path, headers=account.headers)).status_code == 401

        detail = await second.client.get("/health")
        assert detail.json()["near_cache"] == "live"


def test_gunicorn_workers_serve_copies_and_every_read_sees_the_last_write(tmp_path: Path) -> None:
    """The production shape: two workers, each with its own copies. After each update,
    whichever worker it went through, every read through either worker has the new title."""
    with (
        migrated_postgres_database() as database_url,
        running_gunicorn(
            database_url,
            tmp_path,
            REDIS_URL=REDIS_URL,
            GLASSHOUSE_CACHE__NEAR_CACHE="true",
            GLASSHOUSE_CACHE__KEY_PREFIX=f"gh-near-e2e-{uuid.uuid4().hex[:12]}",
        ) as server,
    ):
        headers = server.new_account_headers()
        items = f"{server.url}/api/v1/items"
        created = httpx.post(items, json={"title": "version 0"}, headers=headers)
        assert created.status_code == 201, created.text
        item = f"{items}/{created.json()['id']}"
        for version in range(1, 4):
            # A new connection per request: the kernel spreads them over both workers.
            titles = {httpx.get(item, headers=headers).json()["title"] for _ in range(30)}
            assert titles == {f"version {version - 1}"}
            updated = httpx.patch(item, json={"title": f"version {version}"}, headers=headers)
            assert updated.status_code == 200, updated.text
        titles = {httpx.get(item, headers=headers).json()["title"] for _ in range(30)}
        assert titles == {"version 3"}

        deadline = time.monotonic() + 5
        while (hits := near_hits(server)) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert hits > 0
        health = httpx.get(f"{server.url}/health").json()
        assert health["near_cache"] == "live"


def near_hits(server: Gunicorn) -> float:
    for line in httpx.get(server.metrics_url).text.splitlines():
        if line.startswith("glasshouse_cache_near_hits_total "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_loss_the_heartbeat_finds_is_followed_by_a_new_connection(
    tmp_path: Path, prefix: str
) -> None:
    """The heartbeat, not the socket's reader, may be first to find the connection closed:
    the worker must connect again all the same (it once stopped for good, without copies
    until the process ended)."""
    with running_redis(tmp_path) as redis_server:
        async with live_near_cache(redis_server.url, prefix, heartbeat_seconds=0.05) as near:
            assert near._socket is not None
            # Only the heartbeat reads the socket from now on.
            asyncio.get_running_loop().remove_reader(near._socket.fileno())
            killer = Redis.from_url(redis_server.url)
            assert await killer.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
            await killer.aclose()
            await wait_until(lambda: near.resets == 1, seconds=2)
            await wait_until(lambda: near.live, seconds=2)
