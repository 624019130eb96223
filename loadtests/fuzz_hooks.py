# mypy: disable-error-code="untyped-decorator"
"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by loadtests/fuzz.py).

Links: FastAPI's schema declares no OpenAPI links, and schemathesis infers only some of them, so
its stateful phase would never read, change or delete the item it just created. The links added
below say how an answer feeds the next request (an item's id, a user's id, a refresh token, a
service account's id, an API key's id), so sequences like create, read, change, delete,
read-again-404 run, and with them the use_after_free and ensure_resource_availability checks
(which also catch a stale cache).

Auth: every request the fuzzer sends is authenticated, as a regular user or, for the admin
operations, as an admin. An operation that accepts API keys (its security lists APIKeyHeader)
gets an API key, in X-API-Key, and nothing else; the session-only ones get a bearer token. So
the ignored_auth check, which knows apiKey schemes but not OAuth2 ones, probes what really
authenticates the request: without its key, or with an invalid one, the request must be refused.

A static `-H "Authorization: Bearer ..."` would die at the first `POST /auth/logout` or
`DELETE /users/me` the fuzzer sends, and every later request would test nothing but the 401.
So tokens come from here: logged in with the accounts fuzz.py made, and when schemathesis sees a
401 (its `retry_on`), logged in again, or, if that account is gone (deleted, deactivated, locked
out by the fuzzer's wrong passwords), with a freshly registered one. Keys likewise: made here,
with the identity's token, a service account and a key with every scope the identity may have;
kept while they work, made anew once they do not (the fuzzer deletes service accounts, revokes
keys, deletes and deactivates their owners).

Runs inside schemathesis's own tool environment: standard library only, besides schemathesis.
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import schemathesis  # type: ignore[import-not-found]

ADMIN_PATHS = frozenset({"/api/v1/users", "/api/v1/users/{user_id}"})
API_KEY_SCHEME, API_KEY_HEADER = "APIKeyHeader", "X-API-Key"
USER_SCOPES = ["items:read", "items:write", "profile:read"]
SCOPES = {"user": USER_SCOPES, "admin": [*USER_SCOPES, "admin"]}
# What a key is checked on before it is used again: an operation that needs the identity's powers.
KEY_CHECKS = {"user": "/api/v1/users/me", "admin": "/api/v1/users?limit=1"}
# Each request from here comes from an address of its own (X-Forwarded-For, trusted from loopback
# only; 198.18.0.0/15 is reserved for benchmarks), so the fuzzer's own wrong passwords and invalid
# keys, which all come from 127.0.0.1, cannot get these logins and key checks refused by the
# per-address limits.
_addresses = itertools.count(1)
_user = {"email": os.environ["FUZZ_USER_EMAIL"], "password": os.environ["FUZZ_USER_PASSWORD"]}
_keys: dict[str, str] = {}  # identity -> the API key made for it here


ITEM = "/api/v1/items/{item_id}"
USER = "/api/v1/users/{user_id}"
REFRESH = "/api/v1/auth/refresh"
ACCOUNTS = "/api/v1/service-accounts"
ACCOUNT = ACCOUNTS + "/{account_id}"
KEYS = ACCOUNT + "/keys"
KEY = KEYS + "/{key_id}"
ROTATE = KEY + "/rotate"
NEW_KEY = {"account_id": "$response.body#/service_account_id", "key_id": "$response.body#/id"}
# (source path, method, status) -> [(target path, method, link parameters, link request body)]
LINKS: dict[tuple[str, str, str], list[tuple[str, str, dict[str, str], Any]]] = {
    ("/api/v1/items", "post", "201"): [
        (ITEM, method, {"item_id": "$response.body#/id"}, None)
        for method in ("get", "patch", "delete")
    ],
    (ITEM, "get", "200"): [
        (ITEM, method, {"item_id": "$response.body#/id"}, None) for method in ("patch", "delete")
    ],
    (ITEM, "patch", "200"): [
        (ITEM, method, {"item_id": "$response.body#/id"}, None) for method in ("get", "delete")
    ],
    (ITEM, "delete", "204"): [(ITEM, "get", {"item_id": "$request.path.item_id"}, None)],
    ("/api/v1/auth/register", "post", "201"): [
        (USER, method, {"user_id": "$response.body#/id"}, None)
        for method in ("get", "patch", "delete")
    ],
    ("/api/v1/auth/token", "post", "200"): [
        (REFRESH, "post", {}, {"refresh_token": "$response.body#/refresh_token"})
    ],
    (REFRESH, "post", "200"): [
        (REFRESH, "post", {}, {"refresh_token": "$response.body#/refresh_token"})
    ],
    (ACCOUNTS, "post", "201"): [
        (path, method, {"account_id": "$response.body#/id"}, None)
        for path, method in ((ACCOUNT, "get"), (ACCOUNT, "delete"), (KEYS, "post"), (KEYS, "get"))
    ],
    (ACCOUNT, "delete", "204"): [
        (ACCOUNT, "get", {"account_id": "$request.path.account_id"}, None)
    ],
    # A new key, made or rotated: rotate it (again), or revoke it.
    (KEYS, "post", "201"): [(ROTATE, "post", NEW_KEY, None), (KEY, "delete", NEW_KEY, None)],
    (ROTATE, "post", "201"): [(ROTATE, "post", NEW_KEY, None), (KEY, "delete", NEW_KEY, None)],
    # A revoked key cannot be rotated (409).
    (KEY, "delete", "204"): [
        (
            ROTATE,
            "post",
            {"account_id": "$request.path.account_id", "key_id": "$request.path.key_id"},
            None,
        )
    ],
}


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    paths = raw_schema["paths"]
    for (path, method, status), targets in LINKS.items():
        response = paths[path][method]["responses"][status]
        links = response.setdefault("links", {})
        for target_path, target_method, parameters, body in targets:
            link: dict[str, Any] = {"operationId": paths[target_path][target_method]["operationId"]}
            if parameters:
                link["parameters"] = parameters
            if body is not None:
                link["requestBody"] = body
            links[f"{target_method}{target_path}".replace("/", "_")] = link


def _call(
    method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """The answer's status and JSON body (``{}`` for an error or an empty body)."""
    number = next(_addresses)
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL fuzz.py sets)
        os.environ["FUZZ_BASE_URL"] + path,
        data=body,
        headers={
            **(headers or {}),
            "X-Forwarded-For": f"198.19.{number // 250 % 250}.{number % 250 + 1}",
        },
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            content = response.read()
            return int(response.status), json.loads(content) if content else {}
    except urllib.error.HTTPError as error:
        return error.code, {}


def _post_json(path: str, payload: dict[str, Any], token: str) -> tuple[int, Any]:
    return _call(
        "POST",
        path,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )


def log_in(email: str, password: str) -> str | None:
    form = urllib.parse.urlencode({"username": email, "password": password}).encode()
    status, body = _call(
        "POST",
        "/api/v1/auth/token",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    return str(body["access_token"]) if status == 200 else None


def register_new_user() -> None:
    email, password = f"fuzz-{uuid.uuid4().hex[:12]}@example.com", uuid.uuid4().hex
    payload = json.dumps({"email": email, "password": password}).encode()
    status, _ = _call(
        "POST", "/api/v1/auth/register", body=payload, headers={"Content-Type": "application/json"}
    )
    if status != 201:
        raise RuntimeError(f"could not register a fuzzing account: {status}")
    _user.update(email=email, password=password)


def user_token() -> str:
    token = log_in(_user["email"], _user["password"])
    if token is None:
        register_new_user()
        token = log_in(_user["email"], _user["password"])
    if token is None:
        raise RuntimeError("a freshly registered fuzzing account cannot log in")
    return token


def admin_token() -> str | None:
    """None once the fuzzer has removed the bootstrapped admin (it can promote another account,
    then delete or deactivate this one). From then on the admin operations are fuzzed as the
    regular user (403s): failing instead would stall schemathesis for 30 s each time."""
    return log_in(os.environ["FUZZ_ADMIN_EMAIL"], os.environ["FUZZ_ADMIN_PASSWORD"])


def make_key(token: str, scopes: list[str]) -> str | None:
    """A new service account of the token's user, and a key of it with these scopes."""
    status, account = _post_json(ACCOUNTS, {"name": "fuzz-hooks"}, token)
    if status != 201:
        return None
    status, key = _post_json(
        f"{ACCOUNTS}/{account['id']}/keys", {"name": "fuzz-hooks", "scopes": scopes}, token
    )
    return str(key["key"]) if status == 201 else None


def key_works(key: str, identity: str) -> bool:
    status, _ = _call("GET", KEY_CHECKS[identity], headers={API_KEY_HEADER: key})
    return status == 200


def api_key(identity: str) -> str:
    """The identity's key, checked on an operation that needs its powers; made anew if it no
    longer works. The admin's, if the admin cannot make one, is the user's."""
    key = _keys.get(identity)
    if key is not None and key_works(key, identity):
        return key
    if identity == "admin":
        token = admin_token()
        key = None if token is None else make_key(token, SCOPES["admin"])
        if key is None:
            return api_key("user")
    else:
        key = make_key(user_token(), SCOPES["user"])
        if key is None:
            raise RuntimeError("the fuzzing account cannot make an API key")
    _keys[identity] = key
    return key


def identity(context: Any) -> str:
    return "admin" if context.operation.path in ADMIN_PATHS else "user"


def accepts_api_keys(context: Any) -> bool:
    requirements = context.operation.definition.raw.get("security", [])
    return any(API_KEY_SCHEME in requirement for requirement in requirements)


def credential(case: Any, context: Any) -> str:
    return f"{identity(context)} {'key' if accepts_api_keys(context) else 'token'}"


# Credentials are fetched anew every second: the stateful phase does not re-authenticate on a 401
# (the other phases do, through retry_on), and the fuzzer deletes and deactivates accounts, the
# fuzzing account among them, and deletes service accounts and revokes keys. A login is cheap
# with the fuzzing service's argon2 settings; a key is only checked, and made anew only if dead.
@schemathesis.auth(cache_by_key=credential, refresh_interval=1)
class GlasshouseAuth:
    def get(self, case: Any, context: Any) -> dict[str, str]:
        if accepts_api_keys(context):
            return {API_KEY_HEADER: api_key(identity(context))}
        token = admin_token() if identity(context) == "admin" else None
        return {"Authorization": f"Bearer {token or user_token()}"}

    def set(self, case: Any, data: dict[str, str], context: Any) -> None:
        case.headers = {**(case.headers or {}), **data}
