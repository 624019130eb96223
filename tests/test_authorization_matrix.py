"""Who may do what: every /api/v1 operation against every kind of credential, in one table.
Changing any route's authorization changes a cell here; a new operation without a row fails
the coverage test.

The paths name the user's own things (their item, their service account and key), so the
user's columns show what a credential may do for its owner and the admin's columns what an
admin may do to someone else's. Every request is valid apart from its credential: an answer
is about authorization alone."""

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.main import create_app
from service.settings import RealtimeSettings, Settings
from service.users.models import Role
from tests.conftest import Backend, SetRole, make_settings
from tests.factories import (
    API,
    DEFAULT_PASSWORD,
    Account,
    assert_problem,
    finished_job,
    login,
    make_account,
    make_api_key,
    make_item,
    make_service_account,
    register,
    unique_email,
)

ALL_BUT_ADMIN = ("items:read", "items:write", "profile:read")


@dataclass(frozen=True)
class Credential:
    name: str
    admin: bool | None  # the persona's role; None: no persona, no credential
    scopes: tuple[str, ...] | None = None  # an API key's; None: a login session


CREDENTIALS = (
    Credential("anonymous", admin=None),
    Credential("user session", admin=False),
    Credential("user key", admin=False, scopes=ALL_BUT_ADMIN),
    Credential("user read-only key", admin=False, scopes=("items:read",)),
    Credential("admin session", admin=True),
    Credential("admin key", admin=True, scopes=(*ALL_BUT_ADMIN, "admin")),
    Credential("admin key without admin scope", admin=True, scopes=ALL_BUT_ADMIN),
)

Outcome = int | tuple[int, str]  # a success's status, or an error's status and problem code
LOGIN: Outcome = (401, "not_authenticated")
SCOPE: Outcome = (403, "insufficient_scope")
ADMIN: Outcome = (403, "forbidden")  # the admin role is missing
HIDDEN: Outcome = (404, "not_found")  # someone else's, answered like a missing one

SA = "/service-accounts/{account_id}"
KEY = f"{SA}/keys/{{key_id}}"
# Columns, as CREDENTIALS: anonymous, user session, user key, user read-only key, admin
# session, admin key, admin key without the admin scope.
# fmt: off
MATRIX: dict[tuple[str, str], tuple[Outcome, ...]] = {
    #                                  anon   user    key     read    admin   a.key   a.plain
    ("POST", "/items"):               (LOGIN,  201,    201,    SCOPE,  201,    201,    201),
    ("GET", "/items"):                (LOGIN,  200,    200,    200,    200,    200,    200),
    ("GET", "/items/{item_id}"):      (LOGIN,  200,    200,    200,    200,    200,    HIDDEN),
    ("PATCH", "/items/{item_id}"):    (LOGIN,  200,    200,    SCOPE,  200,    200,    HIDDEN),
    ("DELETE", "/items/{item_id}"):   (LOGIN,  204,    204,    SCOPE,  204,    204,    HIDDEN),
    ("POST", "/items/exports"):       (LOGIN,  202,    202,    202,    202,    202,    202),
    ("POST", "/items/imports"):       (LOGIN,  202,    202,    SCOPE,  202,    202,    202),
    # Jobs and their files are their owner's alone: to an admin too, another's is a 404.
    ("GET", "/jobs/{job_id}"):        (LOGIN,  200,    200,    200,    HIDDEN, HIDDEN, HIDDEN),
    ("GET", "/jobs/{job_id}/file"):   (LOGIN,  200,    200,    200,    HIDDEN, HIDDEN, HIDDEN),
    ("GET", "/jobs/{job_id}/events"): (LOGIN,  200,    200,    200,    HIDDEN, HIDDEN, HIDDEN),
    ("POST", "/auth/stream-tickets"): (LOGIN,  201,    SCOPE,  SCOPE,  201,    SCOPE,  SCOPE),
    ("GET", "/events"):               (LOGIN,  200,    200,    200,    200,    200,    200),
    ("POST", "/auth/register"):       (201,    201,    201,    201,    201,    201,    201),
    ("POST", "/auth/token"):          (200,    200,    200,    200,    200,    200,    200),
    ("POST", "/auth/refresh"):        (200,    200,    200,    200,    200,    200,    200),
    ("POST", "/auth/logout"):         (LOGIN,  204,    SCOPE,  SCOPE,  204,    SCOPE,  SCOPE),
    ("GET", "/users/me"):             (LOGIN,  200,    200,    SCOPE,  200,    200,    200),
    ("PATCH", "/users/me"):           (LOGIN,  200,    SCOPE,  SCOPE,  200,    SCOPE,  SCOPE),
    ("POST", "/users/me/password"):   (LOGIN,  204,    SCOPE,  SCOPE,  204,    SCOPE,  SCOPE),
    ("DELETE", "/users/me"):          (LOGIN,  204,    SCOPE,  SCOPE,  204,    SCOPE,  SCOPE),
    ("GET", "/users"):                (LOGIN,  ADMIN,  SCOPE,  SCOPE,  200,    200,    SCOPE),
    ("GET", "/users/{user_id}"):      (LOGIN,  ADMIN,  SCOPE,  SCOPE,  200,    200,    SCOPE),
    ("PATCH", "/users/{user_id}"):    (LOGIN,  ADMIN,  SCOPE,  SCOPE,  200,    200,    SCOPE),
    ("DELETE", "/users/{user_id}"):   (LOGIN,  ADMIN,  SCOPE,  SCOPE,  204,    204,    SCOPE),
    ("GET", "/info"):                 (200,    200,    200,    200,    200,    200,    200),
    ("POST", "/service-accounts"):    (LOGIN,  201,    SCOPE,  SCOPE,  201,    SCOPE,  SCOPE),
    ("GET", "/service-accounts"):     (LOGIN,  200,    SCOPE,  SCOPE,  200,    SCOPE,  SCOPE),
    # Service accounts are their owner's alone: to an admin too, another's is a 404.
    ("GET", SA):                      (LOGIN,  200,    SCOPE,  SCOPE,  HIDDEN, SCOPE,  SCOPE),
    ("DELETE", SA):                   (LOGIN,  204,    SCOPE,  SCOPE,  HIDDEN, SCOPE,  SCOPE),
    ("POST", f"{SA}/keys"):           (LOGIN,  201,    SCOPE,  SCOPE,  HIDDEN, SCOPE,  SCOPE),
    ("GET", f"{SA}/keys"):            (LOGIN,  200,    SCOPE,  SCOPE,  HIDDEN, SCOPE,  SCOPE),
    ("POST", f"{KEY}/rotate"):        (LOGIN,  201,    SCOPE,  SCOPE,  HIDDEN, SCOPE,  SCOPE),
    ("DELETE", KEY):                  (LOGIN,  204,    SCOPE,  SCOPE,  HIDDEN, SCOPE,  SCOPE),
}
# fmt: on
# These end the caller's login session or account: each is sent by a fresh caller of the
# column's kind, so the rest of the column keeps its own.
ENDS_THE_CALLER = {
    ("POST", "/auth/logout"),
    ("POST", "/users/me/password"),
    ("DELETE", "/users/me"),
}


@dataclass
class World:
    client: httpx.AsyncClient
    set_role: SetRole
    user: Account  # owns everything the paths name
    item_id: int
    account_id: int
    job_id: int  # a finished export


async def persona(world: World, credential: Credential, *, fresh: bool = False) -> Account | None:
    """Who stands behind the credential: the user themself (or, ``fresh``, another user), or
    an admin."""
    if credential.admin is None:
        return None
    if not (credential.admin or fresh):
        return world.user
    account = await make_account(world.client)
    if credential.admin:
        await world.set_role(account.id, Role.admin)
    return account


async def headers_of(
    world: World, credential: Credential, account: Account | None
) -> dict[str, str]:
    if account is None:
        return {}
    if credential.scopes is None:
        return account.headers
    return (await make_api_key(world.client, account, *credential.scopes)).headers


async def request_for(world: World, method: str, template: str) -> dict[str, Any]:
    """The path with real ids and a valid body; a fresh target wherever the request destroys
    or uses up the one it names."""
    client, user = world.client, world.user
    ids: dict[str, Any] = {
        "item_id": world.item_id,
        "user_id": user.id,
        "account_id": world.account_id,
        "job_id": world.job_id,
    }
    request: dict[str, Any] = {}
    match method, template:
        case ("POST", "/items"):
            request["json"] = {"title": "Prune the roses"}
        case ("POST", "/items/exports"):
            request["json"] = {"format": "json"}
        case ("POST", "/items/imports"):
            # New content each time: the same file again would answer with its first job.
            content = f"title\nMatrix {uuid.uuid4()}\n".encode()
            request["files"] = {"file": ("items.csv", content, "text/csv")}
        case ("PATCH", "/items/{item_id}"):
            request["json"] = {"priority": 1}
        case ("DELETE", "/items/{item_id}"):
            ids["item_id"] = (await make_item(client, user))["id"]
        case ("POST", "/auth/register"):
            request["json"] = {"email": unique_email(), "password": DEFAULT_PASSWORD}
        case ("POST", "/auth/token"):
            request["data"] = {"username": user.email, "password": user.password}
        case ("POST", "/auth/refresh"):
            tokens = (await login(client, user.email, user.password)).json()
            request["json"] = {"refresh_token": tokens["refresh_token"]}
        case ("PATCH", "/users/me"):
            request["json"] = {"full_name": "Ada"}
        case ("POST", "/users/me/password"):
            request["json"] = {"current_password": DEFAULT_PASSWORD, "new_password": "x" * 16}
        case ("PATCH", "/users/{user_id}"):
            request["json"] = {"is_active": True}
        case ("DELETE", "/users/{user_id}"):
            ids["user_id"] = (await register(client))["id"]
        case ("POST", "/service-accounts"):
            request["json"] = {"name": "matrix"}
        case ("DELETE", "/service-accounts/{account_id}"):
            ids["account_id"] = (await make_service_account(client, user))["id"]
        case ("POST", "/service-accounts/{account_id}/keys"):
            request["json"] = {"name": "matrix", "scopes": ["items:read"]}
        case ("POST", "/service-accounts/{account_id}/keys/{key_id}/rotate"):
            request["json"] = {}
    if "{key_id}" in template:
        ids["key_id"] = (await make_api_key(client, user, service_account_id=world.account_id)).id
    return {"method": method, "url": API + template.format(**ids), **request}


@pytest.fixture
def settings(backend: Backend) -> Settings:
    """Event streams (GET /events) end at once here: the matrix reads each answer whole."""
    realtime = RealtimeSettings(max_stream_seconds=0.2)
    return make_settings(backend.database_url, backend.redis_url, realtime=realtime)


def outcome(response: httpx.Response) -> Outcome:
    if response.status_code < 400:
        return response.status_code
    code = response.json().get("code", "?")
    assert_problem(response, response.status_code, code)
    return response.status_code, code


@pytest.mark.parametrize(
    "column", range(len(CREDENTIALS)), ids=[credential.name for credential in CREDENTIALS]
)
async def test_who_may_do_what(client: httpx.AsyncClient, set_role: SetRole, column: int) -> None:
    credential = CREDENTIALS[column]
    user = await make_account(client)
    item = await make_item(client, user)
    account = await make_service_account(client, user)
    export = await finished_job(client, user, "/items/exports", json={"format": "csv"})
    world = World(client, set_role, user, item["id"], account["id"], export["id"])
    headers = await headers_of(world, credential, await persona(world, credential))

    observed: dict[tuple[str, str], Outcome] = {}
    for operation in MATRIX:
        sender = headers
        if operation in ENDS_THE_CALLER:
            sender = await headers_of(
                world, credential, await persona(world, credential, fresh=True)
            )
        request = await request_for(world, *operation)
        observed[operation] = outcome(await client.request(**request, headers=sender))

    assert observed == {operation: cells[column] for operation, cells in MATRIX.items()}


def test_the_matrix_has_a_row_for_every_operation() -> None:
    document = create_app(make_settings("sqlite+aiosqlite:///:memory:")).openapi()
    operations = {
        (method.upper(), path.removeprefix(API))
        for path, methods in document["paths"].items()
        if path.startswith(API + "/")
        for method in methods
    }
    assert operations == set(MATRIX)
    assert all(len(cells) == len(CREDENTIALS) for cells in MATRIX.values())
