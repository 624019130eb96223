"""Fault drills under load: break what the service depends on while a load loop runs, and check
that clients see what the "Failure modes" table of docs/operations.md promises.

    uv run python loadtests/drills.py             # prints a table; exit 1 if an expectation fails

gunicorn (3 workers) on a fresh PostgreSQL database reached through a TCP proxy the drill can
cut (tests/faults.py), and a redis-server of its own; the load (loadtests/drill_load.py)
mixes reads and writes. In order, on the same service:

1. redis_stop: Redis stopped for 10 s. Expected: no request fails.
2. postgres_cut: the proxy refuses PostgreSQL for 5 s (connect timeout 1 s). Expected: only
   503 database_unavailable, each within 2 s, none starting later than 5 s after the cut ends.
3. worker_kill: one worker SIGKILLed. Expected: only requests in flight on it fail, with a
   connection error, at most one per load loop.
4. master_sigterm: gunicorn's master SIGTERMed (a rolling restart's old pod). Expected: every
   request that started before the signal succeeds, and so do those in the drain; later ones
   may be refused.

After all four, every write answered 2xx must be in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from loadtests.drill_judge import JUDGES, lost_in, recovery_seconds, table
from loadtests.drill_load import LoadGenerator, Record, lost_writes, make_accounts
from service.items.models import Item
from tests.faults import ProxyMode, RedisServer, TcpProxy, running_proxy, running_redis
from tests.processes import Gunicorn, migrated_postgres_database, running_gunicorn

WORKERS = 3
REDIS_OUTAGE_SECONDS = 10.0
DATABASE_CUT_SECONDS = 5.0
BASELINE_SECONDS = 2.0
DRAIN_SECONDS = 2.0
GRACEFUL_TIMEOUT_SECONDS = 20.0
STARTUP_COMPLETE = "Application startup complete"
# What the drill's service is told: the bounds docs/operations.md states for a database outage
# rest on these.
SERVICE_SETTINGS = {
    "GLASSHOUSE_DATABASE__CONNECT_TIMEOUT_SECONDS": "1.0",
    "GLASSHOUSE_DATABASE__POOL_TIMEOUT_SECONDS": "1.0",
    "GLASSHOUSE_DATABASE__COMMAND_TIMEOUT_SECONDS": "1.5",
    "GLASSHOUSE_SERVER__DRAIN_SECONDS": str(DRAIN_SECONDS),
    "GLASSHOUSE_SERVER__GRACEFUL_TIMEOUT_SECONDS": str(GRACEFUL_TIMEOUT_SECONDS),
}


@dataclass
class Drill:
    name: str
    started: float  # the drill's window: requests that start in it are the drill's
    fault_start: float
    fault_end: float
    ended: float = 0.0
    concurrency: int = 0
    facts: dict[str, float | int | str] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    lost: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Record]:
        return [record for record in self.records if not record.ok]

    @property
    def max_latency(self) -> float:
        return max((record.seconds for record in self.records), default=0.0)

    @property
    def writes_acknowledged(self) -> int:
        return sum(1 for record in self.records if record.is_write and record.ok)

    @property
    def recovery(self) -> float | None:
        return recovery_seconds(self.records, self.fault_end)


@dataclass
class Stage:
    service: Gunicorn
    redis: RedisServer
    proxy: TcpProxy
    load: LoadGenerator
    probe: httpx.AsyncClient


async def redis_stop(stage: Stage) -> Drill:
    drill = await _baseline("redis_stop")
    drill.fault_start = time.monotonic()
    await asyncio.to_thread(stage.redis.stop)
    await asyncio.sleep(REDIS_OUTAGE_SECONDS / 2)
    ready = await stage.probe.get("/health/ready")
    drill.facts["readiness during"] = f"{ready.status_code} {ready.json().get('status')}"
    await asyncio.sleep(REDIS_OUTAGE_SECONDS / 2)
    await asyncio.to_thread(stage.redis.start)
    drill.fault_end = time.monotonic()
    await asyncio.sleep(4)
    return drill


async def postgres_cut(stage: Stage) -> Drill:
    drill = await _baseline("postgres_cut")
    drill.fault_start = time.monotonic()
    await asyncio.to_thread(stage.proxy.set_mode, ProxyMode.refuse)
    await asyncio.sleep(DATABASE_CUT_SECONDS / 2)
    ready = await stage.probe.get("/health/ready")
    drill.facts["readiness during"] = f"{ready.status_code} {ready.json().get('status')}"
    await asyncio.sleep(DATABASE_CUT_SECONDS / 2)
    await asyncio.to_thread(stage.proxy.set_mode, ProxyMode.forward)
    drill.fault_end = time.monotonic()
    await asyncio.sleep(6)
    return drill


async def worker_kill(stage: Stage) -> Drill:
    drill = await _baseline("worker_kill")
    service = stage.service
    # The worker holding the most of the load's connections: its death must cost the least.
    connections = {pid: client_connections(pid, service.port) for pid in service.worker_pids()}
    victim = max(connections, key=lambda pid: connections[pid])
    booted = service.logs().count(STARTUP_COMPLETE)
    drill.facts["victim's connections"] = connections[victim]
    drill.fault_start = drill.fault_end = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if service.logs().count(STARTUP_COMPLETE) > booted and victim not in service.worker_pids():
            drill.facts["replacement ready after s"] = round(
                time.monotonic() - drill.fault_start, 2
            )
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    return drill


def client_connections(pid: int, port: int) -> int:
    """Established connections on the service's port that process ``pid`` holds: proof that
    the worker killed was serving the load."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
    established = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in sockets:
            established += 1
    return established


async def master_sigterm(stage: Stage) -> Drill:
    drill = await _baseline("master_sigterm")
    drill.facts["drain s"] = DRAIN_SECONDS
    drill.fault_start = drill.fault_end = time.monotonic()
    stage.service.process.send_signal(signal.SIGTERM)
    bound = DRAIN_SECONDS + GRACEFUL_TIMEOUT_SECONDS + 10
    try:
        code = await asyncio.to_thread(stage.service.process.wait, timeout=bound)
        drill.facts["exit code"] = code
        drill.facts["exited after s"] = round(time.monotonic() - drill.fault_start, 2)
    except Exception:  # subprocess.TimeoutExpired: judged below, killed by the stage's cleanup
        drill.facts["exit code"] = "still running"
    await asyncio.sleep(0.5)  # a little load against the stopped service: refused, and bounded
    return drill


async def _baseline(name: str) -> Drill:
    started = time.monotonic()
    await asyncio.sleep(BASELINE_SECONDS)
    return Drill(name=name, started=started, fault_start=0.0, fault_end=0.0)


DRILLS = (redis_stop, postgres_cut, worker_kill, master_sigterm)


async def _drive(
    stage_parts: tuple[Gunicorn, RedisServer, TcpProxy], concurrency: int
) -> list[Drill]:
    service, redis_server, proxy = stage_parts
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as probe:
        accounts = await make_accounts(probe, concurrency)
        load = LoadGenerator(service.url, accounts)
        stage = Stage(service, redis_server, proxy, load, probe)
        running = asyncio.create_task(load.run())
        drills: list[Drill] = []
        try:
            for run_drill in DRILLS:
                drills.append(await run_drill(stage))
                drills[-1].ended = time.monotonic()
        finally:
            load.stop()
            await asyncio.wait_for(running, timeout=20)
    for drill in drills:
        drill.concurrency = concurrency
        drill.records = [r for r in load.records if drill.started <= r.started < drill.ended]
    return drills


def via_proxy(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(port=proxy.port).render_as_string(hide_password=False)


async def _stored_titles(database_url: str) -> dict[int, str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(Item.id, Item.title))
            return {int(item_id): str(title) for item_id, title in rows}
    finally:
        await engine.dispose()


@contextlib.contextmanager
def _stage(workdir: Path) -> Iterator[tuple[str, tuple[Gunicorn, RedisServer, TcpProxy]]]:
    with (
        migrated_postgres_database() as database_url,
        running_redis(workdir) as redis_server,
        running_proxy(5432) as proxy,
        running_gunicorn(
            via_proxy(database_url, proxy),
            workdir,
            workers=WORKERS,
            REDIS_URL=redis_server.url,
            GLASSHOUSE_CACHE__KEY_PREFIX=f"gh-drill-{uuid.uuid4().hex[:12]}",
            **SERVICE_SETTINGS,
        ) as service,
    ):
        yield database_url, (service, redis_server, proxy)


def run_drills(workdir: Path, *, concurrency: int = 6) -> list[Drill]:
    """Runs every drill against a service of its own and judges it; stops all it started."""
    with _stage(workdir) as (database_url, parts):
        drills = asyncio.run(_drive(parts, concurrency))
        stored = asyncio.run(_stored_titles(database_url))
    lost = lost_writes([r for drill in drills for r in drill.records], stored)
    for drill in drills:
        drill.lost = lost_in(lost, drill.started, drill.ended)
        drill.problems = JUDGES[drill.name](drill)
    return drills


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=6, help="load loops (one account each)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="glasshouse-drills-") as workdir:
        drills = run_drills(Path(workdir), concurrency=args.concurrency)
    print(table(drills))
    return 1 if any(drill.problems for drill in drills) else 0


if __name__ == "__main__":
    sys.exit(main())
