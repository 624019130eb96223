# mypy: disable-error-code="untyped-decorator"
"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by loadtests/fuzz.py).

Links: FastAPI's schema declares no OpenAPI links, and schemathesis infers only some of them, so
its stateful phase would never read, change or delete the item it just created. The links added
below say how an answer feeds the next request (an item's id, a user's id, a refresh token), so
sequences like create, read, change, delete, read-again-404 run, and with them the
use_after_free and ensure_resource_availability checks (which also catch a stale cache).

Auth: every request the fuzzer sends is authenticated, as a regular user or, for the admin
operations, as an admin.

A static `-H "Authorization: Bearer ..."` would die at the first `POST /auth/logout` or
`DELETE /users/me` the fuzzer sends, and every later request would test nothing but the 401.
So tokens come from here: logged in with the accounts fuzz.py made, and when schemathesis sees a
401 (its `retry_on`), logged in again, or, if that account is gone (deleted, deactivated, locked
out by the fuzzer's wrong passwords), with a freshly registered one.

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
# Each login comes from an address of its own (X-Forwarded-For, trusted from loopback only;
# 198.18.0.0/15 is reserved for benchmarks), so the fuzzer's own wrong passwords, which all come
# from 127.0.0.1, cannot get these logins refused by the per-address limit.
_addresses = itertools.count(1)
_user = {"email": os.environ["FUZZ_USER_EMAIL"], "password": os.environ["FUZZ_USER_PASSWORD"]}


ITEM = "/api/v1/items/{item_id}"
USER = "/api/v1/users/{user_id}"
REFRESH = "/api/v1/auth/refresh"
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


def _post(path: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    number = next(_addresses)
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL fuzz.py sets)
        os.environ["FUZZ_BASE_URL"] + path,
        data=body,
        headers={
            "Content-Type": content_type,
            "X-Forwarded-For": f"198.19.{number // 250 % 250}.{number % 250 + 1}",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, {}


def log_in(email: str, password: str) -> str | None:
    form = urllib.parse.urlencode({"username": email, "password": password}).encode()
    status, body = _post("/api/v1/auth/token", form, "application/x-www-form-urlencoded")
    return str(body["access_token"]) if status == 200 else None


def register_new_user() -> None:
    email, password = f"fuzz-{uuid.uuid4().hex[:12]}@example.com", uuid.uuid4().hex
    payload = json.dumps({"email": email, "password": password}).encode()
    status, _ = _post("/api/v1/auth/register", payload, "application/json")
    if status != 201:
        raise RuntimeError(f"could not register a fuzzing account: {status}")
    _user.update(email=email, password=password)


def identity(case: Any, context: Any) -> str:
    return "admin" if context.operation.path in ADMIN_PATHS else "user"


# Tokens are fetched anew every second: the stateful phase does not re-authenticate on a 401 (the
# other phases do, through retry_on), and the admin operations delete and deactivate accounts,
# the fuzzing account among them. A login is cheap with the fuzzing service's argon2 settings.
@schemathesis.auth(cache_by_key=identity, refresh_interval=1)
class GlasshouseAuth:
    def get(self, case: Any, context: Any) -> str:
        if identity(case, context) == "admin":
            token = log_in(os.environ["FUZZ_ADMIN_EMAIL"], os.environ["FUZZ_ADMIN_PASSWORD"])
            if token is not None:
                return token
            # The fuzzer can promote another account and then delete or deactivate the
            # bootstrapped admin. From then on the admin operations are fuzzed as a regular
            # user (403s): failing here instead would stall schemathesis for 30 s each time.
        token = log_in(_user["email"], _user["password"])
        if token is None:
            register_new_user()
            token = log_in(_user["email"], _user["password"])
        if token is None:
            raise RuntimeError("a freshly registered fuzzing account cannot log in")
        return token

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
