"""Memory per live event stream, and how soon events reach clients under a steady write load.

gunicorn (one worker, production settings) on a PostgreSQL database of its own and the local
Redis. After one stream of each kind has been opened and closed (first-use imports and caches
are not a connection's cost), idle WebSockets are opened, at most OPEN_AT_ONCE at a time, and
the worker's RSS (VmRSS) read before and after; then SSE streams the same way. The streams
belong to many users, a dozen each at most. With every stream still open, those users write
items through the same pod at a steady rate (POST /api/v1/items, each write sent on schedule
whatever the earlier ones are doing); an event's latency is the time it arrived at a client
minus the time just before its POST was sent, per transport, for every client of the writer.
The clients run in this process, on the same machine as the service.

    python bench/realtime.py [--connections 1000] [--sse 200] [--seconds 30] [--rate 20]
                             [--json PATH]

Prints a table (and writes JSON with --json); bench/HISTORY.md and docs/realtime.md quote it.
A benchmark, not a test: it checks only that every event arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import REDIS_URL  # noqa: E402 (after the path is set)
from tests.factories import API, Account, make_account  # noqa: E402
from tests.processes import migrated_postgres_database, running_gunicorn  # noqa: E402
from tests.streams import SSE_PATH, SseStream, websocket  # noqa: E402

STREAMS_PER_USER = 12
OPEN_AT_ONCE = 50
SETTLE_SECONDS = 2.0
DELIVERY_WAIT_SECONDS = 10.0
TITLE = "realtime-bench-"  # + the write's number, which the event's item carries back

Hold = Callable[[int, asyncio.Future[None]], Coroutine[Any, Any, None]]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def allow_open_files(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard), hard))


@dataclass
class Arrivals:
    """When each write's event reached each client: transport -> [(write number, time)]."""

    times: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {"ws": [], "sse": []})
    expected: dict[str, int] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, transport: str, at: float, event: dict[str, Any]) -> None:
        title = (event.get("item") or {}).get("title", "")
        if title.startswith(TITLE):
            self.times[transport].append((int(title.removeprefix(TITLE)), at))
            if all(len(self.times[kind]) >= n for kind, n in self.expected.items()):
                self.complete.set()


async def hold_websocket(
    url: str, account: Account, opened: asyncio.Future[None], arrivals: Arrivals
) -> None:
    async with websocket(url, account.access_token) as socket:
        ready = json.loads(await socket.connection.recv())
        assert ready["type"] == "stream.ready", ready
        opened.set_result(None)
        async for raw in socket.connection:
            arrivals.record("ws", time.perf_counter(), json.loads(raw))


async def hold_sse(
    client: httpx.AsyncClient, account: Account, opened: asyncio.Future[None], arrivals: Arrivals
) -> None:
    async with client.stream("GET", SSE_PATH, headers=account.headers) as response:
        assert response.status_code == 200, await response.aread()
        stream = SseStream(response)
        ready = await stream.next(within=10)
        assert ready["event"] == "stream.ready", ready
        opened.set_result(None)
        while True:
            event = await stream.next(within=3600)
            arrivals.record("sse", time.perf_counter(), event["data"])


def _fail_unless_opened(opened: asyncio.Future[None], task: asyncio.Task[None]) -> None:
    if not opened.done():
        error = None if task.cancelled() else task.exception()
        opened.set_exception(error or RuntimeError("a stream ended before it opened"))


async def open_streams(count: int, hold: Hold) -> list[asyncio.Task[None]]:
    """``count`` streams, OPEN_AT_ONCE handshakes at a time; each held open by its task."""
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, count, OPEN_AT_ONCE):
        batch = []
        for index in range(start, min(start + OPEN_AT_ONCE, count)):
            opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(hold(index, opened))
            task.add_done_callback(functools.partial(_fail_unless_opened, opened))
            tasks.append(task)
            batch.append(opened)
        await asyncio.gather(*batch)
    return tasks


async def close_streams(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def write_steadily(
    client: httpx.AsyncClient, accounts: list[Account], writes: int, rate: float
) -> tuple[dict[int, float], list[tuple[int, float]]]:
    """``writes`` items at ``rate`` a second, by the accounts in turn: when each was sent, and
    when each was answered (in the form of Arrivals.times)."""
    sent_at: dict[int, float] = {}
    answered: list[tuple[int, float]] = []

    async def write(number: int) -> None:
        headers = accounts[number % len(accounts)].headers
        sent_at[number] = time.perf_counter()
        response = await client.post(
            f"{API}/items", json={"title": f"{TITLE}{number}"}, headers=headers
        )
        answered.append((number, time.perf_counter()))
        assert response.status_code == 201, response.text

    started = time.perf_counter()
    tasks = []
    for number in range(writes):
        await asyncio.sleep(max(0.0, started + number / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(write(number)))
    await asyncio.gather(*tasks)
    return sent_at, answered


def latencies_ms(
    arrived: list[tuple[int, float]], sent_at: dict[int, float], expected: int
) -> dict[str, Any]:
    late = sorted((at - sent_at[number]) * 1000 for number, at in arrived)
    if not late:
        return {"received": 0, "expected": expected}

    def at(quantile: float) -> float:
        return round(late[min(len(late) - 1, int(quantile * len(late)))], 1)

    return {
        "received": len(late),
        "expected": expected,
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": round(late[-1], 1),
    }


async def measure(url: str, worker: int, args: argparse.Namespace) -> dict[str, Any]:
    users = max(1, math.ceil((args.connections + args.sse) / STREAMS_PER_USER))
    timeout = httpx.Timeout(10, read=None)  # SSE streams are idle between heartbeats
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        accounts = [await make_account(client) for _ in range(users)]
        arrivals = Arrivals()

        def websockets(index: int, opened: asyncio.Future[None]) -> Coroutine[Any, Any, None]:
            return hold_websocket(url, accounts[index % users], opened, arrivals)

        def sse_streams(index: int, opened: asyncio.Future[None]) -> Coroutine[Any, Any, None]:
            return hold_sse(client, accounts[index % users], opened, arrivals)

        await close_streams(await open_streams(1, websockets) + await open_streams(1, sse_streams))
        await asyncio.sleep(SETTLE_SECONDS)
        rss = {"before": rss_mib(worker)}
        ws_tasks = await open_streams(args.connections, websockets)
        await asyncio.sleep(SETTLE_SECONDS)
        rss["websockets"] = rss_mib(worker)
        sse_tasks = await open_streams(args.sse, sse_streams)
        await asyncio.sleep(SETTLE_SECONDS)
        rss["sse"] = rss_mib(worker)
        # This process now holds every stream: a full collection of it stalled the clients
        # and the writer at once (tests/conftest.py's steady_timing does the same).
        gc.collect()
        gc.freeze()

        writes = round(args.rate * args.seconds)
        ws_of = [len(range(u, args.connections, users)) for u in range(users)]
        sse_of = [len(range(u, args.sse, users)) for u in range(users)]
        arrivals.expected = expected = {
            "ws": sum(ws_of[n % users] for n in range(writes)),
            "sse": sum(sse_of[n % users] for n in range(writes)),
        }
        cpu_before, started = cpu_seconds(worker), time.perf_counter()
        sent_at, answered = await write_steadily(client, accounts, writes, args.rate)
        worker_cpu = (cpu_seconds(worker) - cpu_before) / (time.perf_counter() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrivals.complete.wait(), DELIVERY_WAIT_SECONDS)
        ended_early = sum(task.done() for task in ws_tasks + sse_tasks)
        await close_streams(ws_tasks + sse_tasks)

    def growth(after: str, since: str, count: int) -> dict[str, float]:
        mib = rss[after] - rss[since]
        return {"mib": round(mib, 1), "kib_per_connection": round(mib * 1024 / max(count, 1), 1)}

    return {
        "users": users,
        "worker_rss_mib": {key: round(value, 1) for key, value in rss.items()},
        "growth": {
            "websockets": growth("websockets", "before", args.connections),
            "sse": growth("sse", "websockets", args.sse),
        },
        "writes": writes,
        "worker_cpu_during_writes": round(worker_cpu, 2),
        "streams_ended_early": ended_early,
        "delivery": {
            kind: latencies_ms(arrivals.times[kind], sent_at, count)
            for kind, count in expected.items()
        },
        "post_answered": latencies_ms(answered, sent_at, writes),
    }


def render(report: dict[str, Any]) -> str:
    settings, rss, growth = report["settings"], report["worker_rss_mib"], report["growth"]
    lines = [
        f"gunicorn, 1 worker; {settings['connections']} WebSockets and {settings['sse']} SSE"
        f" streams of {report['users']} users",
        f"{'worker RSS':24} {'MiB':>7} {'growth':>7} {'KiB/conn':>9}",
        f"{'  before':24} {rss['before']:7.1f}",
        f"{'  + WebSockets':24} {rss['websockets']:7.1f} {growth['websockets']['mib']:7.1f}"
        f" {growth['websockets']['kib_per_connection']:9.1f}",
        f"{'  + SSE streams':24} {rss['sse']:7.1f} {growth['sse']['mib']:7.1f}"
        f" {growth['sse']['kib_per_connection']:9.1f}",
        f"delivery: {report['writes']} writes at {settings['rate']:g}/s for"
        f" {settings['seconds']} s (worker CPU {report['worker_cpu_during_writes']:.0%})",
        f"{'':6} {'received':>17} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for kind, figures in report["delivery"].items():
        received = f"{figures['received']}/{figures['expected']}"
        times = [f"{figures.get(key, float('nan')):8.1f}" for key in ("p50_ms", "p99_ms", "max_ms")]
        lines.append(f"  {kind:4} {received:>17} {' '.join(times)}")
    post = report["post_answered"]
    lines.append(
        f"  (the POST's own answer: p50 {post['p50_ms']:.1f}, p99 {post['p99_ms']:.1f},"
        f" max {post['max_ms']:.1f} ms)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="idle WebSockets")
    parser.add_argument("--sse", type=int, default=200, help="SSE streams")
    parser.add_argument("--seconds", type=int, default=30, help="of steady writes")
    parser.add_argument("--rate", type=float, default=20, help="writes a second")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    allow_open_files(args.connections + args.sse + 1024)
    with (
        tempfile.TemporaryDirectory() as scratch,
        migrated_postgres_database() as database_url,
        running_gunicorn(
            database_url,
            Path(scratch),
            workers=1,
            REDIS_URL=REDIS_URL,
            GLASSHOUSE_CACHE__KEY_PREFIX=f"bench-realtime-{uuid.uuid4().hex[:8]}",
            GLASSHOUSE_SERVER__DRAIN_SECONDS="1",
            GLASSHOUSE_REALTIME__MAX_STREAMS_PER_WORKER=str(args.connections + args.sse + 100),
            # Round robin gives a user at most one WebSocket and one SSE stream over the share.
            GLASSHOUSE_REALTIME__MAX_STREAMS_PER_USER=str(STREAMS_PER_USER + 2),
        ) as pod,
    ):
        [worker] = pod.worker_pids()
        measured = asyncio.run(measure(pod.url, worker, args))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "commit": commit,
        },
        "settings": {key: getattr(args, key) for key in ("connections", "sse", "seconds", "rate")}
        | {"streams_per_user": STREAMS_PER_USER, "open_at_once": OPEN_AT_ONCE},
        **measured,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    missing = {
        kind: figures["expected"] - figures["received"]
        for kind, figures in report["delivery"].items()
        if figures["received"] != figures["expected"]
    }
    if missing or report["streams_ended_early"]:
        sys.exit(f"missing events {missing}, streams ended early: {report['streams_ended_early']}")


if __name__ == "__main__":
    main()
