"""The token lifecycle: login, refresh rotation, reuse detection, logout, tampering."""

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth.models import RefreshToken
from service.auth.security import hash_refresh_token
from service.settings import DEVELOPMENT_JWT_SECRET, AuthSettings
from service.users.models import User
from tests.conftest import FAST_HASHING, UpdateUser, make_settings, running_client
from tests.factories import (
    API,
    DEFAULT_PASSWORD,
    assert_problem,
    login,
    make_account,
    register,
    unique_email,
)


async def me(client: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {access_token}"})


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": refresh_token})


async def test_register_then_login_returns_bearer_tokens(client: httpx.AsyncClient) -> None:
    user = await register(client, email="Ada@Example.com")
    assert user["email"] == "ada@example.com"
    assert user["role"] == "user"
    assert "password" not in json.dumps(user)
    assert "hashed" not in json.dumps(user)

    response = await login(client, "ADA@example.com", DEFAULT_PASSWORD)
    assert response.status_code == 200
    tokens = response.json()
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    assert (await me(client, tokens["access_token"])).json()["id"] == user["id"]


async def test_access_token_claims(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    assert jwt.get_unverified_header(account.access_token)["alg"] == "HS256"
    assert claims["sub"] == str(account.id)
    assert {"exp", "iat", "jti", "sid", "iss"} <= claims.keys()
    assert claims["exp"] - claims["iat"] == 900


async def test_register_twice_is_a_conflict(client: httpx.AsyncClient) -> None:
    await register(client, email="twice@example.com")
    response = await client.post(
        f"{API}/auth/register", json={"email": "TWICE@example.com", "password": DEFAULT_PASSWORD}
    )
    assert_problem(response, 409, "email_taken")


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "not-an-email", "password": DEFAULT_PASSWORD},
        {"email": "short@example.com", "password": "1234567"},
        {"email": "long@example.com", "password": "x" * 129},
        {"email": "a@example.com", "password": DEFAULT_PASSWORD, "role": "admin"},
        {"email": "b@example.com", "password": DEFAULT_PASSWORD, "full_name": ""},
        {"email": "c@example.com"},
    ],
    ids=["bad-email", "short-password", "long-password", "role-field", "empty-name", "no-pw"],
)
async def test_register_validates(client: httpx.AsyncClient, payload: dict[str, str]) -> None:
    response = await client.post(f"{API}/auth/register", json=payload)
    assert_problem(response, 422, "validation_failed")


@pytest.mark.parametrize("password", ["wrong-password", "x" * 500])
async def test_wrong_password_and_unknown_email_look_the_same(
    client: httpx.AsyncClient, password: str
) -> None:
    account = await make_account(client)
    wrong = await login(client, account.email, password)
    unknown = await login(client, "nobody@example.com", DEFAULT_PASSWORD)
    body = assert_problem(wrong, 401, "invalid_credentials")
    assert body["detail"] == assert_problem(unknown, 401, "invalid_credentials")["detail"]
    assert wrong.headers["www-authenticate"] == "Bearer"


async def test_refresh_rotates_and_old_access_keeps_working(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await refresh(client, account.refresh_token)
    assert response.status_code == 200
    rotated = response.json()
    assert rotated["refresh_token"] != account.refresh_token
    assert rotated["access_token"] != account.access_token
    assert (await me(client, rotated["access_token"])).status_code == 200
    # Rotation keeps the session: the previous access token stays valid until it expires.
    assert (await me(client, account.access_token)).status_code == 200
    second = await refresh(client, rotated["refresh_token"])
    assert second.status_code == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    rotated = (await refresh(client, account.refresh_token)).json()

    reuse = await refresh(client, account.refresh_token)
    assert_problem(reuse, 401, "refresh_token_reused")

    # Everything issued in that session is dead now, including the legitimate newest pair.
    assert_problem(await refresh(client, rotated["refresh_token"]), 401, "invalid_token")
    assert_problem(await me(client, rotated["access_token"]), 401, "invalid_token")
    assert_problem(await me(client, account.access_token), 401, "invalid_token")


async def test_reuse_in_one_session_leaves_other_sessions_alone(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    other = (await login(client, account.email, account.password)).json()
    await refresh(client, account.refresh_token)
    await refresh(client, account.refresh_token)
    assert (await me(client, other["access_token"])).status_code == 200
    assert (await refresh(client, other["refresh_token"])).status_code == 200


async def test_concurrent_refreshes_with_one_token_cannot_both_win(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    first, second = await asyncio.gather(
        refresh(client, account.refresh_token), refresh(client, account.refresh_token)
    )
    assert sorted([first.status_code, second.status_code]) == [200, 401]


async def test_unknown_refresh_token_is_refused(client: httpx.AsyncClient) -> None:
    assert_problem(await refresh(client, "x" * 43), 401, "invalid_token")


async def test_expired_refresh_token_is_refused(
    client: httpx.AsyncClient, empty_database: AsyncEngine
) -> None:
    account = await make_account(client)
    async with empty_database.begin() as connection:
        await connection.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == hash_refresh_token(account.refresh_token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert_problem(await refresh(client, account.refresh_token), 401, "invalid_token")


async def test_logout_ends_access_and_refresh_tokens(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.post(f"{API}/auth/logout", headers=account.headers)
    assert response.status_code == 204
    assert_problem(await me(client, account.access_token), 401, "invalid_token")
    assert_problem(await refresh(client, account.refresh_token), 401, "invalid_token")


def _forge(claims: dict[str, object], *, key: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _unsigned(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_tampered_tokens_are_refused(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    admin_claims = {**claims, "sub": "1", "role": "admin"}
    header, payload, signature = account.access_token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    candidates = {
        "alg-none": _unsigned(admin_claims),
        "wrong-key": _forge(admin_claims, key="another-secret-of-at-least-32-bytes!!"),
        "other-alg": _forge(claims, key=DEVELOPMENT_JWT_SECRET, algorithm="HS512"),
        "bad-signature": f"{header}.{payload}.{flipped}",
        "garbage": "not.a.jwt",
        "no-sid": _forge(
            {k: v for k, v in claims.items() if k != "sid"}, key=DEVELOPMENT_JWT_SECRET
        ),
        "wrong-issuer": _forge({**claims, "iss": "evil"}, key=DEVELOPMENT_JWT_SECRET),
    }
    for name, token in candidates.items():
        response = await me(client, token)
        assert response.status_code == 401, name
        assert_problem(response, 401, "invalid_token")


async def test_missing_or_non_bearer_authorization(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{API}/users/me"), 401, "not_authenticated")
    basic = await client.get(f"{API}/users/me", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert_problem(basic, 401, "not_authenticated")


async def test_expired_access_token_is_refused(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    now = datetime.now(UTC)
    expired = {**claims, "iat": now - timedelta(minutes=20), "exp": now - timedelta(seconds=1)}
    token = _forge(expired, key=DEVELOPMENT_JWT_SECRET)
    assert_problem(await me(client, token), 401, "invalid_token")


async def test_inactive_user_cannot_log_in_or_use_tokens(
    client: httpx.AsyncClient, update_user: UpdateUser
) -> None:
    account = await make_account(client)
    await update_user(account.id, is_active=False)
    assert_problem(await me(client, account.access_token), 403, "inactive_user")
    assert_problem(await login(client, account.email, account.password), 403, "inactive_user")
    assert_problem(await refresh(client, account.refresh_token), 401, "invalid_token")


async def test_login_rehashes_when_parameters_change(
    database_url: str, empty_database: AsyncEngine
) -> None:
    email = unique_email()

    async def stored_hash() -> str:
        async with empty_database.connect() as connection:
            return str(
                await connection.scalar(select(User.hashed_password).where(User.email == email))
            )

    async with running_client(make_settings(database_url)) as client:
        await register(client, email=email)
    old_hash = await stored_hash()
    assert "m=64," in old_hash

    stronger = AuthSettings(**{**FAST_HASHING, "argon2_memory_cost_kib": 128})
    async with running_client(make_settings(database_url, auth=stronger)) as client:
        assert (await login(client, email, DEFAULT_PASSWORD)).status_code == 200
        new_hash = await stored_hash()
        assert new_hash.startswith("$argon2id$")
        assert "m=128," in new_hash
        # The upgraded hash still verifies the same password.
        assert (await login(client, email, DEFAULT_PASSWORD)).status_code == 200
        assert await stored_hash() == new_hash


async def test_token_endpoint_works_as_oauth2_password_flow(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == "/api/v1/auth/token"
    assert (await client.get("/docs")).status_code == 200
