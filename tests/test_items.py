"""The items API as a client sees it: validation, paging, filters, sorting, ownership."""

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest

from service.items.schemas import ItemSort
from service.users.models import Role
from tests.conftest import SetRole
from tests.factories import API, Account, assert_problem, make_account, make_item

ITEMS = f"{API}/items"


async def list_items(
    client: httpx.AsyncClient, account: Account, **params: str | int
) -> dict[str, Any]:
    response = await client.get(ITEMS, params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


def error_locs(body: dict[str, Any]) -> list[list[str]]:
    return [error["loc"] for error in body["errors"]]


# --- create -----------------------------------------------------------------------------------


async def test_create_applies_defaults_and_owner(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.post(ITEMS, json={"title": "Repot the cactus"}, headers=account.headers)
    assert response.status_code == 201, response.text
    item = response.json()
    assert set(item) == {
        "id",
        "owner_id",
        "title",
        "description",
        "status",
        "priority",
        "created_at",
        "updated_at",
    }
    assert item["title"] == "Repot the cactus"
    assert item["description"] is None
    assert item["status"] == "todo"
    assert item["priority"] == 3
    assert item["owner_id"] == account.id
    created_at = datetime.fromisoformat(item["created_at"])
    assert created_at.utcoffset() is not None, "timestamps must carry their UTC offset"
    assert datetime.fromisoformat(item["updated_at"]) >= created_at


async def test_create_stores_every_given_field(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    payload = {
        "title": "Mist the orchids",
        "description": "Only in the morning.",
        "status": "doing",
        "priority": 1,
    }
    created = await make_item(client, account, **payload)
    assert {key: created[key] for key in payload} == payload
    got = await client.get(f"{ITEMS}/{created['id']}", headers=account.headers)
    assert got.status_code == 200
    assert got.json() == created


async def test_create_refuses_an_owner_id_in_the_body(client: httpx.AsyncClient) -> None:
    """A client cannot create an item on someone else's behalf: owner_id is not an input."""
    victim = await make_account(client)
    attacker = await make_account(client)
    response = await client.post(
        ITEMS, json={"title": "Planted", "owner_id": victim.id}, headers=attacker.headers
    )
    body = assert_problem(response, 422, "validation_failed")
    assert ["body", "owner_id"] in error_locs(body)
    assert (await list_items(client, victim))["total"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "x"},
        {"title": "t" * 200},
        {"title": "é" * 200},  # the column limit counts characters, not bytes
        {"title": "Fern", "description": ""},
        {"title": "Fern", "description": "d" * 2000},
        {"title": "Fern", "priority": 1},
        {"title": "Fern", "priority": 5},
        {"title": "Fern", "status": "todo"},
        {"title": "Fern", "status": "doing"},
        {"title": "Fern", "status": "done"},
    ],
    ids=[
        "title-1",
        "title-200",
        "title-200-multibyte",
        "description-empty",
        "description-2000",
        "priority-1",
        "priority-5",
        "status-todo",
        "status-doing",
        "status-done",
    ],
)
async def test_create_accepts_values_on_the_bounds(
    client: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    account = await make_account(client)
    response = await client.post(ITEMS, json=fields, headers=account.headers)
    assert response.status_code == 201, response.text
    item = response.json()
    for key, value in fields.items():
        assert item[key] == value
    got = await client.get(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert got.json() == item


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({}, ["body", "title"]),
        ({"title": ""}, ["body", "title"]),
        ({"title": "   "}, ["body", "title"]),
        ({"title": None}, ["body", "title"]),
        ({"title": "t" * 201}, ["body", "title"]),
        ({"title": 42}, ["body", "title"]),
        ({"title": "Fern", "description": "d" * 2001}, ["body", "description"]),
        ({"title": "Fern", "priority": 0}, ["body", "priority"]),
        ({"title": "Fern", "priority": 6}, ["body", "priority"]),
        ({"title": "Fern", "priority": -1}, ["body", "priority"]),
        ({"title": "Fern", "priority": 2.5}, ["body", "priority"]),
        ({"title": "Fern", "priority": None}, ["body", "priority"]),
        ({"title": "Fern", "status": "archived"}, ["body", "status"]),
        ({"title": "Fern", "status": "TODO"}, ["body", "status"]),
        ({"title": "Fern", "status": None}, ["body", "status"]),
        ({"title": "Fern", "colour": "green"}, ["body", "colour"]),
        ({"title": "Fern", "id": 7}, ["body", "id"]),
    ],
    ids=[
        "title-missing",
        "title-empty",
        "title-blank",
        "title-null",
        "title-201",
        "title-not-a-string",
        "description-2001",
        "priority-0",
        "priority-6",
        "priority-negative",
        "priority-fractional",
        "priority-null",
        "status-unknown",
        "status-wrong-case",
        "status-null",
        "unknown-field",
        "read-only-field",
    ],
)
async def test_create_refuses_invalid_fields(
    client: httpx.AsyncClient, fields: dict[str, Any], loc: list[str]
) -> None:
    account = await make_account(client)
    response = await client.post(ITEMS, json=fields, headers=account.headers)
    body = assert_problem(response, 422, "validation_failed")
    assert loc in error_locs(body)
    assert (await list_items(client, account))["total"] == 0


async def test_create_strips_surrounding_whitespace_from_title(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account, title="  Prune the roses \n")
    assert item["title"] == "Prune the roses"


async def test_create_refuses_a_body_that_is_not_an_object(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.post(ITEMS, json=["title", "Fern"], headers=account.headers)
    assert_problem(response, 422, "validation_failed")


# --- get --------------------------------------------------------------------------------------


async def test_get_missing_item_is_not_found(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    deleted = await client.delete(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert deleted.status_code == 204
    response = await client.get(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("item_id", ["0", "-1", "1.5", str(2**63)])
async def test_get_refuses_ids_that_cannot_exist(client: httpx.AsyncClient, item_id: str) -> None:
    account = await make_account(client)
    response = await client.get(f"{ITEMS}/{item_id}", headers=account.headers)
    body = assert_problem(response, 422, "validation_failed")
    assert ["path", "item_id"] in error_locs(body)


async def test_a_word_is_no_item_id_and_another_method_on_a_path_beside_it_is_a_405(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    assert_problem(await client.get(f"{ITEMS}/abc", headers=account.headers), 404, "not_found")
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(method, f"{ITEMS}/exports", headers=account.headers)
        assert_problem(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST"


async def test_get_largest_possible_id_is_not_found(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.get(f"{ITEMS}/{2**63 - 1}", headers=account.headers)
    assert_problem(response, 404, "not_found")


# --- list: paging -----------------------------------------------------------------------------


async def test_list_is_empty_for_a_new_account(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    page = await list_items(client, account)
    assert page == {"items": [], "total": 0, "limit": 20, "offset": 0}


async def test_list_pages_through_every_item_once(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    created = [(await make_item(client, account, title=f"item {n}"))["id"] for n in range(5)]

    seen: list[int] = []
    for offset in (0, 2, 4):
        page = await list_items(client, account, limit=2, offset=offset, sort="created_at")
        assert page["total"] == 5
        assert page["limit"] == 2
        assert page["offset"] == offset
        seen.extend(ids(page))
    assert seen == created

    past_the_end = await list_items(client, account, limit=2, offset=10)
    assert past_the_end["items"] == []
    assert past_the_end["total"] == 5


async def test_list_default_page_size_is_twenty(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    for n in range(21):
        await make_item(client, account, title=f"item {n}")
    page = await list_items(client, account)
    assert page["total"] == 21
    assert page["limit"] == 20
    assert len(page["items"]) == 20


@pytest.mark.parametrize("limit", [1, 100])
async def test_list_accepts_limit_on_the_bounds(client: httpx.AsyncClient, limit: int) -> None:
    account = await make_account(client)
    await make_item(client, account, title="one")
    await make_item(client, account, title="two")
    page = await list_items(client, account, limit=limit)
    assert page["limit"] == limit
    assert len(page["items"]) == min(limit, 2)
    assert page["total"] == 2


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 100_001}, "offset"),
        ({"priority": 0}, "priority"),
        ({"priority": 6}, "priority"),
        ({"status": "archived"}, "status"),
        ({"q": ""}, "q"),
        ({"q": "q" * 101}, "q"),
        ({"owner_id": 0}, "owner_id"),
        ({"owner_id": 2**63}, "owner_id"),
        ({"sort": "description"}, "sort"),
        ({"sort": "owner_id; DROP TABLE items"}, "sort"),
    ],
)
async def test_list_refuses_invalid_query_parameters(
    client: httpx.AsyncClient, params: dict[str, str | int], name: str
) -> None:
    account = await make_account(client)
    response = await client.get(ITEMS, params=params, headers=account.headers)
    body = assert_problem(response, 422, "validation_failed")
    assert ["query", name] in error_locs(body)


# --- list: filters ----------------------------------------------------------------------------


async def test_list_filters_by_status(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    todo = await make_item(client, account, status="todo")
    doing = await make_item(client, account, status="doing")
    done = await make_item(client, account, status="done")
    for item in (todo, doing, done):
        page = await list_items(client, account, status=item["status"])
        assert ids(page) == [item["id"]]
        assert page["total"] == 1


async def test_list_filters_by_priority(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    urgent = await make_item(client, account, priority=1)
    also_urgent = await make_item(client, account, priority=1)
    await make_item(client, account, priority=4)
    page = await list_items(client, account, priority=1, sort="created_at")
    assert ids(page) == [urgent["id"], also_urgent["id"]]
    assert page["total"] == 2
    assert (await list_items(client, account, priority=5))["total"] == 0


async def test_list_filters_combine(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    wanted = await make_item(client, account, title="Feed fern", status="doing", priority=2)
    await make_item(client, account, title="Feed fern", status="todo", priority=2)
    await make_item(client, account, title="Feed fern", status="doing", priority=3)
    await make_item(client, account, title="Feed cactus", status="doing", priority=2)
    page = await list_items(client, account, q="fern", status="doing", priority=2)
    assert ids(page) == [wanted["id"]]
    assert page["total"] == 1


async def test_list_q_matches_title_substring_case_insensitively(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    ferns = await make_item(client, account, title="Water the FERNS")
    fernery = await make_item(client, account, title="fernery tour")
    await make_item(client, account, title="Repot the cactus", description="not a fern")
    page = await list_items(client, account, q="Fern", sort="created_at")
    assert ids(page) == [ferns["id"], fernery["id"]]
    assert page["total"] == 2


@pytest.mark.parametrize(
    ("q", "matching_title"),
    [
        ("%", "100% done"),
        ("0%", "100% done"),
        ("_", "snake_case"),
        ("e_c", "snake_case"),
        ("/", "either/or"),
        ("\\", "back\\slash"),
    ],
)
async def test_list_q_matches_like_wildcards_literally(
    client: httpx.AsyncClient, q: str, matching_title: str
) -> None:
    account = await make_account(client)
    titles = ["100% done", "1000 done", "snake_case", "snakeXcase", "either/or", "back\\slash"]
    created = {title: await make_item(client, account, title=title) for title in titles}
    page = await list_items(client, account, q=q)
    assert ids(page) == [created[matching_title]["id"]]
    assert page["total"] == 1


async def test_list_total_counts_filtered_rows_across_pages(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    for n in range(3):
        await make_item(client, account, title=f"done {n}", status="done")
    await make_item(client, account, title="open", status="todo")
    page = await list_items(client, account, status="done", limit=1)
    assert len(page["items"]) == 1
    assert page["total"] == 3


# --- list: sorting ----------------------------------------------------------------------------


def _sort_key(item: dict[str, Any], field: str) -> tuple[Any, int]:
    value = datetime.fromisoformat(item[field]) if field == "created_at" else item[field]
    return value, item["id"]


@pytest.mark.parametrize("sort", list(ItemSort), ids=[s.name for s in ItemSort])
async def test_list_sorts_by_every_ordering(client: httpx.AsyncClient, sort: ItemSort) -> None:
    account = await make_account(client)
    # Titles and priorities are out of creation order, with ties, so each ordering differs and
    # the id tie-breaker is exercised. Lower-case ASCII titles sort the same in every collation.
    specs = [("delta", 2), ("alpha", 5), ("charlie", 2), ("bravo", 1), ("alpha", 3)]
    created = [await make_item(client, account, title=t, priority=p) for t, p in specs]

    field = sort.value.removeprefix("-")
    descending = sort.value.startswith("-")
    expected = sorted(created, key=lambda item: _sort_key(item, field), reverse=descending)

    page = await list_items(client, account, sort=sort.value)
    assert ids(page) == [item["id"] for item in expected]


async def test_list_default_sort_is_newest_first(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    created = [(await make_item(client, account, title=f"item {n}"))["id"] for n in range(3)]
    assert ids(await list_items(client, account)) == list(reversed(created))


async def test_list_sort_ascending_and_descending_are_reverses(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    for title in ("b", "c", "a", "e", "d"):
        await make_item(client, account, title=title)
    ascending = await list_items(client, account, sort="title")
    descending = await list_items(client, account, sort="-title")
    assert [item["title"] for item in ascending["items"]] == ["a", "b", "c", "d", "e"]
    assert ids(descending) == list(reversed(ids(ascending)))


# --- update -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"title": "Renamed"},
        {"description": "Now with notes"},
        {"status": "done"},
        {"priority": 5},
    ],
    ids=["title", "description", "status", "priority"],
)
async def test_patch_changes_only_the_given_field(
    client: httpx.AsyncClient, change: dict[str, Any]
) -> None:
    account = await make_account(client)
    item = await make_item(
        client, account, title="Original", description="Original notes", priority=2
    )
    response = await client.patch(f"{ITEMS}/{item['id']}", json=change, headers=account.headers)
    assert response.status_code == 200, response.text
    updated = response.json()

    unchanged = {"id", "owner_id", "title", "description", "status", "priority", "created_at"}
    for key in unchanged - set(change):
        assert updated[key] == item[key], key
    for key, value in change.items():
        assert updated[key] == value
    assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(
        item["updated_at"]
    )

    got = await client.get(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert got.json() == updated


async def test_patch_several_fields_at_once(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    change = {"title": "Both", "status": "doing", "priority": 1, "description": "x"}
    response = await client.patch(f"{ITEMS}/{item['id']}", json=change, headers=account.headers)
    assert response.status_code == 200, response.text
    assert {key: response.json()[key] for key in change} == change


async def test_patch_description_to_null_clears_it(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account, description="Soon gone")
    response = await client.patch(
        f"{ITEMS}/{item['id']}", json={"description": None}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["description"] is None
    got = await client.get(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert got.json()["description"] is None


async def test_patch_with_empty_body_changes_nothing(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account, description="Kept")
    response = await client.patch(f"{ITEMS}/{item['id']}", json={}, headers=account.headers)
    assert response.status_code == 200, response.text
    assert response.json() == item


@pytest.mark.parametrize("field", ["title", "status", "priority"])
async def test_patch_refuses_explicit_null_for_required_fields(
    client: httpx.AsyncClient, field: str
) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    response = await client.patch(
        f"{ITEMS}/{item['id']}", json={field: None}, headers=account.headers
    )
    body = assert_problem(response, 422, "validation_failed")
    assert any(field in error["msg"] for error in body["errors"]), body
    got = await client.get(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert got.json() == item


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"title": ""}, ["body", "title"]),
        ({"title": "t" * 201}, ["body", "title"]),
        ({"description": "d" * 2001}, ["body", "description"]),
        ({"priority": 0}, ["body", "priority"]),
        ({"priority": 6}, ["body", "priority"]),
        ({"status": "archived"}, ["body", "status"]),
        ({"owner_id": 1}, ["body", "owner_id"]),
        ({"titel": "Typo"}, ["body", "titel"]),
    ],
    ids=[
        "title-empty",
        "title-201",
        "description-2001",
        "priority-0",
        "priority-6",
        "status-unknown",
        "owner_id",
        "unknown-field",
    ],
)
async def test_patch_refuses_invalid_fields_and_keeps_the_item(
    client: httpx.AsyncClient, change: dict[str, Any], loc: list[str]
) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    response = await client.patch(f"{ITEMS}/{item['id']}", json=change, headers=account.headers)
    body = assert_problem(response, 422, "validation_failed")
    assert loc in error_locs(body)
    got = await client.get(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert got.json() == item


async def test_patch_missing_item_is_not_found(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.patch(
        f"{ITEMS}/{2**63 - 1}", json={"title": "Nope"}, headers=account.headers
    )
    assert_problem(response, 404, "not_found")


# --- delete -----------------------------------------------------------------------------------


async def test_delete_removes_the_item(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    kept = await make_item(client, account, title="kept")
    doomed = await make_item(client, account, title="doomed")

    response = await client.delete(f"{ITEMS}/{doomed['id']}", headers=account.headers)
    assert response.status_code == 204
    assert response.content == b""

    assert_problem(
        await client.get(f"{ITEMS}/{doomed['id']}", headers=account.headers), 404, "not_found"
    )
    assert_problem(
        await client.delete(f"{ITEMS}/{doomed['id']}", headers=account.headers), 404, "not_found"
    )
    assert_problem(
        await client.patch(f"{ITEMS}/{doomed['id']}", json={"title": "x"}, headers=account.headers),
        404,
        "not_found",
    )
    page = await list_items(client, account)
    assert ids(page) == [kept["id"]]
    assert page["total"] == 1


# --- ownership --------------------------------------------------------------------------------


def _without_location(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a problem body that must not differ between 'missing' and 'not yours'."""
    return {key: value for key, value in body.items() if key not in {"instance", "request_id"}}


async def _missing_item_id(client: httpx.AsyncClient, account: Account) -> int:
    item = await make_item(client, account, title="ephemeral")
    response = await client.delete(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert response.status_code == 204
    item_id: int = item["id"]
    return item_id


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_someone_elses_item_looks_exactly_like_a_missing_one(
    client: httpx.AsyncClient, method: str
) -> None:
    owner = await make_account(client)
    other = await make_account(client)
    item = await make_item(client, owner, title="Mine")
    missing_id = await _missing_item_id(client, other)
    body = {"title": "Stolen"} if method == "PATCH" else None

    foreign = await client.request(
        method, f"{ITEMS}/{item['id']}", json=body, headers=other.headers
    )
    missing = await client.request(
        method, f"{ITEMS}/{missing_id}", json=body, headers=other.headers
    )

    foreign_body = assert_problem(foreign, 404, "not_found")
    missing_body = assert_problem(missing, 404, "not_found")
    assert _without_location(foreign_body) == _without_location(missing_body)
    assert set(foreign.headers) == set(missing.headers)

    # Nothing happened to the owner's item.
    got = await client.get(f"{ITEMS}/{item['id']}", headers=owner.headers)
    assert got.status_code == 200
    assert got.json() == item


async def test_list_shows_only_your_own_items(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    alice_items = [(await make_item(client, alice, title=f"a{n}"))["id"] for n in range(3)]
    bob_item = await make_item(client, bob, title="b0")

    bob_page = await list_items(client, bob)
    assert ids(bob_page) == [bob_item["id"]]
    assert bob_page["total"] == 1

    alice_page = await list_items(client, alice, sort="created_at")
    assert ids(alice_page) == alice_items
    assert alice_page["total"] == 3

    # Filters that match Alice's items still never reveal them to Bob.
    assert (await list_items(client, bob, q="a"))["total"] == 0


async def test_non_admin_owner_id_filter_still_shows_only_own_items(
    client: httpx.AsyncClient,
) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    await make_item(client, alice, title="alice's")
    bob_item = await make_item(client, bob, title="bob's")

    page = await list_items(client, bob, owner_id=alice.id)
    assert ids(page) == [bob_item["id"]]
    assert page["total"] == 1


async def test_admin_sees_everyones_items(client: httpx.AsyncClient, set_role: SetRole) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    admin = await make_account(client)
    alice_item = await make_item(client, alice, title="alice's")
    bob_item = await make_item(client, bob, title="bob's")

    # Before promotion the future admin is an ordinary user.
    assert (await list_items(client, admin))["total"] == 0
    await set_role(admin.id, Role.admin)

    page = await list_items(client, admin, sort="created_at")
    assert ids(page) == [alice_item["id"], bob_item["id"]]
    assert page["total"] == 2

    got = await client.get(f"{ITEMS}/{alice_item['id']}", headers=admin.headers)
    assert got.status_code == 200
    assert got.json() == alice_item


async def test_admin_filters_by_owner_id(client: httpx.AsyncClient, set_role: SetRole) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    alice_items = [(await make_item(client, alice, title=f"a{n}"))["id"] for n in range(2)]
    bob_item = await make_item(client, bob, title="b0")
    admin_item = await make_item(client, admin, title="admin's")
    assert admin_item["owner_id"] == admin.id

    alice_page = await list_items(client, admin, owner_id=alice.id, sort="created_at")
    assert ids(alice_page) == alice_items
    assert alice_page["total"] == 2
    assert ids(await list_items(client, admin, owner_id=bob.id)) == [bob_item["id"]]
    assert ids(await list_items(client, admin, owner_id=admin.id)) == [admin_item["id"]]
    assert (await list_items(client, admin, owner_id=2**63 - 1))["total"] == 0
    assert (await list_items(client, admin))["total"] == 4


async def test_admin_changes_someone_elses_item_without_taking_it(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    alice = await make_account(client)
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    item = await make_item(client, alice, title="alice's")

    response = await client.patch(
        f"{ITEMS}/{item['id']}", json={"status": "done"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "done"
    assert response.json()["owner_id"] == alice.id

    got = await client.get(f"{ITEMS}/{item['id']}", headers=alice.headers)
    assert got.json()["status"] == "done"
    assert got.json()["owner_id"] == alice.id


async def test_admin_deletes_someone_elses_item(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    alice = await make_account(client)
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    item = await make_item(client, alice)

    response = await client.delete(f"{ITEMS}/{item['id']}", headers=admin.headers)
    assert response.status_code == 204
    assert_problem(
        await client.get(f"{ITEMS}/{item['id']}", headers=alice.headers), 404, "not_found"
    )
    assert (await list_items(client, alice))["total"] == 0


async def test_demoted_admin_loses_access_on_the_next_request(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    alice = await make_account(client)
    admin = await make_account(client)
    item = await make_item(client, alice)
    await set_role(admin.id, Role.admin)
    ok = await client.get(f"{ITEMS}/{item['id']}", headers=admin.headers)
    assert ok.status_code == 200

    await set_role(admin.id, Role.user)
    assert_problem(
        await client.get(f"{ITEMS}/{item['id']}", headers=admin.headers), 404, "not_found"
    )
    assert (await list_items(client, admin))["total"] == 0


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", ITEMS, None),
        ("POST", ITEMS, {"title": "Anonymous"}),
        ("GET", ITEMS + "/{item_id}", None),
        ("PATCH", ITEMS + "/{item_id}", {"title": "Anonymous"}),
        ("DELETE", ITEMS + "/{item_id}", None),
    ],
    ids=["list", "create", "get", "patch", "delete"],
)
@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "not_authenticated"),
        ("Bearer not-a-jwt", "invalid_token"),
        ("Basic dXNlcjpwYXNz", "not_authenticated"),
    ],
    ids=["no-token", "garbage-token", "wrong-scheme"],
)
async def test_items_need_authentication(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    authorization: str | None,
    code: str,
) -> None:
    owner = await make_account(client)
    item = await make_item(client, owner)
    path = path.format(item_id=item["id"])
    headers = {"Authorization": authorization} if authorization else {}

    response = await client.request(method, path, json=body, headers=headers)
    assert_problem(response, 401, code)
    assert response.headers["www-authenticate"] == "Bearer"

    # Nothing was created, changed or deleted.
    page = await list_items(client, owner)
    assert page["items"] == [item]


async def test_unauthenticated_request_for_a_missing_item_is_401_not_404(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(f"{ITEMS}/{2**63 - 1}")
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_logged_out_token_cannot_reach_items(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    await make_item(client, account)
    logout = await client.post(f"{API}/auth/logout", headers=account.headers)
    assert logout.status_code == 204
    response = await client.get(ITEMS, headers=account.headers)
    assert_problem(response, 401, "invalid_token")


# --- account deletion -------------------------------------------------------------------------


async def test_deleting_an_account_deletes_its_items(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    leaver = await make_account(client)
    stayer = await make_account(client)
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    leaver_items = [await make_item(client, leaver, title=f"gone {n}") for n in range(3)]
    stayer_item = await make_item(client, stayer, title="kept")
    assert (await list_items(client, admin, owner_id=leaver.id))["total"] == 3

    response = await client.delete(f"{API}/users/me", headers=leaver.headers)
    assert response.status_code == 204, response.text

    assert (await list_items(client, admin, owner_id=leaver.id))["total"] == 0
    for item in leaver_items:
        got = await client.get(f"{ITEMS}/{item['id']}", headers=admin.headers)
        assert_problem(got, 404, "not_found")
    everyone = await list_items(client, admin)
    assert ids(everyone) == [stayer_item["id"]]
    assert (await client.get(f"{ITEMS}/{stayer_item['id']}", headers=stayer.headers)).json() == (
        stayer_item
    )


# --- text the databases disagree on -----------------------------------------------------------


# PostgreSQL text cannot hold a NUL character (U+0000) while SQLite stores it: input that one
# backend cannot store is a 422 on both.
@pytest.mark.parametrize(
    "fields",
    [{"title": "nul\x00byte"}, {"title": "Fern", "description": "nul\x00byte"}],
    ids=["title", "description"],
)
async def test_create_refuses_nul_characters(
    client: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    account = await make_account(client)
    response = await client.post(ITEMS, json=fields, headers=account.headers)
    assert_problem(response, 422, "validation_failed")


async def test_list_q_with_nul_character_is_refused(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.get(ITEMS, params={"q": "nul\x00byte"}, headers=account.headers)
    assert_problem(response, 422, "validation_failed")


async def test_concurrent_update_and_delete_never_500(client: httpx.AsyncClient) -> None:
    """A PATCH racing a DELETE of the same row: whichever loses gets a 404, never a 500."""
    account = await make_account(client)
    for _ in range(15):
        item = await make_item(client, account)
        patched, deleted = await asyncio.gather(
            client.patch(f"{ITEMS}/{item['id']}", json={"priority": 1}, headers=account.headers),
            client.delete(f"{ITEMS}/{item['id']}", headers=account.headers),
        )
        assert patched.status_code in {200, 404}, patched.text
        assert deleted.status_code in {204, 404}, deleted.text
