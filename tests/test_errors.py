"""Every kind of error leaves the service in one shape: problem JSON with a stable code, and
nothing a client should not see (no rejected input, no traceback, no exception text)."""

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.settings import HttpSettings
from service.users.models import Role
from tests.conftest import SetRole, make_settings, running_client
from tests.factories import API, assert_problem, make_account, unique_email

REGISTER = f"{API}/auth/register"
ITEMS = f"{API}/items"
SMALL_BODY_LIMIT = 2048


# --- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", f"{API}/nope", f"{API}/items/1/nope", "/api/v2/items"])
async def test_unknown_route_is_problem_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", ITEMS, {"GET", "POST"}),
        ("PUT", f"{ITEMS}/1", {"GET", "PATCH", "DELETE"}),
        ("GET", REGISTER, {"POST"}),
    ],
)
async def test_wrong_method_is_problem_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    allow = {part.strip() for part in response.headers["allow"].split(",")}
    # Every method the path accepts, across all its routes (Starlette alone names only the
    # first route's), and HEAD wherever GET is served.
    assert allow == allowed | ({"HEAD"} if "GET" in allowed else set())


# --- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b'{"email": "a@example.com", ', b"{'single': 'quotes'}", b"not json at all", b"{}}"],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        REGISTER, content=content, headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 400, "malformed_json")
    assert "errors" not in body


async def test_malformed_json_on_an_authenticated_route_is_400(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    response = await client.post(
        ITEMS,
        content=b'{"title": "unterminated',
        headers={**account.headers, "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "image/png"],
)
async def test_non_json_content_type_is_415(client: httpx.AsyncClient, content_type: str) -> None:
    payload = b'{"email": "someone@example.com", "password": "correct-horse-battery"}'
    response = await client.post(REGISTER, content=payload, headers={"Content-Type": content_type})
    assert_problem(response, 415, "unsupported_media_type")


async def test_missing_content_type_with_a_body_is_415(client: httpx.AsyncClient) -> None:
    payload = b'{"email": "someone@example.com", "password": "correct-horse-battery"}'
    request = client.build_request("POST", REGISTER, content=payload)
    assert "content-type" not in request.headers
    response = await client.send(request)
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/ld+json"])
async def test_json_content_type_variants_are_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    payload = f'{{"email": "{unique_email()}", "password": "correct-horse-battery"}}'
    response = await client.post(
        REGISTER, content=payload.encode(), headers={"Content-Type": content_type}
    )
    assert response.status_code == 201, response.text


async def test_missing_body_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, headers={"Content-Type": "application/json"})
    body = assert_problem(response, 422, "validation_failed")
    assert ["body"] in [error["loc"] for error in body["errors"]]


# --- body size limit --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def small_limit_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, http=HttpSettings(max_body_bytes=SMALL_BODY_LIMIT))
    async with running_client(settings) as http_client:
        yield http_client


def _register_payload(size: int) -> bytes:
    """A JSON registration body of exactly ``size`` bytes (padding in the full name)."""
    head = f'{{"email": "{unique_email()}", "password": "correct-horse-battery", "full_name": "'
    tail = '"}'
    padding = size - len(head) - len(tail)
    assert padding >= 0
    return (head + "n" * padding + tail).encode()


async def test_body_at_the_limit_gets_through(
    database_url: str, empty_database: AsyncEngine
) -> None:
    payload = _register_payload(SMALL_BODY_LIMIT)
    async with small_limit_client(database_url) as client:
        response = await client.post(
            REGISTER, content=payload, headers={"Content-Type": "application/json"}
        )
    # full_name is capped at 200 characters: the body got through the limit to validation.
    assert_problem(response, 422, "validation_failed")


async def test_body_over_the_limit_with_content_length_is_413(
    database_url: str, empty_database: AsyncEngine
) -> None:
    payload = _register_payload(SMALL_BODY_LIMIT + 1)
    async with small_limit_client(database_url) as client:
        response = await client.post(
            REGISTER, content=payload, headers={"Content-Type": "application/json"}
        )
    assert response.request.headers["content-length"] == str(SMALL_BODY_LIMIT + 1)
    assert_problem(response, 413, "payload_too_large")


async def test_chunked_body_over_the_limit_is_413(
    database_url: str, empty_database: AsyncEngine
) -> None:
    payload = _register_payload(SMALL_BODY_LIMIT * 4)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 512):
            yield payload[start : start + 512]

    async with small_limit_client(database_url) as client:
        response = await client.post(
            REGISTER, content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, "payload_too_large")


async def test_chunked_body_under_the_limit_gets_through(
    database_url: str, empty_database: AsyncEngine
) -> None:
    payload = f'{{"email": "{unique_email()}", "password": "correct-horse-battery"}}'.encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 16):
            yield payload[start : start + 16]

    async with small_limit_client(database_url) as client:
        response = await client.post(
            REGISTER, content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 201, response.text


async def test_oversized_login_form_is_413(database_url: str, empty_database: AsyncEngine) -> None:
    form = {"username": "someone@example.com", "password": "p" * (SMALL_BODY_LIMIT * 2)}
    async with small_limit_client(database_url) as client:
        response = await client.post(f"{API}/auth/token", data=form)
    assert_problem(response, 413, "payload_too_large")


async def test_default_body_limit_lets_ordinary_requests_through(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    response = await client.post(
        ITEMS, json={"title": "Fern", "description": "d" * 2000}, headers=account.headers
    )
    assert response.status_code == 201, response.text


# --- validation errors ------------------------------------------------------------------------


async def test_validation_error_lists_each_problem_without_echoing_input(
    client: httpx.AsyncClient,
) -> None:
    secret_password = "hunter2-the-secret-" * 7  # 133 characters: over the 128 limit
    response = await client.post(
        REGISTER,
        json={
            "email": "not-an-email-address-xyzzy",
            "password": secret_password,
            "favourite_colour": "ultramarine-plugh",
        },
    )
    body = assert_problem(response, 422, "validation_failed")

    errors = body["errors"]
    assert {tuple(error["loc"]) for error in errors} == {
        ("body", "email"),
        ("body", "password"),
        ("body", "favourite_colour"),
    }
    for error in errors:
        assert set(error) == {"loc", "msg", "type"}
        assert all(isinstance(part, str) for part in error["loc"])
        assert error["msg"]
        assert error["type"]
    assert {error["type"] for error in errors} >= {"string_too_long", "extra_forbidden"}

    text = response.text
    assert "hunter2" not in text
    assert "xyzzy" not in text
    assert "ultramarine" not in text


async def test_too_short_password_is_not_echoed(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json={"email": unique_email(), "password": "s3cr3t"})
    body = assert_problem(response, 422, "validation_failed")
    assert [error["loc"] for error in body["errors"]] == [["body", "password"]]
    assert "s3cr3t" not in response.text


async def test_query_validation_error_has_the_same_shape(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.get(ITEMS, params={"limit": "lots-of-them"}, headers=account.headers)
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"] == [
        {"loc": ["query", "limit"], "msg": body["errors"][0]["msg"], "type": "int_parsing"}
    ]
    assert "lots-of-them" not in response.text


# --- ids beyond BIGINT ------------------------------------------------------------------------


@pytest.mark.parametrize("item_id", [2**63, 2**64, 10**30])
async def test_item_id_beyond_bigint_is_422_not_500(
    client: httpx.AsyncClient, item_id: int
) -> None:
    account = await make_account(client)
    for method, json in (("GET", None), ("PATCH", {"title": "x"}), ("DELETE", None)):
        response = await client.request(
            method, f"{ITEMS}/{item_id}", json=json, headers=account.headers
        )
        body = assert_problem(response, 422, "validation_failed")
        assert ["path", "item_id"] in [error["loc"] for error in body["errors"]]


async def test_item_id_at_bigint_max_is_404(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.get(f"{ITEMS}/{2**63 - 1}", headers=account.headers)
    assert_problem(response, 404, "not_found")


async def test_user_id_beyond_bigint_is_422_not_500(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    for method, json in (("GET", None), ("PATCH", {"role": "user"}), ("DELETE", None)):
        response = await client.request(
            method, f"{API}/users/{2**63}", json=json, headers=admin.headers
        )
        body = assert_problem(response, 422, "validation_failed")
        assert ["path", "user_id"] in [error["loc"] for error in body["errors"]]
    at_max = await client.get(f"{API}/users/{2**63 - 1}", headers=admin.headers)
    assert_problem(at_max, 404, "not_found")


async def test_owner_id_filter_beyond_bigint_is_422_not_500(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    response = await client.get(ITEMS, params={"owner_id": 2**63}, headers=admin.headers)
    assert_problem(response, 422, "validation_failed")


# --- authentication errors --------------------------------------------------------------------


async def test_missing_token_is_401_with_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/users/me")
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"] == "Bearer"


# --- unexpected exceptions --------------------------------------------------------------------

SECRET_MESSAGE = "secret SQL details"


@contextlib.asynccontextmanager
async def client_with_failing_route(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url))

    @app.get("/test-only/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET_MESSAGE)

    @app.post("/test-only/boom-after-reading")
    async def boom_after_reading(payload: dict[str, str]) -> None:
        raise RuntimeError(SECRET_MESSAGE + repr(payload))

    async with LifespanManager(app) as manager:
        # Starlette re-raises after sending the 500 so servers can log it; the client must
        # still see the response the app sent.
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http_client:
            yield http_client


async def test_unexpected_exception_is_500_without_details(
    database_url: str, empty_database: AsyncEngine
) -> None:
    async with client_with_failing_route(database_url) as client:
        response = await client.get("/test-only/boom")

    body = assert_problem(response, 500, "internal_error")
    text = response.text
    for leak in (SECRET_MESSAGE, "RuntimeError", "Traceback", ".py", "line "):
        assert leak not in text
    assert "errors" not in body


async def test_unexpected_exception_does_not_echo_the_request_body(
    database_url: str, empty_database: AsyncEngine
) -> None:
    async with client_with_failing_route(database_url) as client:
        response = await client.post(
            "/test-only/boom-after-reading", json={"password": "correct-horse-battery"}
        )
    assert_problem(response, 500, "internal_error")
    assert "correct-horse-battery" not in response.text
    assert SECRET_MESSAGE not in response.text


async def test_app_keeps_serving_after_an_unexpected_exception(
    database_url: str, empty_database: AsyncEngine
) -> None:
    async with client_with_failing_route(database_url) as client:
        failed = await client.get("/test-only/boom")
        assert failed.status_code == 500
        healthy = await client.get("/health/live")
    assert healthy.status_code == 200
