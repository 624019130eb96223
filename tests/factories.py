"""Test data made through the public API, the way a client would make it."""

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import httpx

API = "/api/v1"
DEFAULT_PASSWORD = "correct-horse-battery"
_counter = itertools.count(1)


@dataclass
class Account:
    id: int
    email: str
    password: str
    access_token: str
    refresh_token: str
    headers: dict[str, str] = field(default_factory=dict)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}{next(_counter)}@example.com"


async def register(
    client: httpx.AsyncClient, *, email: str | None = None, password: str = DEFAULT_PASSWORD
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/auth/register", json={"email": email or unique_email(), "password": password}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(f"{API}/auth/token", data={"username": email, "password": password})


async def make_account(
    client: httpx.AsyncClient, *, email: str | None = None, password: str = DEFAULT_PASSWORD
) -> Account:
    user = await register(client, email=email, password=password)
    response = await login(client, user["email"], password)
    assert response.status_code == 200, response.text
    tokens = response.json()
    return Account(
        id=user["id"],
        email=user["email"],
        password=password,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )


async def make_item(client: httpx.AsyncClient, account: Account, **fields: Any) -> dict[str, Any]:
    payload = {"title": "Water the ferns", **fields}
    response = await client.post(f"{API}/items", json=payload, headers=account.headers)
    assert response.status_code == 201, response.text
    item: dict[str, Any] = response.json()
    return item


async def make_service_account(
    client: httpx.AsyncClient, owner: Account, *, name: str = "deploy-bot"
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/service-accounts", json={"name": name}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    return account


@dataclass
class IssuedKey:
    """An API key as its creator sees it, the one time its secret is shown."""

    id: str
    service_account_id: int
    key: str
    scopes: list[str]
    headers: dict[str, str] = field(default_factory=dict)


async def make_api_key(
    client: httpx.AsyncClient,
    owner: Account,
    *scopes: str,
    service_account_id: int | None = None,
    **fields: Any,
) -> IssuedKey:
    """A key with ``scopes`` (items:read if none) on one of the owner's service accounts, a new
    one unless ``service_account_id`` names it."""
    if service_account_id is None:
        service_account_id = (await make_service_account(client, owner))["id"]
    payload = {"name": "ci", "scopes": list(scopes or ["items:read"]), **fields}
    response = await client.post(
        f"{API}/service-accounts/{service_account_id}/keys", json=payload, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return issued_key(response.json())


def issued_key(body: dict[str, Any]) -> IssuedKey:
    """The key in a 201 answer (a new or a rotated key)."""
    return IssuedKey(
        id=body["id"],
        service_account_id=body["service_account_id"],
        key=body["key"],
        scopes=body["scopes"],
        headers={"X-API-Key": body["key"]},
    )


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Every error has one shape: RFC 9457 problem details with a stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


async def wait_for_job(
    client: httpx.AsyncClient,
    account: Account,
    job_id: int,
    *,
    until: tuple[str, ...] = ("succeeded", "failed"),
    timeout_seconds: float = 30.0,
) -> dict[str, Any]:
    """Polls the job until its status is one of ``until`` (a generous bound, not a timing)."""
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    while True:
        response = await client.get(f"{API}/jobs/{job_id}", headers=account.headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in until:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job stuck: {job}"
        await asyncio.sleep(0.05)


async def finished_job(
    client: httpx.AsyncClient, account: Account, path: str, **request: Any
) -> dict[str, Any]:
    """Starts a job with a POST to ``path`` and waits for it to end (jobs run in the app)."""
    response = await client.post(f"{API}{path}", headers=account.headers, **request)
    assert response.status_code in (200, 202), response.text
    return await wait_for_job(client, account, response.json()["id"])
