# mypy: allow-subclassing-any, disable-error-code="untyped-decorator"
# ruff: noqa: S311  (random picks what a simulated user does next; nothing here is a secret)
"""What a simulated user does: signs up and logs in once, then works on their own items with
think times between steps, as someone with a to-do list open in a browser tab would.

Request names group by route template (`/api/v1/items/[id]`), never by raw path. Requests
that are meant to fail are named `bad: ...` and count as successes when they get exactly the
status the service documents for them; anything else is a failure.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from locust import FastHttpUser, between, task  # type: ignore[import-not-found]

API = "/api/v1"
PASSWORD = "load-test-password-42"  # noqa: S105 (throwaway accounts)
# A simulated user's address for X-Forwarded-For, random in 198.18.0.0/15 (reserved for
# benchmarks, RFC 2544, never routed). gunicorn trusts the header from loopback only: on one
# machine each simulated user is then its own client for the per-address login limit, as in
# real life. Behind a load balancer that sets the header itself, it changes nothing.
TITLES = ("Water the ferns", "Repot the orchid", "Mist the moss", "Prune the fig", "Feed the ivy")
STATUSES = ("todo", "doing", "done")


class GlasshouseUser(FastHttpUser):
    wait_time = between(0.5, 2.5)
    # A slow service must show up as latency in the stats, not as a pile of timeouts.
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        number = random.getrandbits(17)
        self.address = f"198.{18 + (number >> 16)}.{(number >> 8) & 255}.{number & 255}"
        self.email = f"load-{uuid.uuid4().hex[:16]}@example.com"
        self.access_token = ""
        self.refresh_token = ""
        self.item_ids: list[int] = []
        self.etags: dict[int, str] = {}
        self._call(
            "POST", "/auth/register", {201}, json={"email": self.email, "password": PASSWORD}
        )
        self._log_in()
        for _ in range(3):
            self._create_item()

    def on_stop(self) -> None:
        if self.access_token:
            self._call("POST", "/auth/logout", {204})

    # Reads: most of the traffic, and mostly repeated, so most of them hit the cache.

    @task(10)
    def list_items(self) -> None:
        for _ in range(random.randint(1, 3)):  # a reload or two
            self._call("GET", "/items", {200})

    @task(4)
    def filter_items(self) -> None:
        query = random.choice(
            (
                {"status": random.choice(STATUSES), "sort": "-priority", "limit": 10},
                {"priority": random.randint(1, 5)},
                {"q": random.choice(TITLES).split()[-1], "sort": "title"},
                {"limit": 5, "offset": 5},
            )
        )
        self._call("GET", f"/items?{urlencode(query)}", {200}, name=f"{API}/items?[filters]")

    @task(10)
    def read_item(self) -> None:
        """The same item a few times, then a revalidation that should answer 304."""
        if not self.item_ids:
            return
        item_id = random.choice(self.item_ids)
        for _ in range(random.randint(1, 3)):
            body = self._call("GET", f"/items/{item_id}", {200}, name=f"{API}/items/[id]")
            if body is None:
                return
        etag = self.etags.get(item_id)
        if etag:
            self._call(
                "GET",
                f"/items/{item_id}",
                {304},
                name=f"{API}/items/[id] (if-none-match)",
                headers={"If-None-Match": etag},
            )

    @task(2)
    def read_me(self) -> None:
        self._call("GET", "/users/me", {200})

    # Writes.

    @task(4)
    def create_item(self) -> None:
        self._create_item()

    @task(3)
    def update_item(self) -> None:
        if self.item_ids:
            changes = random.choice(
                ({"status": random.choice(STATUSES)}, {"priority": random.randint(1, 5)})
            )
            self._patch(random.choice(self.item_ids), changes)

    @task(1)
    def delete_item(self) -> None:
        if len(self.item_ids) > 2:
            item_id = self.item_ids.pop(random.randrange(len(self.item_ids)))
            self._call("DELETE", f"/items/{item_id}", {204}, name=f"{API}/items/[id]")

    @task(2)
    def plan_the_day(self) -> None:
        """A journey: jot down two tasks, look at what is left, start the most urgent one."""
        for _ in range(2):
            self._create_item()
        page = self._call(
            "GET", "/items?status=todo&sort=priority&limit=5", {200}, name=f"{API}/items?[filters]"
        )
        if page and page["items"]:
            self._patch(page["items"][0]["id"], {"status": "doing"})

    @task(1)
    def refresh_tokens(self) -> None:
        tokens = self._call(
            "POST", "/auth/refresh", {200}, json={"refresh_token": self.refresh_token}
        )
        if tokens:
            self._keep(tokens)

    # Mistakes clients make: each must get its documented answer, fast.

    @task(1)
    def bad_wrong_password(self) -> None:
        # 401, or 429 once this account has failed too often (the login limit doing its job).
        self._call(
            "POST",
            "/auth/token",
            {401, 429},
            name="bad: wrong password",
            data={"username": self.email, "password": "not-" + PASSWORD},
        )

    @task(1)
    def bad_missing_item(self) -> None:
        missing = random.randint(10**12, 10**13)
        self._call("GET", f"/items/{missing}", {404}, name="bad: missing item")

    @task(1)
    def bad_invalid_item(self) -> None:
        invalid = random.choice(({"title": ""}, {"title": "x", "priority": "high"}, {"nope": 1}))
        self._call("POST", "/items", {422}, name="bad: invalid item", json=invalid)

    # Helpers.

    def _log_in(self) -> None:
        tokens = self._call(
            "POST", "/auth/token", {200}, data={"username": self.email, "password": PASSWORD}
        )
        if tokens:
            self._keep(tokens)

    def _keep(self, tokens: dict[str, Any]) -> None:
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]

    def _create_item(self) -> None:
        item = {
            "title": random.choice(TITLES),
            "priority": random.randint(1, 5),
            "status": random.choice(STATUSES),
        }
        created = self._call("POST", "/items", {201}, json=item)
        if created:
            self.item_ids.append(created["id"])

    def _patch(self, item_id: int, changes: dict[str, Any]) -> None:
        self._call("PATCH", f"/items/{item_id}", {200}, name=f"{API}/items/[id]", json=changes)

    def _call(
        self,
        method: str,
        path: str,
        expected: Iterable[int],
        *,
        name: str | None = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        data: dict[str, str] | None = None,
    ) -> Any:
        """One request; a success only with an expected status. Returns the JSON body of a
        success that has one, else None."""
        request_headers = {"X-Forwarded-For": self.address, **(headers or {})}
        if self.access_token:
            request_headers["Authorization"] = f"Bearer {self.access_token}"
        body: str | None = None
        if data is not None:
            body = urlencode(data)
            request_headers["Content-Type"] = "application/x-www-form-urlencoded"
        with self.client.request(
            method,
            API + path,
            name=name or API + path.split("?")[0],
            headers=request_headers,
            json=json,
            data=body,
            catch_response=True,
        ) as response:
            if response.status_code == 0:  # no answer: refused, reset, timed out
                response.failure(response.error or "no response")
                return None
            if response.status_code not in set(expected):
                response.failure(f"{response.status_code} {_problem_code(response.text)}")
                return None
            response.success()
            if response.status_code in {204, 304} or not response.text:
                return None
            parsed = response.json()
            if "etag" in response.headers and method == "GET" and "id" in parsed:
                self.etags[parsed["id"]] = response.headers["etag"]
            return parsed


def _problem_code(text: str | None) -> str:
    """The problem's `code` (or the start of the body) for the failure message: enough to see
    what went wrong without one failure row per request ID."""
    try:
        return str(json.loads(text or "")["code"])
    except (ValueError, KeyError, TypeError):
        return (text or "no response")[:80]
