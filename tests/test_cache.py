"""Item reads are cached per user, invalidated by every write, revalidated with content ETags.
On PostgreSQL the cache is the real Redis; on SQLite it is the in-process store."""

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cache.declared import CacheNamespace, cached
from service.cache.store import MemoryStore
from service.settings import CacheSettings
from service.users.models import Role
from tests.conftest import Backend, RunningApp, SetRole, make_settings, running_app
from tests.factories import API, Account, make_account, make_item


def cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("glasshouse_cache_requests_total", {"result": result}) or 0.0


class CacheCounter:
    def __init__(self) -> None:
        self.start = {result: cache_count(result) for result in ("hit", "miss", "error")}

    def delta(self, result: str) -> float:
        return cache_count(result) - self.start[result]


async def get_json(client: httpx.AsyncClient, path: str, account: Account) -> object:
    response = await client.get(f"{API}{path}", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_second_read_is_a_hit_with_the_same_answer(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    counter = CacheCounter()
    first = await client.get(f"{API}/items/{item['id']}", headers=account.headers)
    second = await client.get(f"{API}/items/{item['id']}", headers=account.headers)
    assert (counter.delta("miss"), counter.delta("hit")) == (1, 1)
    assert first.json() == second.json() == item
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    assert second.headers["content-type"] == "application/json"

    listing = [await client.get(f"{API}/items?status=todo", headers=account.headers) for _ in "ab"]
    assert counter.delta("hit") == 2
    assert listing[0].json() == listing[1].json()


async def test_query_parameters_are_part_of_the_key(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    await make_item(client, account, title="alpha", priority=1)
    await make_item(client, account, title="beta", priority=5)
    for _ in range(2):  # the second round is served from the cache
        by_priority = await get_json(client, "/items?priority=1", account)
        by_title = await get_json(client, "/items?q=beta", account)
        everything = await get_json(client, "/items?sort=title", account)
        page = await get_json(client, "/items?sort=title&limit=1&offset=1", account)
        assert [i["title"] for i in by_priority["items"]] == ["alpha"]  # type: ignore[index]
        assert [i["title"] for i in by_title["items"]] == ["beta"]  # type: ignore[index]
        assert [i["title"] for i in everything["items"]] == ["alpha", "beta"]  # type: ignore[index]
        assert [i["title"] for i in page["items"]] == ["beta"]  # type: ignore[index]


async def test_every_write_invalidates(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account, title="before")
    path = f"/items/{item['id']}"
    assert (await get_json(client, path, account))["title"] == "before"  # type: ignore[index]
    assert (await get_json(client, "/items", account))["total"] == 1  # type: ignore[index]

    await make_item(client, account, title="second")
    assert (await get_json(client, "/items", account))["total"] == 2  # type: ignore[index]

    await client.patch(f"{API}{path}", json={"title": "after"}, headers=account.headers)
    assert (await get_json(client, path, account))["title"] == "after"  # type: ignore[index]
    titles = {i["title"] for i in (await get_json(client, "/items", account))["items"]}  # type: ignore[index]
    assert titles == {"after", "second"}

    await client.delete(f"{API}{path}", headers=account.headers)
    assert (await client.get(f"{API}{path}", headers=account.headers)).status_code == 404
    assert (await get_json(client, "/items", account))["total"] == 1  # type: ignore[index]


async def test_an_admins_write_invalidates_the_owners_cache(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    owner = await make_account(client)
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    item = await make_item(client, owner, title="mine")
    path = f"/items/{item['id']}"
    await get_json(client, path, owner)
    await client.patch(f"{API}{path}", json={"title": "moderated"}, headers=admin.headers)
    assert (await get_json(client, path, owner))["title"] == "moderated"  # type: ignore[index]


async def test_users_never_see_each_others_cached_answers(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    item = await make_item(client, alice, title="alice's")
    await make_item(client, bob, title="bob's")
    for _ in range(2):
        assert (await get_json(client, f"/items/{item['id']}", alice))["title"] == "alice's"  # type: ignore[index]
        refused = await client.get(f"{API}/items/{item['id']}", headers=bob.headers)
        assert refused.status_code == 404
        alice_list = await get_json(client, "/items", alice)
        bob_list = await get_json(client, "/items", bob)
        assert [i["title"] for i in alice_list["items"]] == ["alice's"]  # type: ignore[index]
        assert [i["title"] for i in bob_list["items"]] == ["bob's"]  # type: ignore[index]


async def test_etag_revalidation_answers_304(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    path = f"{API}/items/{item['id']}"
    etag = (await client.get(path, headers=account.headers)).headers["etag"]
    for _ in range(2):  # from the database, then from the cache
        not_modified = await client.get(path, headers={**account.headers, "If-None-Match": etag})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
    weak = await client.get(path, headers={**account.headers, "If-None-Match": f'"x", W/{etag}'})
    assert weak.status_code == 304

    await client.patch(path, json={"priority": 1}, headers=account.headers)
    changed = await client.get(path, headers={**account.headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag


async def test_etags_are_the_same_on_every_worker_and_restart(
    backend: Backend, empty_database: AsyncEngine
) -> None:
    """Two apps stand for two workers (or a pod before and after a restart): the same
    content must carry the same ETag, whichever serves it."""
    async with running_app(make_settings(backend.database_url, backend.redis_url)) as first:
        account = await make_account(first.client)
        item = await make_item(first.client, account)
        etag = (
            await first.client.get(f"{API}/items/{item['id']}", headers=account.headers)
        ).headers["etag"]
    async with running_app(make_settings(backend.database_url, backend.redis_url)) as second:
        response = await second.client.get(
            f"{API}/items/{item['id']}", headers={**account.headers, "If-None-Match": etag}
        )
        assert response.status_code == 304


async def test_no_cache_request_reads_the_database(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    await client.get(f"{API}/items/{item['id']}", headers=account.headers)
    counter = CacheCounter()
    await client.get(
        f"{API}/items/{item['id']}", headers={**account.headers, "Cache-Control": "no-cache"}
    )
    assert counter.delta("hit") == 0


async def test_admin_reads_go_to_the_database(client: httpx.AsyncClient, set_role: SetRole) -> None:
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    counter = CacheCounter()
    for _ in range(3):
        await get_json(client, "/items", admin)
    assert counter.delta("hit") == counter.delta("miss") == 0


async def test_session_checks_are_cached_and_revocation_is_immediate(app: RunningApp) -> None:
    client = app.client
    account = await make_account(client)
    assert (await client.get(f"{API}/users/me", headers=account.headers)).status_code == 200
    assert (await client.post(f"{API}/auth/logout", headers=account.headers)).status_code == 204
    assert (await client.get(f"{API}/items", headers=account.headers)).status_code == 401


async def test_no_redis_and_several_workers_means_no_cache(
    backend: Backend, empty_database: AsyncEngine
) -> None:
    settings = make_settings(backend.database_url, None, worker_processes=2)
    async with running_app(settings) as running:
        assert not running.state["caches"].answers.available
        account = await make_account(running.client)
        item = await make_item(running.client, account)
        counter = CacheCounter()
        for _ in range(3):
            await get_json(running.client, f"/items/{item['id']}", account)
        assert counter.delta("hit") == counter.delta("miss") == 0


async def test_cache_can_be_switched_off(backend: Backend, empty_database: AsyncEngine) -> None:
    settings = make_settings(
        backend.database_url, backend.redis_url, cache=CacheSettings(enabled=False)
    )
    async with running_app(settings) as running:
        account = await make_account(running.client)
        item = await make_item(running.client, account)
        counter = CacheCounter()
        for _ in range(2):
            await get_json(running.client, f"/items/{item['id']}", account)
        assert counter.delta("hit") == 0


async def test_the_memory_store_is_a_whole_fastapi_cache2_backend() -> None:
    """Through the library's own Backend interface, on its own entries only."""
    store, other = MemoryStore(), MemoryStore()
    await store.set("glasshouse:items:1:item:7", b"seven", expire=60)
    await store.set("glasshouse:auth:1:session", b"open", expire=60)
    ttl, value = await store.get_with_ttl("glasshouse:items:1:item:7")
    assert value == b"seven"
    assert 58 <= ttl <= 60
    assert await other.get("glasshouse:items:1:item:7") is None
    assert await store.clear(namespace="items") == 1
    assert await store.get("glasshouse:items:1:item:7") is None
    assert await store.clear(key="glasshouse:auth:1:session") == 1
    assert await store.get_with_ttl("glasshouse:auth:1:session") == (0, None)


async def test_a_hit_sends_the_bytes_the_miss_sent(client: httpx.AsyncClient) -> None:
    """A hit is the stored JSON as it is; it must be exactly what FastAPI serialized on the
    miss, or the ETag would change between the two."""
    account = await make_account(client)
    item = await make_item(client, account)
    miss = await client.get(f"{API}/items/{item['id']}", headers=account.headers)
    hit = await client.get(f"{API}/items/{item['id']}", headers=account.headers)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert miss.content == hit.content
    assert miss.headers["etag"] == hit.headers["etag"]
    # fastapi-cache2's own headers on a miss (a per-process hash ETag, max-age) never leak.
    assert not miss.headers["etag"].startswith("W/")
    assert miss.headers["cache-control"] == hit.headers["cache-control"] == "private, no-cache"


def test_a_namespace_is_declared_once_with_a_plain_name() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        CacheNamespace("items")
    with pytest.raises(ValueError, match="lowercase"):
        CacheNamespace("Items:all")


def test_a_cached_route_must_know_its_viewer() -> None:
    async def anonymous() -> dict[str, str]:
        return {}

    with pytest.raises(TypeError, match="viewer"):
        cached(CacheNamespace("viewerless"))(anonymous)
