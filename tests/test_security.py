"""Security hardening, in process on both backends: login limits under concurrency, no pooled
connection held while a password is hashed, response headers, API docs in production, and the
client address taken from trusted proxies only."""

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from service.middleware import TrustedProxyMiddleware
from service.settings import (
    AuthSettings,
    Environment,
    HttpSettings,
    RateLimitSettings,
    Settings,
)
from tests.conftest import FAST_HASHING, RunningApp, make_settings, running_app
from tests.factories import API, DEFAULT_PASSWORD, assert_problem, login, make_account, register

PRODUCTION_SECRET = "a-production-secret-of-more-than-32-bytes-" + "x" * 16


async def test_concurrent_guesses_get_at_most_the_limit_checked(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    limits = RateLimitSettings(max_failures_per_client=5)
    # Capacity out of reach: the limit alone decides here.
    auth = AuthSettings(**FAST_HASHING, max_concurrent_password_checks=64)
    async with running_app(settings.model_copy(update={"rate_limit": limits, "auth": auth})) as app:
        user = await register(app.client)
        responses = await asyncio.gather(
            *(login(app.client, user["email"], f"guess-{n}") for n in range(30))
        )
        codes = [response.status_code for response in responses]
        assert codes.count(401) == 5, codes
        assert codes.count(429) == 25, codes
        # Blocked now, the right password included.
        assert_problem(
            await login(app.client, user["email"], DEFAULT_PASSWORD), 429, "too_many_requests"
        )


async def test_a_right_password_gives_its_count_back(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    limits = RateLimitSettings(max_failures_per_client=3)
    async with running_app(settings.model_copy(update={"rate_limit": limits})) as app:
        user = await register(app.client)
        for _ in range(2):
            assert (await login(app.client, user["email"], "wrong")).status_code == 401
        for _ in range(5):
            assert (await login(app.client, user["email"], DEFAULT_PASSWORD)).status_code == 200
        assert (await login(app.client, user["email"], "wrong")).status_code == 401
        assert (await login(app.client, user["email"], "wrong")).status_code == 429


async def test_the_owner_is_not_locked_out_from_another_address(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    limits = RateLimitSettings(max_failures_per_client=3, max_failures_per_account=6)
    async with running_app(settings.model_copy(update={"rate_limit": limits})) as app:
        user = await register(app.client)

        async def attempt(password: str, address: str) -> int:
            response = await app.client.post(
                f"{API}/auth/token",
                data={"username": user["email"], "password": password},
                headers={"X-Forwarded-For": address},
            )
            return response.status_code

        for _ in range(3):
            assert await attempt("wrong", "198.51.100.1") == 401
        assert await attempt(DEFAULT_PASSWORD, "198.51.100.1") == 429
        assert await attempt(DEFAULT_PASSWORD, "203.0.113.5") == 200
        # The account-wide ceiling still stops guessing from many addresses.
        for address in ("198.51.100.2", "198.51.100.3", "198.51.100.4"):
            assert await attempt("wrong", address) == 401
        assert await attempt(DEFAULT_PASSWORD, "203.0.113.5") == 429


async def held_while_hashing(app: RunningApp, request: Callable[[], Any]) -> int:
    """How many pooled connections the request holds while its password is being hashed."""
    passwords = app.state["passwords"]
    hashing = asyncio.Event()
    original = passwords.executor.submit

    def submit(*args: Any) -> Any:
        hashing.set()
        return original(*args)

    passwords.executor.submit = submit  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(request())
        await hashing.wait()
        checked_out = app.state["engine"].pool.checkedout()  # type: ignore[attr-defined]
        await task
    finally:
        del passwords.executor.submit
    return int(checked_out)


async def test_no_pooled_connection_waits_for_argon2(app: RunningApp) -> None:
    user = await register(app.client)
    account = await make_account(app.client)
    assert await held_while_hashing(app, lambda: login(app.client, user["email"], "wrong")) == 0
    assert await held_while_hashing(app, lambda: register(app.client)) == 0
    change = {"current_password": DEFAULT_PASSWORD, "new_password": "a-new-password-1"}
    assert (
        await held_while_hashing(
            app,
            lambda: app.client.post(
                f"{API}/users/me/password", json=change, headers=account.headers
            ),
        )
        == 0
    )


async def test_password_checks_over_capacity_are_refused_at_once(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    auth = AuthSettings(**FAST_HASHING, max_concurrent_password_checks=1)
    async with running_app(settings.model_copy(update={"auth": auth})) as app:
        user = await register(app.client)
        app.state["passwords"].running = 1  # one check under way
        busy = await login(app.client, user["email"], DEFAULT_PASSWORD)
        app.state["passwords"].running = 0
        assert_problem(busy, 503, "server_busy")
        assert busy.headers["retry-after"] == "1"
        # Not counted as a failure: the password was never checked.
        assert (await login(app.client, user["email"], DEFAULT_PASSWORD)).status_code == 200


async def test_token_responses_are_never_cached(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    token = await login(client, account.email, account.password)
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    for response in (token, refreshed):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"


@pytest.mark.parametrize("path", ["/health/live", "/nowhere", f"{API}/users/me", "/openapi.json"])
async def test_every_response_says_nosniff(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.headers["x-content-type-options"] == "nosniff"


def test_api_docs_are_off_in_production_unless_enabled() -> None:
    production = {"environment": Environment.production, "auth": {"jwt_secret": PRODUCTION_SECRET}}
    assert not Settings(_env_file=None, **production).api_docs_enabled  # type: ignore[call-arg,arg-type]
    enabled = Settings(_env_file=None, **production, http={"api_docs": True})  # type: ignore[call-arg,arg-type]
    assert enabled.api_docs_enabled
    assert Settings(_env_file=None).api_docs_enabled  # type: ignore[call-arg]


@pytest.mark.parametrize("api_docs", [False, True])
async def test_api_docs_are_served_only_when_enabled(
    database_url: str, empty_database: AsyncEngine, api_docs: bool
) -> None:
    # Production's own logging setup would outlive the test: the switch is tested in its place.
    async with running_app(
        make_settings(database_url, http=HttpSettings(api_docs=api_docs))
    ) as app:
        for path in ("/openapi.json", "/docs", "/redoc"):
            response = await app.client.get(path)
            assert response.status_code == (200 if api_docs else 404), path
        assert (await app.client.get("/health/live")).status_code == 200


async def client_address(
    trusted: str, peer: str, headers: list[tuple[bytes, bytes]]
) -> tuple[str, str, int]:
    """(client address, scheme, rejections) as the app behind the middleware sees them."""
    seen: dict[str, Any] = {}
    rejected = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope)

    def on_rejected() -> None:
        nonlocal rejected
        rejected += 1

    middleware = TrustedProxyMiddleware(app, trusted=trusted, on_rejected=on_rejected)
    scope = {"type": "http", "client": (peer, 5000), "scheme": "http", "headers": headers}
    await middleware(scope, None, None)  # type: ignore[arg-type]
    return seen["client"][0], seen["scheme"], rejected


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded_for", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", "198.51.100.7", "198.51.100.7"),
        # The right-most entry: the one the trusted proxy wrote; the rest the client made up.
        ("127.0.0.1", "127.0.0.1", "203.0.113.1, 198.51.100.7", "198.51.100.7"),
        # Trusted proxies in the chain are skipped, by address or by network.
        ("127.0.0.1,10.0.0.0/8", "127.0.0.1", "198.51.100.7, 10.1.2.3", "198.51.100.7"),
        ("*", "192.0.2.9", "203.0.113.1, 198.51.100.7", "198.51.100.7"),
        ("127.0.0.1", "127.0.0.1", "2001:db8::1", "2001:db8::1"),
        # From anyone else the header is not believed.
        ("127.0.0.1", "192.0.2.9", "198.51.100.7", "192.0.2.9"),
    ],
)
async def test_the_client_address_comes_from_trusted_proxies(
    trusted: str, peer: str, forwarded_for: str, expected: str
) -> None:
    headers = [(b"x-forwarded-for", forwarded_for.encode())]
    assert await client_address(trusted, peer, headers) == (expected, "http", 0)


@pytest.mark.parametrize(
    "forwarded_for",
    ["<script>alert(1)</script>", "a" * 8000, "198.51.100.7, not-an-address", "", "1.2.3.4:80"],
)
async def test_a_forwarded_for_that_is_no_address_is_ignored_and_counted(
    forwarded_for: str,
) -> None:
    headers = [(b"x-forwarded-for", forwarded_for.encode())]
    assert await client_address("127.0.0.1", "127.0.0.1", headers) == ("127.0.0.1", "http", 1)


async def test_forwarded_proto_is_taken_from_trusted_proxies_only() -> None:
    headers = [(b"x-forwarded-proto", b"https")]
    assert await client_address("127.0.0.1", "127.0.0.1", headers) == ("127.0.0.1", "https", 0)
    assert await client_address("127.0.0.1", "192.0.2.9", headers) == ("192.0.2.9", "http", 0)
    bogus = [(b"x-forwarded-proto", b"javascript")]
    assert await client_address("127.0.0.1", "127.0.0.1", bogus) == ("127.0.0.1", "http", 0)
