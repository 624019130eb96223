"""The coherence test's records and loops (tests/test_coherence_e2e.py): accounts that write
through pod A and read through pod B, logins ended through pod A and tried on pod B, and what
each phase counts: stale answers and how long they lasted, failed requests, read latency. The
faults, the pods and the run are in tests/coherence_phases.py."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

from tests.faults import RedisServer, TcpProxy
from tests.processes import Gunicorn

WRITES = int(os.environ.get("GLASSHOUSE_TEST_COHERENCE_WRITES", "500"))
EXTRA_ENV = {
    name: value if isinstance(value, str) else json.dumps(value)
    for name, value in json.loads(
        os.environ.get("GLASSHOUSE_TEST_COHERENCE_EXTRA_ENV", "{}")
    ).items()
}
SETTINGS = {
    # Logins run a few at a time through pod A; two checks per worker (the default) would
    # answer some of them 503 server_busy when the kernel hands both to one worker.
    "GLASSHOUSE_AUTH__MAX_CONCURRENT_PASSWORD_CHECKS": "8",
    **EXTRA_ENV,
}
# Accounts with one item each, each written and read in a loop of its own. Twelve loops keep
# both cores busy; more only queue requests, and queued long enough a worker's Redis calls
# outlast the cache timeout: that is an overload test, not normal operation.
WRITERS = 12
REVOKERS = 3  # every cycle is a login (a password check): a few loops are enough
MIN_REVOCATIONS = 30
LIST_EVERY = 5  # every fifth acknowledged write is also read through pod B's list
STALE_BOUND_SECONDS = 1.0  # with pod B's Redis path stalled
GIVE_UP_SECONDS = 15.0  # a stale streak this long is reported as never ending
API = "/api/v1"
PASSWORD = "coherence-pw"

Verdict = Literal["fresh", "stale", "failed"]


@dataclass(frozen=True)
class Account:
    email: str
    headers: dict[str, str]
    item_id: int

    @property
    def item(self) -> str:
        return f"{API}/items/{self.item_id}"


@dataclass(frozen=True)
class Pods:
    a: Gunicorn
    b: Gunicorn
    redis: RedisServer
    proxy_a: TcpProxy
    proxy_b: TcpProxy


@dataclass(frozen=True)
class Streak:
    """The stale answers pod B gave after one acknowledged change."""

    kind: Literal["item", "list", "revoked"]
    at: float  # when the change was acknowledged, in seconds since the phase began
    answers: int
    seconds: float  # from the acknowledging 2xx to the last stale answer
    ended: bool  # a fresh answer came within GIVE_UP_SECONDS


@dataclass
class Phase:
    name: str
    writes: int = 0
    revocations: int = 0
    stale: list[Streak] = field(default_factory=list)
    accepted: list[Streak] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    read_seconds: list[float] = field(default_factory=list)
    facts: Counter[str] = field(default_factory=Counter)
    log_events: Counter[str] = field(default_factory=Counter)
    timeline: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    unfinished: str = ""  # what the phase was still doing when its time ran out
    may_end: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, event: str) -> None:
        self.timeline.append(f"{event} at {time.monotonic() - self.started:.1f} s")

    def summary(self) -> str:
        def longest(streaks: list[Streak]) -> str:
            return f"{max(s.seconds for s in streaks) * 1000:.0f}" if streaks else "-"

        p50, p99 = (
            (
                statistics.median(self.read_seconds),
                statistics.quantiles(self.read_seconds, n=100)[98],
            )
            if len(self.read_seconds) > 1
            else (0.0, 0.0)
        )
        row = (
            f"{self.name:<14} {self.writes:>6} {len(self.stale):>5} {longest(self.stale):>12} "
            f"{self.revocations:>11} {len(self.accepted):>8} {longest(self.accepted):>15} "
            f"{self.failed.total():>6} {p50 * 1000:>10.1f} {p99 * 1000:>10.1f} {self.seconds:>7.1f}"
        )
        details = [f"  {self.unfinished}"] if self.unfinished else []
        details += [
            f"  {label}: {dict(counter)}"
            for label, counter in (
                ("failed", self.failed),
                ("facts", self.facts),
                ("warnings and errors logged", self.log_events),
            )
            if counter
        ]
        if self.timeline:
            details.append(f"  timeline: {', '.join(self.timeline)}")
        never = [s for s in self.stale + self.accepted if not s.ended]
        if never:
            details.append(f"  stale for more than {GIVE_UP_SECONDS:.0f} s: {len(never)}")
        for streak in sorted(self.stale + self.accepted, key=lambda s: -s.seconds)[:3]:
            details.append(
                f"  stale {streak.kind} acknowledged at {streak.at:.1f} s: {streak.answers} "
                f"answers over {streak.seconds * 1000:.0f} ms"
            )
        return "\n".join([row, *details])


HEADER = (
    f"{'phase':<14} {'writes':>6} {'stale':>5} {'max stale ms':>12} {'revocations':>11} "
    f"{'accepted':>8} {'max accepted ms':>15} {'failed':>6} {'GET p50 ms':>10} "
    f"{'GET p99 ms':>10} {'seconds':>7}"
)


def report(phase: Phase) -> str:
    return f"\nextra settings: {EXTRA_ENV or 'none'}\n{HEADER}\n{phase.summary()}"


# --- reading until pod B is fresh ------------------------------------------------------------


def judge_item(title: str) -> Callable[[httpx.Response], Verdict]:
    def judge(response: httpx.Response) -> Verdict:
        if response.status_code != 200:
            return "failed"
        return "fresh" if response.json()["title"] == title else "stale"

    return judge


def judge_list(item_id: int, title: str) -> Callable[[httpx.Response], Verdict]:
    def judge(response: httpx.Response) -> Verdict:
        if response.status_code != 200:
            return "failed"
        titles = {item["id"]: item["title"] for item in response.json()["items"]}
        return "fresh" if titles.get(item_id) == title else "stale"

    return judge


def judge_revoked(response: httpx.Response) -> Verdict:
    if response.status_code == 401:
        return "fresh"
    return "stale" if response.status_code == 200 else "failed"


async def read_until_fresh(
    phase: Phase,
    kind: Literal["item", "list", "revoked"],
    client: httpx.AsyncClient,
    request: tuple[str, dict[str, str]],
    judge: Callable[[httpx.Response], Verdict],
    acknowledged: float,
) -> None:
    """Reads through pod B until its answer reflects the change acknowledged at
    ``acknowledged``, recording how long it answered otherwise."""
    path, headers = request
    stale_answers, last_stale, ended = 0, 0.0, True
    while True:
        started = time.monotonic()
        try:
            response = await client.get(path, headers=headers)
            verdict, failure = judge(response), f"GET {kind} {response.status_code}"
        except httpx.HTTPError as error:
            verdict, failure = "failed", f"GET {kind} {type(error).__name__}"
        answered = time.monotonic()
        if kind != "list":
            phase.read_seconds.append(answered - started)
        if verdict == "fresh":
            break
        if verdict == "stale":
            stale_answers, last_stale = stale_answers + 1, answered - acknowledged
        else:
            phase.failed[failure] += 1
            await asyncio.sleep(0.05)
        if answered - acknowledged > GIVE_UP_SECONDS:
            ended = False
            break
    if stale_answers:
        streaks = phase.accepted if kind == "revoked" else phase.stale
        at = acknowledged - phase.started
        streaks.append(Streak(kind, at, stale_answers, last_stale, ended))


# --- the loops -------------------------------------------------------------------------------


async def write_and_read(
    phase: Phase, via_a: httpx.AsyncClient, via_b: httpx.AsyncClient, writer: Account, index: int
) -> None:
    round_number = 0
    while phase.writes < WRITES or not phase.may_end.is_set():
        round_number += 1
        title = f"{phase.name} {index} {round_number}"
        patch = via_a.patch(writer.item, json={"title": title}, headers=writer.headers)
        if await answered(phase, "PATCH", 200, patch) is None:
            continue
        acknowledged = time.monotonic()
        phase.writes += 1
        item = (writer.item, writer.headers)
        await read_until_fresh(phase, "item", via_b, item, judge_item(title), acknowledged)
        if round_number % LIST_EVERY == 0:
            judge = judge_list(writer.item_id, title)
            items = (f"{API}/items", writer.headers)
            await read_until_fresh(phase, "list", via_b, items, judge, acknowledged)


async def answered(
    phase: Phase, label: str, expected: int, request: Awaitable[httpx.Response]
) -> httpx.Response | None:
    """The response if it has the expected status; otherwise counted as a failure."""
    try:
        response = await request
    except httpx.HTTPError as error:
        phase.failed[f"{label} {type(error).__name__}"] += 1
        return None
    if response.status_code == expected:
        return response
    phase.failed[f"{label} {response.status_code}"] += 1
    await asyncio.sleep(0.05)
    return None


async def log_in(phase: Phase, via_a: httpx.AsyncClient, email: str) -> dict[str, str]:
    while True:
        login = via_a.post(f"{API}/auth/token", data={"username": email, "password": PASSWORD})
        if (response := await answered(phase, "login", 200, login)) is not None:
            return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def revoke_and_check(
    phase: Phase,
    via_a: httpx.AsyncClient,
    via_b: httpx.AsyncClient,
    account: Account,
    writers_done: asyncio.Event,
) -> None:
    while not (writers_done.is_set() and phase.revocations >= MIN_REVOCATIONS):
        headers = await log_in(phase, via_a, account.email)
        # Pod B checks the new session once, so that its cached answer is there to go stale.
        await answered(phase, "GET before logout", 200, via_b.get(account.item, headers=headers))
        logout = via_a.post(f"{API}/auth/logout", headers=headers)
        if await answered(phase, "logout", 204, logout) is None:
            continue
        acknowledged = time.monotonic()
        phase.revocations += 1
        item = (account.item, headers)
        await read_until_fresh(phase, "revoked", via_b, item, judge_revoked, acknowledged)
