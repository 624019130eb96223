"""Accounts: self-service profile and password, and what only admins may do."""

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import AuthSettings
from service.users.models import Role, User
from tests.conftest import FAST_HASHING, SetRole, make_settings, running_client
from tests.factories import API, Account, assert_problem, login, make_account, make_item


async def make_admin(client: httpx.AsyncClient, set_role: SetRole) -> Account:
    account = await make_account(client)
    await set_role(account.id, Role.admin)
    return account


async def test_read_and_update_me(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    me = (await client.get(f"{API}/users/me", headers=account.headers)).json()
    assert me["email"] == account.email
    assert me["full_name"] is None

    response = await client.patch(
        f"{API}/users/me",
        json={"full_name": "Ada Lovelace", "email": "Ada.New@example.com"},
        headers=account.headers,
    )
    assert response.status_code == 200
    assert response.json()["full_name"] == "Ada Lovelace"
    assert response.json()["email"] == "ada.new@example.com"
    assert (await login(client, "ada.new@example.com", account.password)).status_code == 200


async def test_update_me_refuses_taken_email_nulls_and_role(client: httpx.AsyncClient) -> None:
    first = await make_account(client)
    second = await make_account(client)
    taken = await client.patch(
        f"{API}/users/me", json={"email": first.email.upper()}, headers=second.headers
    )
    assert_problem(taken, 409, "email_taken")
    for payload in ({"email": None}, {"role": "admin"}, {"is_active": False}):
        response = await client.patch(f"{API}/users/me", json=payload, headers=second.headers)
        assert_problem(response, 422, "validation_failed")


async def test_change_password_needs_current_and_ends_sessions(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    wrong = await client.post(
        f"{API}/users/me/password",
        json={"current_password": "not-it-at-all", "new_password": "a-new-password-1"},
        headers=account.headers,
    )
    assert_problem(wrong, 400, "wrong_password")

    changed = await client.post(
        f"{API}/users/me/password",
        json={"current_password": account.password, "new_password": "a-new-password-1"},
        headers=account.headers,
    )
    assert changed.status_code == 204
    assert_problem(
        await client.get(f"{API}/users/me", headers=account.headers), 401, "invalid_token"
    )
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert_problem(refreshed, 401, "invalid_token")
    assert_problem(await login(client, account.email, account.password), 401, "invalid_credentials")
    assert (await login(client, account.email, "a-new-password-1")).status_code == 200


async def test_delete_me_removes_account_and_items(
    client: httpx.AsyncClient, empty_database: AsyncEngine
) -> None:
    account = await make_account(client)
    await make_item(client, account)
    assert (await client.delete(f"{API}/users/me", headers=account.headers)).status_code == 204
    assert_problem(await login(client, account.email, account.password), 401, "invalid_credentials")
    async with empty_database.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(User)) == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/users"),
        ("GET", "/users/1"),
        ("PATCH", "/users/1"),
        ("DELETE", "/users/1"),
    ],
)
async def test_admin_routes_refuse_users(client: httpx.AsyncClient, method: str, path: str) -> None:
    account = await make_account(client)
    kwargs = {"json": {"role": "admin"}} if method == "PATCH" else {}
    response = await client.request(method, f"{API}{path}", headers=account.headers, **kwargs)
    assert_problem(response, 403, "forbidden")
    anonymous = await client.request(method, f"{API}{path}", **kwargs)
    assert_problem(anonymous, 401, "not_authenticated")


async def test_admin_lists_users_with_pagination(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_admin(client, set_role)
    others = [await make_account(client) for _ in range(4)]
    page = (await client.get(f"{API}/users?limit=2&offset=1", headers=admin.headers)).json()
    assert page["total"] == 5
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [user["id"] for user in page["items"]] == [others[0].id, others[1].id]
    too_big = await client.get(f"{API}/users?limit=1000", headers=admin.headers)
    assert_problem(too_big, 422, "validation_failed")


async def test_admin_gets_updates_and_deletes_users(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_admin(client, set_role)
    user = await make_account(client)
    got = await client.get(f"{API}/users/{user.id}", headers=admin.headers)
    assert got.json()["email"] == user.email
    assert_problem(await client.get(f"{API}/users/999999", headers=admin.headers), 404, "not_found")

    promoted = await client.patch(
        f"{API}/users/{user.id}", json={"role": "admin"}, headers=admin.headers
    )
    assert promoted.json()["role"] == "admin"
    assert (await client.get(f"{API}/users", headers=user.headers)).status_code == 200

    deleted = await client.delete(f"{API}/users/{user.id}", headers=admin.headers)
    assert deleted.status_code == 204
    assert_problem(
        await client.get(f"{API}/users/{user.id}", headers=admin.headers), 404, "not_found"
    )


async def test_admin_deactivation_ends_sessions_and_blocks_login(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_admin(client, set_role)
    user = await make_account(client)
    response = await client.patch(
        f"{API}/users/{user.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.json()["is_active"] is False
    assert_problem(await client.get(f"{API}/users/me", headers=user.headers), 401, "invalid_token")
    assert_problem(await login(client, user.email, user.password), 403, "inactive_user")

    await client.patch(f"{API}/users/{user.id}", json={"is_active": True}, headers=admin.headers)
    assert (await login(client, user.email, user.password)).status_code == 200


async def test_last_admin_cannot_be_removed(client: httpx.AsyncClient, set_role: SetRole) -> None:
    admin = await make_admin(client, set_role)
    for payload in ({"role": "user"}, {"is_active": False}):
        response = await client.patch(
            f"{API}/users/{admin.id}", json=payload, headers=admin.headers
        )
        assert_problem(response, 409, "last_admin")
    assert_problem(await client.delete(f"{API}/users/me", headers=admin.headers), 409, "last_admin")

    second = await make_admin(client, set_role)
    demoted = await client.patch(
        f"{API}/users/{admin.id}", json={"role": "user"}, headers=second.headers
    )
    assert demoted.json()["role"] == "user"


async def test_bootstrap_admin_is_created_then_promoted(
    database_url: str, empty_database: AsyncEngine
) -> None:
    auth = AuthSettings(
        **FAST_HASHING,
        bootstrap_admin_email="Root@Example.com",
        bootstrap_admin_password="bootstrap-password-1",  # type: ignore[arg-type]
    )
    settings = make_settings(database_url, auth=auth)
    async with running_client(settings) as client:
        tokens = (await login(client, "root@example.com", "bootstrap-password-1")).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = (await client.get(f"{API}/users/me", headers=headers)).json()
        assert me["role"] == "admin"
        # A demoted or deactivated bootstrap admin is restored at the next start.
        second = await make_account(client)
        await client.patch(f"{API}/users/{second.id}", json={"role": "admin"}, headers=headers)
        await client.patch(f"{API}/users/{me['id']}", json={"is_active": False}, headers=headers)
    async with running_client(settings) as client:
        assert (await login(client, "root@example.com", "bootstrap-password-1")).status_code == 200
    async with empty_database.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(User).where(User.role == Role.admin)
        )
        assert count == 2


async def test_bootstrap_admin_without_password_fails_startup(
    database_url: str, empty_database: AsyncEngine
) -> None:
    auth = AuthSettings(**FAST_HASHING, bootstrap_admin_email="root@example.com")
    with pytest.raises(ValueError, match="BOOTSTRAP_ADMIN_PASSWORD"):
        async with running_client(make_settings(database_url, auth=auth)):
            pass
