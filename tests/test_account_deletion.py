"""A deleted account leaves nothing behind for whoever comes next: no cached answer survives it,
and neither its user id nor its item ids are handed out again."""

import httpx
import pytest

from service.users.models import Role
from tests.conftest import SetRole, UpdateUser
from tests.factories import (
    API,
    DEFAULT_PASSWORD,
    Account,
    assert_problem,
    login,
    make_account,
    make_item,
    register,
)

ITEMS = f"{API}/items"


async def make_account_with_cached_items(client: httpx.AsyncClient) -> tuple[Account, list[int]]:
    """An account whose item list and items have been read, so each answer is cached."""
    account = await make_account(client)
    item_ids = [(await make_item(client, account, title=f"private {n}"))["id"] for n in range(2)]
    for path in [ITEMS] + [f"{ITEMS}/{item_id}" for item_id in item_ids]:
        response = await client.get(path, headers=account.headers)
        assert response.status_code == 200, response.text
    return account, item_ids


async def assert_sees_nothing_of(
    client: httpx.AsyncClient, account: Account, item_ids: list[int]
) -> None:
    listing = await client.get(ITEMS, headers=account.headers)
    assert listing.status_code == 200, listing.text
    assert listing.json()["items"] == []
    assert listing.json()["total"] == 0
    for item_id in item_ids:
        response = await client.get(f"{ITEMS}/{item_id}", headers=account.headers)
        assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("same_email", [True, False], ids=["same-email", "new-email"])
async def test_a_new_account_sees_nothing_of_a_deleted_one(
    client: httpx.AsyncClient, same_email: bool
) -> None:
    leaver, item_ids = await make_account_with_cached_items(client)
    assert (await client.delete(f"{API}/users/me", headers=leaver.headers)).status_code == 204

    newcomer = await make_account(client, email=leaver.email if same_email else None)
    await assert_sees_nothing_of(client, newcomer, item_ids)


async def test_an_account_an_admin_deleted_leaves_nothing_to_the_next(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    leaver, item_ids = await make_account_with_cached_items(client)
    deleted = await client.delete(f"{API}/users/{leaver.id}", headers=admin.headers)
    assert deleted.status_code == 204, deleted.text

    newcomer = await make_account(client)
    await assert_sees_nothing_of(client, newcomer, item_ids)


async def test_an_account_given_a_deleted_accounts_id_sees_nothing_cached(
    client: httpx.AsyncClient, update_user: UpdateUser
) -> None:
    """Ids are never reused, but a restored backup or a reset sequence can bring one back: the
    cache must not depend on that."""
    leaver, item_ids = await make_account_with_cached_items(client)
    assert (await client.delete(f"{API}/users/me", headers=leaver.headers)).status_code == 204

    newcomer = await register(client)  # no login yet: no session row refers to its id
    await update_user(newcomer["id"], id=leaver.id)
    tokens = (await login(client, newcomer["email"], DEFAULT_PASSWORD)).json()
    revived = Account(
        id=leaver.id,
        email=newcomer["email"],
        password=DEFAULT_PASSWORD,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    await assert_sees_nothing_of(client, revived, item_ids)


async def test_a_deleted_users_id_is_never_given_again(client: httpx.AsyncClient) -> None:
    leaver = await make_account(client)
    assert (await client.delete(f"{API}/users/me", headers=leaver.headers)).status_code == 204
    assert (await register(client))["id"] > leaver.id


async def test_a_deleted_items_id_is_never_given_again(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    response = await client.delete(f"{ITEMS}/{item['id']}", headers=account.headers)
    assert response.status_code == 204, response.text
    assert (await make_item(client, account))["id"] > item["id"]
