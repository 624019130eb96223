# ruff: noqa: S311  (random picks what a load loop does next; nothing here is a secret)
"""The load a fault drill runs under: a few asyncio loops, each with an account of its own,
mixing reads and writes against the service, recording every request (start, end, status, and
for writes the item and the title written), so a drill can say afterwards exactly which
requests failed, how slowly, and whether every acknowledged write is in the database.

Bounded: `concurrency` loops, a short think time between requests, a timeout on each request,
and the loops stop when told to."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

API = "/api/v1"
PASSWORD = "drill-password-42"  # noqa: S105 (throwaway accounts)
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=2.0)
WRITES = frozenset({"create", "update", "delete"})
# Weights of what a loop does next: reads dominate, as in real traffic.
OPERATIONS = {"read_item": 35, "list": 25, "create": 15, "update": 15, "delete": 5, "me": 5}


@dataclass(frozen=True)
class Record:
    operation: str
    started: float  # time.monotonic()
    ended: float
    status: int  # 0: no HTTP answer (refused, reset, timed out)
    error: str  # the problem's code, or the transport exception's name; "" on success
    item_id: int | None = None
    title: str | None = None  # what a create or an update wrote

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def is_write(self) -> bool:
        return self.operation in WRITES


@dataclass
class Account:
    email: str
    headers: dict[str, str]
    items: list[int] = field(default_factory=list)


async def make_accounts(client: httpx.AsyncClient, count: int) -> list[Account]:
    accounts = []
    for _ in range(count):
        email = f"drill-{uuid.uuid4().hex[:12]}@example.com"
        registered = await client.post(
            f"{API}/auth/register", json={"email": email, "password": PASSWORD}
        )
        registered.raise_for_status()
        tokens = await client.post(
            f"{API}/auth/token", data={"username": email, "password": PASSWORD}
        )
        tokens.raise_for_status()
        headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        accounts.append(Account(email=email, headers=headers))
    return accounts


class LoadGenerator:
    def __init__(
        self, base_url: str, accounts: list[Account], *, think_seconds: float = 0.02
    ) -> None:
        self.base_url = base_url
        self.accounts = accounts
        self.think_seconds = think_seconds
        self.records: list[Record] = []
        self._titles = itertools.count(1)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.accounts), max_keepalive_connections=None)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=REQUEST_TIMEOUT, limits=limits
        ) as client:
            await asyncio.gather(*(self._loop(client, account) for account in self.accounts))

    async def _loop(self, client: httpx.AsyncClient, account: Account) -> None:
        rng = random.Random(account.email)
        names, weights = list(OPERATIONS), list(OPERATIONS.values())
        while not self._stop.is_set():
            operation = rng.choices(names, weights)[0]
            if operation in {"read_item", "update", "delete"} and len(account.items) < 3:
                operation = "create"
            record = await self._one(client, account, operation, rng)
            self.records.append(record)
            pause = self.think_seconds if record.status else max(self.think_seconds, 0.05)
            await asyncio.sleep(pause * rng.uniform(0.5, 1.5))

    async def _one(
        self, client: httpx.AsyncClient, account: Account, operation: str, rng: random.Random
    ) -> Record:
        item_id: int | None = None
        title: str | None = None
        if operation == "create":
            title = f"drill-{next(self._titles)}"
            request = client.build_request("POST", f"{API}/items", json={"title": title})
        elif operation == "update":
            item_id, title = rng.choice(account.items), f"drill-{next(self._titles)}"
            request = client.build_request("PATCH", f"{API}/items/{item_id}", json={"title": title})
        elif operation == "delete":
            item_id = account.items.pop(rng.randrange(len(account.items)))
            request = client.build_request("DELETE", f"{API}/items/{item_id}")
        elif operation == "read_item":
            request = client.build_request("GET", f"{API}/items/{rng.choice(account.items)}")
        elif operation == "list":
            request = client.build_request("GET", f"{API}/items", params={"limit": 10})
        else:
            request = client.build_request("GET", f"{API}/users/me")
        request.headers.update(account.headers)
        started = time.monotonic()
        try:
            response = await client.send(request)
        except httpx.TransportError as exc:
            return Record(
                operation, started, time.monotonic(), 0, type(exc).__name__, item_id, title
            )
        ended = time.monotonic()
        if operation == "create" and response.status_code == 201:
            item_id = int(response.json()["id"])
            if len(account.items) < 10:
                account.items.append(item_id)
        return Record(
            operation, started, ended, response.status_code, _code(response), item_id, title
        )


def _code(response: httpx.Response) -> str:
    if response.is_success:
        return ""
    try:
        return str(response.json()["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def lost_writes(records: Iterable[Record], stored: dict[int, str]) -> list[Record]:
    """Acknowledged writes the database does not show. ``stored`` maps every item id of the
    drill's accounts to its title as the database has it now.

    Per item, in the order its loop sent them: after an acknowledged create or update the title
    must be that write's (or that of a later write whose answer never came: it may have
    committed); after an acknowledged delete the item must be gone; after a delete whose answer
    never came, either is fine."""
    expected: dict[int, tuple[Record, set[str], bool | None]] = {}
    for record in sorted(records, key=lambda r: r.started):
        if not record.is_write or record.item_id is None:
            continue
        previous = expected.get(record.item_id)
        if record.operation in {"create", "update"}:
            assert record.title is not None
            if record.ok:
                expected[record.item_id] = (record, {record.title}, True)
            elif previous is not None:
                previous[1].add(record.title)
        elif record.ok:
            expected[record.item_id] = (record, set(), False)
        elif previous is not None:
            expected[record.item_id] = (previous[0], previous[1], None)
    lost = []
    for item_id, (write, titles, exists) in expected.items():
        missing = exists is True and stored.get(item_id) not in titles
        resurrected = exists is False and item_id in stored
        if missing or resurrected:
            lost.append(write)
    return lost
