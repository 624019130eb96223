"""Service accounts and their API keys, as a client and an operator see them: a key is shown
once and stored as a hash, acts as its owner within its scopes, stops when it expires, is
rotated, revoked or its owner goes, and its failures are limited, counted and never logged."""

import asyncio
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth.dependencies import (
    SCOPE_CHECKS,
    Caller,
    get_caller,
    get_items_stream_reader,
    get_principal,
)
from service.main import create_app
from service.service_accounts.models import ApiKey
from service.settings import ApiKeySettings, HttpSettings, Settings
from service.users.models import Role
from tests.conftest import LogFile, RunningApp, SetRole, make_settings, running_app
from tests.factories import (
    API,
    Account,
    IssuedKey,
    assert_problem,
    issued_key,
    make_account,
    make_api_key,
    make_item,
    make_service_account,
)

ACCOUNTS = f"{API}/service-accounts"
KEY_SHAPE = re.compile(r"^gh_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")
ALL_BUT_ADMIN = ("items:read", "items:write", "profile:read")


def keys_of(account_id: int) -> str:
    return f"{ACCOUNTS}/{account_id}/keys"


def key_path(key: IssuedKey) -> str:
    return f"{keys_of(key.service_account_id)}/{key.id}"


def secret_of(key: IssuedKey) -> str:
    match = KEY_SHAPE.match(key.key)
    assert match, key.key
    return match["secret"]


async def make_admin(client: httpx.AsyncClient, set_role: SetRole) -> Account:
    account = await make_account(client)
    await set_role(account.id, Role.admin)
    return account


async def listed_key(client: httpx.AsyncClient, owner: Account, key: IssuedKey) -> dict[str, Any]:
    response = await client.get(keys_of(key.service_account_id), headers=owner.headers)
    assert response.status_code == 200, response.text
    [listed] = [row for row in response.json() if row["id"] == key.id]
    return dict(listed)


async def rotate(
    client: httpx.AsyncClient, owner: Account, key: IssuedKey, **body: Any
) -> httpx.Response:
    return await client.post(f"{key_path(key)}/rotate", json=body, headers=owner.headers)


async def rotated(
    client: httpx.AsyncClient, owner: Account, key: IssuedKey, **body: Any
) -> IssuedKey:
    """The key that replaces ``key``."""
    response = await rotate(client, owner, key, **body)
    assert response.status_code == 201, response.text
    return issued_key(response.json())


async def status_with(client: httpx.AsyncClient, key: IssuedKey, path: str = "/items") -> int:
    return (await client.get(f"{API}{path}", headers=key.headers)).status_code


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- creating and listing ---------------------------------------------------------------------


async def test_a_new_key_is_shown_once_and_stored_only_as_a_hash(
    client: httpx.AsyncClient, empty_database: AsyncEngine
) -> None:
    owner = await make_account(client)
    account = await make_service_account(client, owner, name="deploy-bot")
    assert account["owner_id"] == owner.id
    key = await make_api_key(
        client, owner, "items:read", "items:write", service_account_id=account["id"]
    )

    match = KEY_SHAPE.match(key.key)
    assert match, key.key
    assert match["id"] == key.id
    assert key.scopes == ["items:read", "items:write"]
    listing = await client.get(keys_of(account["id"]), headers=owner.headers)
    assert listing.status_code == 200
    [listed] = listing.json()
    assert "key" not in listed
    assert match["secret"] not in listing.text
    assert listed["id"] == key.id
    assert listed["last_used_at"] is None
    assert listed["revoked_at"] is None
    # A database leak hands out nothing usable: the row holds the secret's hash alone.
    async with empty_database.connect() as connection:
        [row] = (await connection.execute(text("SELECT * FROM api_keys"))).mappings().all()
    assert row["secret_hash"] == hashlib.sha256(match["secret"].encode()).hexdigest()
    for column, value in row.items():
        assert match["secret"] not in str(value), column


async def test_a_stored_scope_this_version_no_longer_knows_grants_nothing(
    client: httpx.AsyncClient, empty_database: AsyncEngine
) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner, "items:read")
    async with empty_database.begin() as connection:
        await connection.execute(
            update(ApiKey).where(ApiKey.id == key.id).values(scopes=["items:read", "retired"])
        )
    assert await status_with(client, key) == 200
    created = await client.post(f"{API}/items", json={"title": "x"}, headers=key.headers)
    assert_problem(created, 403, "insufficient_scope")


async def test_accounts_and_keys_are_their_owners_alone(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    stranger = await make_account(client)
    key = await make_api_key(client, owner)
    account_path = f"{ACCOUNTS}/{key.service_account_id}"

    mine = await client.get(ACCOUNTS, headers=owner.headers)
    assert [account["id"] for account in mine.json()] == [key.service_account_id]
    assert (await client.get(ACCOUNTS, headers=stranger.headers)).json() == []
    # Someone else's account or key answers exactly like a missing one.
    for method, path, body in [
        ("GET", account_path, None),
        ("GET", keys_of(key.service_account_id), None),
        ("POST", keys_of(key.service_account_id), {"name": "x", "scopes": ["items:read"]}),
        ("POST", f"{key_path(key)}/rotate", {}),
        ("DELETE", key_path(key), None),
        ("DELETE", account_path, None),
    ]:
        response = await client.request(method, path, json=body, headers=stranger.headers)
        assert_problem(response, 404, "not_found")
    assert await status_with(client, key) == 200


# --- using a key ------------------------------------------------------------------------------


async def test_a_key_acts_as_its_owner(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    other = await make_account(client)
    owners_item = await make_item(client, owner, title="Owner's")
    others_item = await make_item(client, other, title="Someone else's")
    key = await make_api_key(client, owner, *ALL_BUT_ADMIN)

    listed = await client.get(f"{API}/items", headers=key.headers)
    assert [item["id"] for item in listed.json()["items"]] == [owners_item["id"]]
    created = await client.post(f"{API}/items", json={"title": "By a bot"}, headers=key.headers)
    assert created.status_code == 201
    assert created.json()["owner_id"] == owner.id
    owners_view = await client.get(f"{API}/items/{created.json()['id']}", headers=owner.headers)
    assert owners_view.status_code == 200
    me = await client.get(f"{API}/users/me", headers=key.headers)
    assert me.json()["id"] == owner.id

    # Another user's item is as invisible to the key as to its owner, down to the answer.
    path = f"{API}/items/{others_item['id']}"
    for method in ("GET", "PATCH", "DELETE"):
        body = {"title": "Mine now"} if method == "PATCH" else None
        as_owner = await client.request(method, path, json=body, headers=owner.headers)
        as_key = await client.request(method, path, json=body, headers=key.headers)
        assert_problem(as_owner, 404, "not_found")
        assert_problem(as_key, 404, "not_found")
        assert without_request_id(as_key) == without_request_id(as_owner)
    assert (await client.get(path, headers=other.headers)).json()["title"] == "Someone else's"


def without_request_id(response: httpx.Response) -> dict[str, Any]:
    return {name: value for name, value in response.json().items() if name != "request_id"}


async def test_a_key_may_do_only_what_its_scopes_allow(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    item = await make_item(client, owner, title="Untouched")
    reader = await make_api_key(client, owner, "items:read")
    item_path = f"{API}/items/{item['id']}"

    assert (await client.get(item_path, headers=reader.headers)).status_code == 200
    refused = [
        await client.post(f"{API}/items", json={"title": "No"}, headers=reader.headers),
        await client.patch(item_path, json={"title": "No"}, headers=reader.headers),
        await client.delete(item_path, headers=reader.headers),
        await client.get(f"{API}/users/me", headers=reader.headers),
    ]
    for response in refused:
        body = assert_problem(response, 403, "insufficient_scope")
        assert "scope" in body["detail"]
    assert (await client.get(item_path, headers=owner.headers)).json()["title"] == "Untouched"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/users/me", {"full_name": "Bot"}),
        ("POST", "/users/me/password", {"current_password": "x", "new_password": "y" * 12}),
        ("DELETE", "/users/me", None),
        ("POST", "/auth/logout", None),
        ("GET", "/service-accounts", None),
        ("POST", "/service-accounts", {"name": "spawned"}),
        ("GET", "/service-accounts/{account_id}/keys", None),
        ("POST", "/service-accounts/{account_id}/keys", {"name": "x", "scopes": ["items:read"]}),
        ("POST", "/service-accounts/{account_id}/keys/{key_id}/rotate", {}),
        ("DELETE", "/service-accounts/{account_id}/keys/{key_id}", None),
        ("DELETE", "/service-accounts/{account_id}", None),
    ],
)
async def test_no_key_reaches_a_session_only_route(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """Even a key with every scope its owner can give: a key cannot make keys, log out, or
    change the account."""
    owner = await make_account(client)
    key = await make_api_key(client, owner, *ALL_BUT_ADMIN)
    url = API + path.format(account_id=key.service_account_id, key_id=key.id)
    response = await client.request(method, url, json=body, headers=key.headers)
    assert_problem(response, 403, "insufficient_scope")
    # Nothing happened: the key, its account and its owner are all as they were.
    assert await status_with(client, key, "/users/me") == 200
    assert len((await client.get(ACCOUNTS, headers=owner.headers)).json()) == 1


# --- admin ------------------------------------------------------------------------------------


async def test_only_an_admin_can_give_a_key_the_admin_scope(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    user = await make_account(client)
    account = await make_service_account(client, user)
    refused = await client.post(
        keys_of(account["id"]), json={"name": "x", "scopes": ["admin"]}, headers=user.headers
    )
    assert_problem(refused, 403, "forbidden")
    assert (await client.get(keys_of(account["id"]), headers=user.headers)).json() == []

    admin = await make_admin(client, set_role)
    key = await make_api_key(client, admin, "admin")
    assert key.scopes == ["admin"]


async def test_a_key_is_admin_only_with_an_admin_owner_and_the_admin_scope(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_admin(client, set_role)
    user = await make_account(client)
    users_item = await make_item(client, user)
    admins_item = await make_item(client, admin)
    plain = await make_api_key(client, admin, *ALL_BUT_ADMIN)
    powerful = await make_api_key(client, admin, "admin", "items:read")

    # Without the admin scope, the admin's key is an ordinary user's.
    assert_problem(
        await client.get(f"{API}/users", headers=plain.headers), 403, "insufficient_scope"
    )
    own = await client.get(f"{API}/items", headers=plain.headers)
    assert [item["id"] for item in own.json()["items"]] == [admins_item["id"]]
    others = await client.get(f"{API}/items/{users_item['id']}", headers=plain.headers)
    assert_problem(others, 404, "not_found")

    users = await client.get(f"{API}/users", headers=powerful.headers)
    assert users.status_code == 200
    assert {row["id"] for row in users.json()["items"]} == {admin.id, user.id}
    everyone = await client.get(f"{API}/items", headers=powerful.headers)
    assert {item["id"] for item in everyone.json()["items"]} == {
        users_item["id"],
        admins_item["id"],
    }

    # The owner's role is checked on every use: a demoted owner's key loses the powers at once.
    await set_role(admin.id, Role.user)
    assert_problem(await client.get(f"{API}/users", headers=powerful.headers), 403, "forbidden")


# --- when keys stop working -------------------------------------------------------------------


async def test_a_key_stops_when_its_expiry_or_its_rotation_grace_passes(
    client: httpx.AsyncClient,
) -> None:
    """The two clocks a key runs on, checked in one wait (waits kept short)."""
    owner = await make_account(client)
    expiring = await make_api_key(client, owner, expires_in_seconds=1)
    assert await status_with(client, expiring) == 200
    listed = await listed_key(client, owner, expiring)
    lifetime = datetime.fromisoformat(listed["expires_at"]) - datetime.fromisoformat(
        listed["created_at"]
    )
    assert abs(lifetime - timedelta(seconds=1)) < timedelta(seconds=0.5)
    replaced = await make_api_key(client, owner)
    assert await status_with(client, replaced) == 200  # its answer now cached
    replacement = await rotated(client, owner, replaced, grace_seconds=1)
    assert await status_with(client, replaced) == 200  # within its grace

    await asyncio.sleep(1.1)

    assert_problem(
        await client.get(f"{API}/items", headers=expiring.headers), 401, "invalid_api_key"
    )
    assert_problem(
        await client.get(f"{API}/items", headers=replaced.headers), 401, "invalid_api_key"
    )
    assert await status_with(client, replacement) == 200
    assert_problem(await rotate(client, owner, expiring), 409, "conflict")


async def test_rotation_gives_a_new_key_and_keeps_the_old_one_for_the_grace(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    owner = await make_account(client)
    old = await make_api_key(client, owner, "items:read", "profile:read")
    assert await status_with(client, old) == 200

    response = await rotate(client, owner, old)
    assert response.status_code == 201, response.text
    new = issued_key(response.json())
    assert KEY_SHAPE.match(new.key)
    assert (new.id, new.key) != (old.id, old.key)
    assert new.scopes == old.scopes
    assert response.json()["rotated_from_id"] == old.id
    assert response.json()["expires_at"] is None
    assert await status_with(client, new) == 200
    assert await status_with(client, old) == 200
    # The old key's end is the default grace from now.
    grace = timedelta(seconds=settings.api_keys.rotation_grace_seconds)
    ends = datetime.fromisoformat((await listed_key(client, owner, old))["expires_at"])
    assert abs(ends - (datetime.now(UTC) + grace)) < timedelta(seconds=30)


async def test_rotation_without_grace_stops_the_old_key_at_once(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    old = await make_api_key(client, owner)
    assert await status_with(client, old) == 200  # its answer now cached

    new = await rotated(client, owner, old, grace_seconds=0)

    assert_problem(await client.get(f"{API}/items", headers=old.headers), 401, "invalid_api_key")
    assert await status_with(client, new) == 200


async def test_a_revoked_key_stops_at_once_even_with_its_answer_cached(
    client: httpx.AsyncClient,
) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    other = await make_api_key(client, owner, service_account_id=key.service_account_id)
    for _ in range(2):
        assert await status_with(client, key) == 200

    assert (await client.delete(key_path(key), headers=owner.headers)).status_code == 204

    assert_problem(await client.get(f"{API}/items", headers=key.headers), 401, "invalid_api_key")
    assert (await listed_key(client, owner, key))["revoked_at"] is not None
    assert await status_with(client, other) == 200
    # Revoking again is no error, and a revoked key cannot be rotated back to life.
    assert (await client.delete(key_path(key), headers=owner.headers)).status_code == 204
    assert_problem(await rotate(client, owner, key), 409, "conflict")


async def test_a_key_revoked_on_one_worker_stops_on_every_worker(
    app: RunningApp, settings: Settings
) -> None:
    """Two apps on one database and one Redis, as two workers are."""
    if settings.redis_url is None:
        pytest.skip("the in-process cache belongs to one worker")
    owner = await make_account(app.client)
    key = await make_api_key(app.client, owner)
    async with running_app(settings) as other_worker:
        assert await status_with(other_worker.client, key) == 200  # cached there
        assert (await app.client.delete(key_path(key), headers=owner.headers)).status_code == 204
        assert await status_with(other_worker.client, key) == 401


async def test_a_deactivated_owners_keys_are_refused(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_admin(client, set_role)
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    assert await status_with(client, key) == 200  # its answer now cached

    deactivate = await client.patch(
        f"{API}/users/{owner.id}", json={"is_active": False}, headers=admin.headers
    )
    assert deactivate.status_code == 200

    assert_problem(await client.get(f"{API}/items", headers=key.headers), 403, "inactive_user")
    await client.patch(f"{API}/users/{owner.id}", json={"is_active": True}, headers=admin.headers)
    assert await status_with(client, key) == 200


async def test_a_deleted_owners_keys_stop_and_are_gone(
    client: httpx.AsyncClient, empty_database: AsyncEngine
) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    assert await status_with(client, key) == 200  # its answer now cached

    assert (await client.delete(f"{API}/users/me", headers=owner.headers)).status_code == 204

    assert_problem(await client.get(f"{API}/items", headers=key.headers), 401, "invalid_api_key")
    async with empty_database.connect() as connection:
        for table in ("service_accounts", "api_keys"):
            assert await connection.scalar(text(f"SELECT count(*) FROM {table}")) == 0  # noqa: S608


async def test_deleting_a_service_account_stops_its_keys_only(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    doomed = await make_api_key(client, owner)
    sibling = await make_api_key(client, owner, service_account_id=doomed.service_account_id)
    elsewhere = await make_api_key(client, owner)
    for key in (doomed, sibling, elsewhere):
        assert await status_with(client, key) == 200

    deleted = await client.delete(f"{ACCOUNTS}/{doomed.service_account_id}", headers=owner.headers)
    assert deleted.status_code == 204

    for key in (doomed, sibling):
        assert_problem(
            await client.get(f"{API}/items", headers=key.headers), 401, "invalid_api_key"
        )
    gone = await client.get(f"{ACCOUNTS}/{doomed.service_account_id}", headers=owner.headers)
    assert_problem(gone, 404, "not_found")
    assert await status_with(client, elsewhere) == 200


# --- malformed, ambiguous, limited ------------------------------------------------------------


async def test_a_token_and_a_key_together_are_refused(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    both = {**owner.headers, **key.headers}
    assert_problem(await client.get(f"{API}/items", headers=both), 401, "ambiguous_credentials")
    assert_problem(await client.get(f"{API}/users/me", headers=both), 401, "ambiguous_credentials")


async def test_a_token_and_a_key_together_are_refused_on_session_only_routes(
    client: httpx.AsyncClient,
) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    both = {**owner.headers, **key.headers}
    response = await client.patch(f"{API}/users/me", json={"full_name": "Both"}, headers=both)
    assert_problem(response, 401, "ambiguous_credentials")


@pytest.mark.parametrize(
    "sent",
    [
        "not-a-key",
        "",
        "Bearer gh_0123456789abcdef_" + "a" * 43,
        "GH_0123456789abcdef_" + "a" * 43,  # the prefix is lower case
        "gh_0123456789ABCDEF_" + "a" * 43,  # so is the id
        "gh_0123456789abcdef-" + "a" * 43,
        "gh_0123456789abcdef_" + "a" * 42,
        "gh_0123456789abcdef_" + "a" * 44,
        "gh_0123456789abcdef_" + "a" * 42 + "!",
        "gh_0123456789abcdef_" + "a" * 43,  # well formed, unknown
    ],
)
async def test_a_malformed_or_unknown_key_is_refused(client: httpx.AsyncClient, sent: str) -> None:
    response = await client.get(f"{API}/items", headers={"X-API-Key": sent})
    assert_problem(response, 401, "invalid_api_key")


async def test_a_known_key_id_with_the_wrong_secret_is_refused(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    forged = key.key[: -len(secret_of(key))] + "A" * 43
    for _ in range(2):  # before and after the real key's answer is cached
        response = await client.get(f"{API}/items", headers={"X-API-Key": forged})
        assert_problem(response, 401, "invalid_api_key")
        assert await status_with(client, key) == 200


async def test_failed_key_checks_are_limited_per_client_address(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    limited = settings.model_copy(update={"api_keys": ApiKeySettings(max_failures_per_address=3)})
    async with running_app(limited) as app:
        owner = await make_account(app.client)
        good = await make_api_key(app.client, owner)
        unused = await make_api_key(app.client, owner)
        guesser = "198.51.100.1"

        async def attempt(key: str, address: str) -> httpx.Response:
            headers = {"X-API-Key": key, "X-Forwarded-For": address}
            return await app.client.get(f"{API}/items", headers=headers)

        # Good keys cost nothing against the limit.
        for _ in range(5):
            assert (await attempt(good.key, guesser)).status_code == 200
        refusals = counter("glasshouse_rate_limited_total", limit="api_key_address")
        for n in range(3):
            wrong = f"gh_{n:016x}_" + "a" * 43
            assert_problem(await attempt(wrong, guesser), 401, "invalid_api_key")
        limited_response = await attempt("gh_" + "f" * 16 + "_" + "a" * 43, guesser)
        assert_problem(limited_response, 429, "too_many_requests")
        assert int(limited_response.headers["retry-after"]) > 0
        assert counter("glasshouse_rate_limited_total", limit="api_key_address") == refusals + 1
        # A key not checked before is looked up, so the address is stopped for it too ...
        assert_problem(await attempt(unused.key, guesser), 429, "too_many_requests")
        # ... and the same key from another address is not.
        assert (await attempt(unused.key, "203.0.113.5")).status_code == 200


async def test_a_forwarded_for_from_an_untrusted_peer_does_not_escape_the_limit(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    """The test client's own address made untrusted: X-Forwarded-For is then the sender's
    claim, and a new claim per guess must not buy new guesses."""
    untrusted = settings.model_copy(
        update={
            "api_keys": ApiKeySettings(max_failures_per_address=2),
            "http": HttpSettings(forwarded_allow_ips="192.0.2.1"),
        }
    )
    async with running_app(untrusted) as app:
        statuses = []
        for n in range(4):
            headers = {"X-API-Key": f"gh_{n:016x}_" + "a" * 43, "X-Forwarded-For": f"10.0.0.{n}"}
            statuses.append((await app.client.get(f"{API}/items", headers=headers)).status_code)
        assert statuses == [401, 401, 429, 429]


# --- bookkeeping: last use, limits, validation ------------------------------------------------


async def test_last_used_is_written_after_a_use_but_not_on_every_request(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    # Long enough for four requests and two listings on a loaded CI machine (0.5 s was not).
    resolution = 3.0
    quick = settings.model_copy(
        update={"api_keys": ApiKeySettings(last_used_resolution_seconds=resolution)}
    )
    async with running_app(quick) as app:
        owner = await make_account(app.client)
        key = await make_api_key(app.client, owner)

        async def last_used() -> datetime | None:
            # The write happens after the response; close() waits for the ones under way.
            await app.state["api_keys"].close()
            value = (await listed_key(app.client, owner, key))["last_used_at"]
            return None if value is None else datetime.fromisoformat(value)

        assert await last_used() is None
        before = datetime.now(UTC)
        assert await status_with(app.client, key) == 200
        first = await last_used()
        assert first is not None
        assert before <= first <= datetime.now(UTC)
        for _ in range(3):
            assert await status_with(app.client, key) == 200
        assert await last_used() == first

        await asyncio.sleep(resolution)
        assert await status_with(app.client, key) == 200
        later = await last_used()
        assert later is not None
        assert later > first


async def test_service_accounts_and_keys_per_owner_are_limited(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    small = ApiKeySettings(max_service_accounts_per_user=2, max_keys_per_service_account=2)
    async with running_app(settings.model_copy(update={"api_keys": small})) as app:
        client = app.client
        owner = await make_account(client)
        first = await make_api_key(client, owner)
        await make_api_key(client, owner, service_account_id=first.service_account_id)
        new_key = {"name": "third", "scopes": ["items:read"]}

        full = await client.post(
            keys_of(first.service_account_id), json=new_key, headers=owner.headers
        )
        assert_problem(full, 409, "conflict")
        await make_service_account(client, owner)
        too_many = await client.post(ACCOUNTS, json={"name": "third"}, headers=owner.headers)
        assert_problem(too_many, 409, "conflict")

        # A revoked key frees its place; another user has limits of their own.
        assert (await client.delete(key_path(first), headers=owner.headers)).status_code == 204
        await make_api_key(client, owner, service_account_id=first.service_account_id)
        await make_service_account(client, await make_account(client))


async def test_rotation_cannot_get_past_the_key_limit(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    small = ApiKeySettings(max_keys_per_service_account=2)
    async with running_app(settings.model_copy(update={"api_keys": small})) as app:
        owner = await make_account(app.client)
        key = await make_api_key(app.client, owner)
        successor = await rotated(app.client, owner, key)  # two working keys: the limit
        assert_problem(await rotate(app.client, owner, key), 409, "conflict")  # rotated already
        # The successor's new key would be a third working key while the successor's grace runs.
        assert_problem(await rotate(app.client, owner, successor), 409, "conflict")
        # Without a grace it takes the successor's place.
        await rotated(app.client, owner, successor, grace_seconds=0)
        listing = await app.client.get(keys_of(key.service_account_id), headers=owner.headers)
        working = [row for row in listing.json() if row["revoked_at"] is None]
        now = datetime.now(UTC)
        working = [
            row
            for row in working
            if row["expires_at"] is None or datetime.fromisoformat(row["expires_at"]) > now
        ]
        assert len(working) == small.max_keys_per_service_account


async def test_rotation_without_a_body_uses_the_default_grace(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    response = await client.post(f"{key_path(key)}/rotate", headers=owner.headers)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x", "scopes": ["items:read"], "expires_in_seconds": 0},
        {"name": "x", "scopes": ["items:read"], "expires_in_seconds": -60},
        {"name": "x", "scopes": ["items:read"], "expires_in_seconds": 1.5},
        {"name": "x", "scopes": ["items:read"], "expires_in_seconds": "soon"},
        {"name": "x", "scopes": ["items:read"], "expires_in_seconds": 5 * 366 * 86_400 + 1},
        {"name": "x", "scopes": ["items:read"], "expires_at": "2999-01-01T00:00:00Z"},
        {"name": "x", "scopes": ["items:read", "items:read"]},
        {"name": "x", "scopes": ["items:delete"]},
        {"name": "x", "scopes": []},
        {"name": "x"},
        {"name": "   ", "scopes": ["items:read"]},
        {"name": "x" * 101, "scopes": ["items:read"]},
        {"scopes": ["items:read"]},
        {"name": "x", "scopes": ["items:read"], "owner_id": 1},
    ],
)
async def test_an_invalid_key_request_is_refused(
    client: httpx.AsyncClient, payload: dict[str, Any]
) -> None:
    owner = await make_account(client)
    account = await make_service_account(client, owner)
    response = await client.post(keys_of(account["id"]), json=payload, headers=owner.headers)
    assert_problem(response, 422, "validation_failed")
    assert (await client.get(keys_of(account["id"]), headers=owner.headers)).json() == []


@pytest.mark.parametrize(
    "payload",
    [
        {"grace_seconds": -1},
        {"grace_seconds": 30 * 86_400 + 1},
        {"grace_seconds": 1.5},
        {"grace_seconds": "soon"},
        {"grace": 0},
    ],
)
async def test_an_invalid_rotation_is_refused(
    client: httpx.AsyncClient, payload: dict[str, Any]
) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    assert_problem(await rotate(client, owner, key, **payload), 422, "validation_failed")
    listing = (await client.get(keys_of(key.service_account_id), headers=owner.headers)).json()
    assert [(row["id"], row["expires_at"]) for row in listing] == [(key.id, None)]


# --- what operators see: metrics and logs -----------------------------------------------------


def auth_counts() -> dict[str, float]:
    """Authenticated requests by method, and failed key checks by reason."""
    requests = "glasshouse_authenticated_requests_total"
    failures = "glasshouse_api_key_failures_total"
    return {
        "session": counter(requests, method="session"),
        "api_key": counter(requests, method="api_key"),
        **{
            reason: counter(failures, reason=reason)
            for reason in ("malformed", "unknown", "wrong_secret", "revoked")
        },
    }


async def test_metrics_count_each_way_in_and_each_failure(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner)
    revoked = await make_api_key(client, owner, service_account_id=key.service_account_id)
    await client.delete(key_path(revoked), headers=owner.headers)
    before = auth_counts()

    await client.get(f"{API}/items", headers=owner.headers)
    for _ in range(2):
        await client.get(f"{API}/items", headers=key.headers)
    for sent in (
        "gh_nonsense",
        "gh_" + "0" * 16 + "_" + "a" * 43,
        key.key[: -len(secret_of(key))] + "A" * 43,
        revoked.key,
    ):
        assert (await client.get(f"{API}/items", headers={"X-API-Key": sent})).status_code == 401

    after = auth_counts()
    moved = {name: after[name] - before[name] for name in before}
    assert moved == {
        "session": 1,
        "api_key": 2,
        "malformed": 1,
        "unknown": 1,
        "wrong_secret": 1,
        "revoked": 1,
    }


async def test_keys_never_reach_the_log_and_key_requests_name_their_account(
    client: httpx.AsyncClient, json_logs: LogFile
) -> None:
    owner = await make_account(client)
    key = await make_api_key(client, owner, "items:read", "items:write")
    await client.get(f"{API}/items", headers=owner.headers)
    await client.post(f"{API}/items", json={"title": "By a bot"}, headers=key.headers)
    forged = key.key[: -len(secret_of(key))] + "A" * 43
    await client.get(f"{API}/items", headers={"X-API-Key": forged})
    new = await rotated(client, owner, key, grace_seconds=0)
    await client.get(f"{API}/items", headers=new.headers)
    await client.get(f"{API}/items", headers=key.headers)  # refused now

    logged = json_logs.path.read_text()
    for secret in (key.key, secret_of(key), new.key, secret_of(new), forged):
        assert secret not in logged
    # The requests a key made name its service account in their access line (refused ones
    # never got that far); the session's request does not.
    lines = json_logs.access_lines()
    # The first signed-in request to the items is the session's.
    by_session = next(line for line in lines if line["route"] == f"{API}/items")
    assert by_session["user_id"] == owner.id
    assert "service_account_id" not in by_session
    by_key = [line for line in lines if "service_account_id" in line]
    assert [(line["method"], line["status"]) for line in by_key] == [("POST", 201), ("GET", 200)]
    for line in by_key:
        assert line["service_account_id"] == key.service_account_id
        assert line["user_id"] == owner.id


# --- every route a key can reach names a scope ------------------------------------------------


def the_app() -> FastAPI:
    """Built, not started: its routes and OpenAPI document are all these tests read."""
    return create_app(make_settings("sqlite+aiosqlite:///:memory:"))


def api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """Every APIRoute with its full path, through included routers (as service/errors.py walks
    them)."""
    found: list[tuple[str, APIRoute]] = []
    for route in app.router.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            found += [
                (context.path_format, context.original_route)
                for context in contexts()
                if isinstance(context.original_route, APIRoute)  # not the WebSocket route
            ]
        elif isinstance(route, APIRoute):
            found.append((route.path_format, route))
    return found


def unscoped_paths_to_the_caller(dependant: Dependant, scoped: bool = False) -> int:
    """How many ways down the dependency tree reach get_caller without passing a scope check."""
    if dependant.call is get_caller:
        return 0 if scoped else 1
    scoped = scoped or dependant.call in SCOPE_CHECKS
    return sum(unscoped_paths_to_the_caller(d, scoped) for d in dependant.dependencies)


def reaches(dependant: Dependant, call: object) -> bool:
    return dependant.call is call or any(reaches(d, call) for d in dependant.dependencies)


def test_every_route_a_key_can_reach_names_a_scope() -> None:
    # The check itself catches a route that takes the caller without a scope.
    careless = APIRouter()

    @careless.get("/careless")
    async def unscoped(caller: Caller) -> None: ...

    [route] = careless.routes
    assert isinstance(route, APIRoute)
    assert unscoped_paths_to_the_caller(route.dependant) == 1

    routes = api_routes(the_app())
    key_routes = [path for path, route in routes if reaches(route.dependant, get_caller)]
    assert f"{API}/items" in key_routes  # the walk sees through the included routers
    for path, route in routes:
        assert unscoped_paths_to_the_caller(route.dependant) == 0, (route.methods, path)


def test_openapi_offers_the_key_scheme_exactly_where_keys_are_accepted() -> None:
    app = the_app()
    document = app.openapi()
    schemes = document["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["APIKeyHeader"]["description"],
    }
    assert schemes["OAuth2PasswordBearer"]["type"] == "oauth2"
    both: list[dict[str, list[str]]] = [{"OAuth2PasswordBearer": []}, {"APIKeyHeader": []}]
    for path, route in api_routes(app):
        if not route.include_in_schema:
            continue
        for method in route.methods or ():
            security = document["paths"][path][method.lower()].get("security")
            expected: list[dict[str, list[str]]] | None
            # An event stream's reader takes the same credentials (or a ticket, not a scheme).
            if reaches(route.dependant, get_caller) or reaches(
                route.dependant, get_items_stream_reader
            ):
                expected = both
            elif reaches(route.dependant, get_principal):  # login sessions only
                expected = [{"OAuth2PasswordBearer": []}]
            else:
                expected = None
            assert security == expected, (method, path)
