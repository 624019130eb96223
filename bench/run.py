"""What observability costs, measured side by side in one run.

Starts the service six times under gunicorn (one worker each, PostgreSQL + Redis): with
observability off, fully on exporting traces to a local OTLP sink at 100% and at 10% sampling,
the standard wiring (the named instrumentation libraries) at 10%, the baseline (a git worktree
of an earlier commit, observability off: what the database path cost before), and a bare
FastAPI app as the ceiling. Each variant has a PostgreSQL database of its own, so that the
sessions it opens can be counted. On the uncached read and create it also measures the
database floor (bench/database_floor_app.py, on the "off" variant's database): FastAPI and
SQLAlchemy's async session alone, with the service's engine and pool. After one short warm-up
run per endpoint and variant, round after round, alternating the variants (A B C, C B A, ...),
it drives each endpoint with wrk.
Each figure is the median of the rounds; each ratio is the median of the rounds' own ratios,
whose two runs were measured close together in time, so that the machine's drift between
rounds cancels out:

  a  cached item read      GET /api/v1/items/{id}
  b  uncached item read    the same with Cache-Control: no-cache (PostgreSQL)
  c  item create           POST /api/v1/items
  d  trivial endpoint      GET /api/v1/info
  e  list with filters     GET /api/v1/items?status=&priority=&sort=&limit=20, no-cache,
                           by a user owning a few hundred items

wrk runs on the first CPU and every measured worker on the last, so that each variant gets
the same placement. Spans left queued when a traced run ends are sent before the next run.
New PostgreSQL connections are read from pg_stat_database.sessions around every run.
It prints a table of ratios and writes the numbers to JSON. A benchmark, not a test: it
checks nothing, it measures. Run it with `make bench` (docs/performance.md shows the latest table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL  # noqa: E402 (after the path is set)
from tests.processes import (  # noqa: E402
    Gunicorn,
    migrated_postgres_database,
    running_gunicorn,
    running_otlp_sink,
    sessions_established,
)

WRK_SCRIPT = REPO / "bench" / "wrk" / "request.lua"
VARIANTS = ("off", "on-100%", "on-10%", "standard-10%")
BASELINE = "baseline"
# The commit before the first change of the issue "The database path".
BASELINE_REV = "1b09a48"
# Under load the span exporter sends a batch whenever 512 spans are queued; only what is left
# when a run ends waits for this delay (the SDK's default is 5 s). Shortened so that it is sent
# before the next variant's run, instead of costing that variant CPU.
EXPORT_IDLE_DELAY_MS = 500
ENDPOINTS = {
    "a": "cached item read",
    "b": "uncached item read",
    "c": "item create",
    "d": "trivial endpoint",
    "e": "list with filters",
}
# Endpoint e's user owns LIST_ITEMS items, every status with priorities 2 and 3 alike: the
# filter matches a sixth of them (more than a page), sorted by title.
LIST_ITEMS = 300
LIST_QUERY = "status=doing&priority=2&sort=title&limit=20"
STEADY_CONNECTIONS = 8
# The endpoints whose work is the database's: what the baseline is compared on.
DATABASE_PATH = ("b", "c", "e")
FLOOR = "floor"
FLOOR_ENDPOINTS = ("b", "c")


@dataclass
class Target:
    name: str
    server: Gunicorn
    database: str
    token: str = ""
    item_id: int = 0
    owner_id: int = 0
    # Endpoint e's user: its items stay as prepared (c creates items for the other user).
    list_token: str = ""
    startup_seconds: float = 0.0


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    # The measured worker's own CPU time per request (user + system), from the start of the
    # run until its queued spans are sent: what the service pays, whatever the load
    # generator, the sink, PostgreSQL and Redis cost the shared cores.
    worker_cpu_us: float = 0.0
    # PostgreSQL sessions established to the variant's database during the run.
    new_connections: float = 0


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, key: str, sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)

    def median(self, key: str) -> Sample:
        runs = self.samples[key]
        return Sample(
            rps=statistics.median(s.rps for s in runs),
            p50_ms=statistics.median(s.p50_ms for s in runs),
            p99_ms=statistics.median(s.p99_ms for s in runs),
            errors=sum(s.errors for s in runs),
            requests=sum(s.requests for s in runs),
            worker_cpu_us=statistics.median(s.worker_cpu_us for s in runs),
            new_connections=statistics.median(s.new_connections for s in runs),
        )


def wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    method: str = "GET",
    token: str = "",
    body: str = "",
    no_cache: bool = False,
    delay_ms: float = 0,
) -> Sample:
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_PATH": httpx.URL(url).raw_path.decode()}
    if token:
        env["BENCH_TOKEN"] = token
    if body:
        env["BENCH_BODY"] = body
    if no_cache:
        env["BENCH_NO_CACHE"] = "1"
    if delay_ms:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    origin = f"{httpx.URL(url).scheme}://{httpx.URL(url).netloc.decode()}"
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(int(seconds), 1)}s",
            "--latency",
            "-s",
            str(WRK_SCRIPT),
            origin,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith('{"requests"'))
    data = json.loads(line)
    return Sample(
        rps=data["requests"] / data["seconds"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        errors=data["errors"],
        requests=data["requests"],
    )


def new_user_token(client: httpx.Client) -> str:
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    credentials = {"email": email, "password": "benchmark-password"}
    client.post("/api/v1/auth/register", json=credentials).raise_for_status()
    tokens = client.post(
        "/api/v1/auth/token", data={"username": email, "password": credentials["password"]}
    )
    return str(tokens.raise_for_status().json()["access_token"])


def prepare(target: Target) -> None:
    """Through the API, so that any commit's schema (the baseline's too) gets the same data."""
    with httpx.Client(base_url=target.server.url, timeout=10) as client:
        target.token = new_user_token(client)
        headers = {"Authorization": f"Bearer {target.token}"}
        item = client.post("/api/v1/items", json={"title": "Water the ferns"}, headers=headers)
        target.item_id = item.raise_for_status().json()["id"]
        target.owner_id = item.json()["owner_id"]
        client.get(f"/api/v1/items/{target.item_id}", headers=headers).raise_for_status()
        target.list_token = new_user_token(client)
        headers = {"Authorization": f"Bearer {target.list_token}"}
        for number in range(LIST_ITEMS):
            item_data = {
                "title": f"Item {number:03d}",
                "status": ("todo", "doing", "done")[number % 3],
                "priority": 2 + number % 2,
            }
            client.post("/api/v1/items", json=item_data, headers=headers).raise_for_status()
        page = client.get(f"/api/v1/items?{LIST_QUERY}", headers=headers)
        assert len(page.raise_for_status().json()["items"]) == 20, page.text


def measure(
    target: Target, endpoint: str, seconds: float, connections: int, delay_ms: float = 0
) -> Sample:
    base = target.server.url

    def load(url: str, **request: Any) -> Sample:
        return wrk(url, seconds=seconds, connections=connections, delay_ms=delay_ms, **request)

    item_url = f"{base}/api/v1/items/{target.item_id}"
    if endpoint == "a":
        return load(item_url, token=target.token)
    if endpoint == "b":
        return load(item_url, token=target.token, no_cache=True)
    if endpoint == "c":
        body = '{"title": "Benchmark item", "priority": 2}'
        return load(f"{base}/api/v1/items", method="POST", token=target.token, body=body)
    if endpoint == "e":
        return load(f"{base}/api/v1/items?{LIST_QUERY}", token=target.list_token, no_cache=True)
    return load(f"{base}/api/v1/info")


class SessionCounter:
    """pg_stat_database.sessions: every session ever established to a database, read over one
    connection of its own to the admin database (so that reading counts in no variant's)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._connection = self._loop.run_until_complete(asyncpg.connect(plain_dsn()))

    def sessions(self, database: str) -> int:
        return self._loop.run_until_complete(sessions_established(self._connection, database))

    def check_counts(self, database: str) -> None:
        """A connection of our own, kept open as a pool keeps its own, must move the counter
        within a moment, or every count would be 0 or late."""
        before = self.sessions(database)
        connection = self._loop.run_until_complete(asyncpg.connect(plain_dsn(database)))
        try:
            deadline = time.monotonic() + 5
            while self.sessions(database) <= before:
                if time.monotonic() > deadline:
                    raise SystemExit(f"pg_stat_database.sessions of {database} did not move")
                time.sleep(0.05)
        finally:
            self._loop.run_until_complete(connection.close())

    def close(self) -> None:
        self._loop.run_until_complete(self._connection.close())
        self._loop.close()


def plain_dsn(database: str | None = None) -> str:
    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql")
    if database:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


@contextmanager
def baseline_worktree(rev: str) -> Iterator[Path]:
    """A detached checkout of ``rev`` (a git worktree), removed at exit, even on error."""
    parent = Path(tempfile.mkdtemp(prefix="glasshouse-baseline-"))
    tree = parent / "tree"
    try:
        added = subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), rev],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode != 0:
            raise SystemExit(f"git worktree add {rev}: {added.stderr.strip()}")
        yield tree
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True
        )
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, capture_output=True)


def commit_of(tree: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True
    ).stdout.strip()


def run_once(
    target: Target, endpoint: str, seconds: float, connections: int, counter: SessionCounter
) -> Sample:
    sessions_before = counter.sessions(target.database)
    cpu_before = worker_cpu_seconds(target.server)
    sample = measure(target, endpoint, seconds, connections)
    # Spans still queued when the load stops go out now, not while the next variant is being
    # measured (every variant waits, so all are alike).
    time.sleep(2 * EXPORT_IDLE_DELAY_MS / 1000)
    cpu = worker_cpu_seconds(target.server) - cpu_before
    sample.worker_cpu_us = 1e6 * cpu / max(sample.requests, 1)
    sample.new_connections = counter.sessions(target.database) - sessions_before
    return sample


def steady_load(
    target: Target, endpoint: str, target_rps: float, seconds: float, counter: SessionCounter
) -> Sample:
    """A steady load at ``target_rps``: each connection waits a delay after every answer, so
    it sends one request per (delay + response time). A short run measures the response time,
    and the delay is shortened by it (without this the load came out at about 40% of peak)."""
    delay_ms = STEADY_CONNECTIONS * 1000 / target_rps
    calibration = measure(target, endpoint, min(3, seconds), STEADY_CONNECTIONS, delay_ms=delay_ms)
    response_ms = STEADY_CONNECTIONS * 1000 / max(calibration.rps, 1) - delay_ms
    sessions_before = counter.sessions(target.database)
    steady = measure(
        target,
        endpoint,
        seconds,
        STEADY_CONNECTIONS,
        delay_ms=max(delay_ms - max(response_ms, 0), 0.1),
    )
    time.sleep(2 * EXPORT_IDLE_DELAY_MS / 1000)
    steady.new_connections = counter.sessions(target.database) - sessions_before
    return steady


def worker_cpu_seconds(server: Gunicorn) -> float:
    """User + system CPU time of the server's workers so far."""
    ticks = 0
    for pid in server.worker_pids():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def worker_rss_mb(server: Gunicorn) -> float:
    total = 0.0
    for pid in server.worker_pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total = max(total, int(line.split()[1]) / 1024)
    return total


def pin_load_generator() -> None:
    """wrk (started from here) on the first CPU, every measured worker on the last: each
    variant runs with the same placement instead of wherever the scheduler put it, which moved
    a single run's ratios by up to 0.15 on this machine."""
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def pin_workers(server: Gunicorn) -> None:
    cpus = os.sched_getaffinity(server.process.pid)
    if len(cpus) >= 2:
        for pid in server.worker_pids():
            os.sched_setaffinity(pid, {max(cpus)})


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: apt-get install wrk (needs root)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def stop_on_sigterm(signum: int, frame: object) -> None:
    """A terminated run unwinds like an interrupted one: servers, databases and the baseline's
    worktree are all removed."""
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--steady-seconds", type=int, default=10)
    parser.add_argument(
        "--baseline",
        default=BASELINE_REV,
        help=f"the commit the baseline variant runs (default {BASELINE_REV}), or none",
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    ensure_wrk()
    signal.signal(signal.SIGTERM, stop_on_sigterm)

    results = Results()
    warm_up: dict[str, dict[str, Sample]] = {}
    baseline_commit = ""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glasshouse-bench-")))
        sink = stack.enter_context(running_otlp_sink())
        counter = SessionCounter()
        stack.callback(counter.close)
        common = {
            "REDIS_URL": REDIS_URL,
            "GLASSHOUSE_SERVER__WORKERS": "1",
            # The benchmark's own login must not be throttled, and users stay cached.
            "GLASSHOUSE_RATE_LIMIT__ENABLED": "false",
        }
        variants = {
            "off": {"GLASSHOUSE_OBSERVABILITY__ENABLED": "false"},
            "on-100%": {
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_IDLE_DELAY_MS),
                "GLASSHOUSE_OBSERVABILITY__TRACE_SAMPLE_RATIO": "1.0",
            },
            "on-10%": {
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_IDLE_DELAY_MS),
                "GLASSHOUSE_OBSERVABILITY__TRACE_SAMPLE_RATIO": "0.1",
            },
            # The named libraries' wiring (prometheus-fastapi-instrumentator,
            # opentelemetry-instrumentation-fastapi and -redis), at the production sampling.
            "standard-10%": {
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_IDLE_DELAY_MS),
                "GLASSHOUSE_OBSERVABILITY__TRACE_SAMPLE_RATIO": "0.1",
                "GLASSHOUSE_OBSERVABILITY__INSTRUMENTATION": "standard",
            },
        }
        checkouts = dict.fromkeys(variants, REPO)
        if args.baseline.lower() != "none":
            # The earlier commit's service, gunicorn.conf.py and migrations, run by the same
            # interpreter and given only settings that commit knows: the common ones and off's.
            checkouts[BASELINE] = stack.enter_context(baseline_worktree(args.baseline))
            baseline_commit = commit_of(checkouts[BASELINE])
            variants[BASELINE] = variants["off"]
        targets: dict[str, Target] = {}
        for name, extra in variants.items():
            repo = checkouts[name]
            database_url = stack.enter_context(migrated_postgres_database(repo=repo))
            database = str(make_url(database_url).database)
            if not targets:
                counter.check_counts(database)
            started = time.perf_counter()
            server = stack.enter_context(
                running_gunicorn(
                    database_url,
                    workdir / name,
                    workers=1,
                    repo=repo,
                    **common,
                    **extra,
                    GLASSHOUSE_CACHE__KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}",
                )
            )
            startup = time.perf_counter() - started
            targets[name] = Target(name, server, database, startup_seconds=startup)
            pin_workers(server)
            prepare(targets[name])
        bare = stack.enter_context(
            running_gunicorn(
                "postgresql+asyncpg://127.0.0.1/unused",  # the bare app opens no database
                workdir / "bare",
                workers=1,
                app="bench.bare_app:app",
                GLASSHOUSE_OBSERVABILITY__ENABLED="false",
            )
        )
        pin_workers(bare)
        off = targets["off"]
        floor = Target(
            FLOOR,
            stack.enter_context(
                running_gunicorn(
                    make_url(POSTGRES_ADMIN_URL)
                    .set(database=off.database)
                    .render_as_string(hide_password=False),
                    workdir / FLOOR,
                    workers=1,
                    app="bench.database_floor_app:app",
                    BENCH_FLOOR_OWNER_ID=str(off.owner_id),
                )
            ),
            off.database,
            token=off.token,
            item_id=off.item_id,
        )
        pin_workers(floor.server)
        pin_load_generator()  # after the servers started: they must not inherit it

        measured = tuple(targets)
        # The first burst opens each pool's connections: counted here, apart from the rounds.
        for endpoint in ENDPOINTS:
            for name in measured:
                sample = run_once(targets[name], endpoint, 1, args.connections, counter)
                warm_up.setdefault(name, {})[endpoint] = sample
                print(
                    f"warm-up {name:12} {endpoint}: {sample.new_connections:3.0f} new connections",
                    file=sys.stderr,
                )
        for endpoint in FLOOR_ENDPOINTS:
            run_once(floor, endpoint, 1, args.connections, counter)

        for round_number in range(args.rounds):
            order = measured if round_number % 2 == 0 else tuple(reversed(measured))
            for endpoint in ENDPOINTS:
                runs = [targets[name] for name in order]
                if endpoint in FLOOR_ENDPOINTS:
                    runs.append(floor)
                for target in runs:
                    name = target.name
                    sample = run_once(target, endpoint, args.seconds, args.connections, counter)
                    results.add(f"{name}/{endpoint}", sample)
                    print(
                        f"round {round_number + 1} {name:12} {endpoint}: {sample.rps:8.0f} rps"
                        f" {sample.worker_cpu_us:6.0f} us CPU/request"
                        f" {sample.new_connections:3.0f} new connections",
                        file=sys.stderr,
                    )
            ceiling = wrk(f"{bare.url}/item", seconds=args.seconds, connections=args.connections)
            results.add("bare/a", ceiling)
            print(
                f"round {round_number + 1} bare         a: {ceiling.rps:8.0f} rps", file=sys.stderr
            )

        # p99 under a steady load at half the peak throughput: the cached read in production
        # (on-10%), the filtered list on the database path (off).
        steady = {
            "steady_cached_read": ("on-10%", "a"),
            "steady_list_with_filters": ("off", "e"),
        }
        steady_runs: dict[str, dict[str, Any]] = {}
        for key, (name, endpoint) in steady.items():
            target_rps = results.median(f"{name}/{endpoint}").rps / 2
            sample = steady_load(targets[name], endpoint, target_rps, args.steady_seconds, counter)
            steady_runs[key] = {
                "variant": name,
                "target_rps": round(target_rps),
                "achieved_rps": round(sample.rps),
                "p50_ms": sample.p50_ms,
                "p99_ms": sample.p99_ms,
                "errors": sample.errors,
                "new_connections": sample.new_connections,
            }
        rss = {name: worker_rss_mb(target.server) for name, target in targets.items()}
        startup_seconds = {name: target.startup_seconds for name, target in targets.items()}
        spans_received = len(sink.snapshot())

    report = build_report(results, warm_up, steady_runs, rss, startup_seconds, spans_received, args)
    report["baseline"] = (
        {"rev": args.baseline, "commit": baseline_commit} if baseline_commit else None
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    return 0


def build_report(
    results: Results,
    warm_up: dict[str, dict[str, Sample]],
    steady_runs: dict[str, dict[str, Any]],
    rss: dict[str, float],
    startup: dict[str, float],
    spans_received: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    medians = {key: results.median(key).__dict__ for key in results.samples}

    def ratio(numerator: str, denominator: str, of: str = "rps") -> float:
        """The median of the rounds' own ratios: the two runs of a round are measured minutes
        apart at most, while this machine's speed drifts between rounds (the bare ceiling moved
        by 25% within one run), so pairs cancel what a ratio of medians would keep."""
        pairs = zip(results.samples[numerator], results.samples[denominator], strict=True)
        value = attrgetter(of)
        return statistics.median(value(top) / value(bottom) for top, bottom in pairs)

    ratios = {f"on-10% / off ({e})": ratio(f"on-10%/{e}", f"off/{e}") for e in ENDPOINTS} | {
        f"on-100% / off ({e})": ratio(f"on-100%/{e}", f"off/{e}") for e in ENDPOINTS
    }
    ratios |= {
        f"standard-10% / off ({e})": ratio(f"standard-10%/{e}", f"off/{e}") for e in ENDPOINTS
    }
    ratios |= {
        f"on-10% / standard-10% ({e})": ratio(f"on-10%/{e}", f"standard-10%/{e}") for e in ENDPOINTS
    }
    # off's worker CPU per request over the variant's: the ratio requests/s would have if the
    # worker's own CPU time were all that limited it.
    for variant in ("on-10%", "on-100%", "standard-10%"):
        ratios |= {
            f"worker CPU, {variant} / off ({e})": ratio(
                f"off/{e}", f"{variant}/{e}", of="worker_cpu_us"
            )
            for e in ENDPOINTS
        }
    if f"{BASELINE}/b" in results.samples:
        # The database path against the commit before it: off's requests/s over the
        # baseline's, and the baseline's worker CPU per request over off's (2 = half the CPU).
        for e in DATABASE_PATH:
            ratios[f"off / baseline ({e})"] = ratio(f"off/{e}", f"{BASELINE}/{e}")
            ratios[f"worker CPU, off / baseline ({e})"] = ratio(
                f"{BASELINE}/{e}", f"off/{e}", of="worker_cpu_us"
            )
        # The floor against the same baseline: how far reading and writing through
        # SQLAlchemy's async session lets the service go at best.
        for e in FLOOR_ENDPOINTS:
            ratios[f"floor / baseline ({e})"] = ratio(f"{FLOOR}/{e}", f"{BASELINE}/{e}")
            ratios[f"worker CPU, floor / baseline ({e})"] = ratio(
                f"{BASELINE}/{e}", f"{FLOOR}/{e}", of="worker_cpu_us"
            )
    ratios["cached read on-10% / bare"] = ratio("on-10%/a", "bare/a")
    ratios["cached read off / bare"] = ratio("off/a", "bare/a")
    ratios["cached / uncached read (on-10%)"] = ratio("on-10%/a", "on-10%/b")
    connections = {
        variant: {
            endpoint: {
                "warm_up": sample.new_connections,
                "median": results.median(f"{variant}/{endpoint}").new_connections,
                "max": max(s.new_connections for s in results.samples[f"{variant}/{endpoint}"]),
            }
            for endpoint, sample in by_endpoint.items()
        }
        for variant, by_endpoint in warm_up.items()
    }
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "rounds": args.rounds,
            "seconds_per_run": args.seconds,
            "connections": args.connections,
            "workers": 1,
        },
        "medians": medians,
        "ratios": {key: round(value, 3) for key, value in ratios.items()},
        "new_postgres_connections_per_run": connections,
        **steady_runs,
        "worker_rss_mb": {key: round(value, 1) for key, value in rss.items()},
        "startup_to_ready_seconds": {key: round(value, 2) for key, value in startup.items()},
        "spans_received_by_sink": spans_received,
    }


def render(report: dict[str, Any]) -> str:
    medians = report["medians"]
    variants = [*VARIANTS, *([BASELINE] if f"{BASELINE}/a" in medians else [])]
    lines = [
        "",
        f"{'endpoint':24} {'off':>9} {'on-100%':>9} {'on-10%':>9} {'std-10%':>9}"
        f"   {'100%/off':>8} {'10%/off':>8} {'std/off':>8}   p99 ms (off/100%/10%/std)",
    ]
    for endpoint, label in ENDPOINTS.items():
        values = [medians[f"{v}/{endpoint}"] for v in VARIANTS]
        lines.append(
            f"{endpoint} {label:22} "
            + " ".join(f"{v['rps']:9.0f}" for v in values)
            + f"   {report['ratios'][f'on-100% / off ({endpoint})']:8.2f}"
            + f" {report['ratios'][f'on-10% / off ({endpoint})']:8.2f}"
            + f" {report['ratios'][f'standard-10% / off ({endpoint})']:8.2f}"
            + "   "
            + "/".join(f"{v['p99_ms']:.1f}" for v in values)
        )
    lines.append(f"bare FastAPI ceiling     {medians['bare/a']['rps']:9.0f} rps")
    lines.append("")
    lines.append(f"worker CPU per request (us), {' / '.join(variants)}:")
    for endpoint, label in ENDPOINTS.items():
        cpu = [medians[f"{v}/{endpoint}"]["worker_cpu_us"] for v in variants]
        lines.append(f"{endpoint} {label:22} " + " ".join(f"{value:9.0f}" for value in cpu))
    if report.get("baseline"):
        lines += ["", f"the database path, off against the baseline ({report['baseline']['rev']}):"]
        lines.append(
            f"{'endpoint':24} {'baseline':>9} {'off':>9} {'off/base':>9}"
            f"   {'CPU us base':>11} {'off':>6} {'base/off':>9}   p99 ms (base/off)"
        )
        for endpoint in DATABASE_PATH:
            base, off = medians[f"{BASELINE}/{endpoint}"], medians[f"off/{endpoint}"]
            lines.append(
                f"{endpoint} {ENDPOINTS[endpoint]:22} {base['rps']:9.0f} {off['rps']:9.0f}"
                f" {report['ratios'][f'off / baseline ({endpoint})']:9.2f}"
                f"   {base['worker_cpu_us']:11.0f} {off['worker_cpu_us']:6.0f}"
                f" {report['ratios'][f'worker CPU, off / baseline ({endpoint})']:9.2f}"
                f"   {base['p99_ms']:.1f}/{off['p99_ms']:.1f}"
            )
        lines += [
            "",
            "the database floor (FastAPI + SQLAlchemy's session only) against the baseline:",
        ]
        for endpoint in FLOOR_ENDPOINTS:
            floor = medians[f"{FLOOR}/{endpoint}"]
            lines.append(
                f"{endpoint} {ENDPOINTS[endpoint]:22} {floor['rps']:9.0f} rps"
                f" {report['ratios'][f'floor / baseline ({endpoint})']:5.2f}x the baseline,"
                f" {floor['worker_cpu_us']:6.0f} us CPU,"
                f" {1 / report['ratios'][f'worker CPU, floor / baseline ({endpoint})']:.2f}"
                " of the baseline's"
            )
    lines += ["", "new PostgreSQL connections per run, warm-up / median / max of the rounds:"]
    connections = report["new_postgres_connections_per_run"]
    lines.append(f"{'endpoint':24} " + " ".join(f"{v:>13}" for v in connections))
    for endpoint, label in ENDPOINTS.items():
        counts = [
            "{warm_up:g} / {median:g} / {max:g}".format(**by_endpoint[endpoint])
            for by_endpoint in connections.values()
        ]
        lines.append(f"{endpoint} {label:22} " + " ".join(f"{count:>13}" for count in counts))
    lines.append("")
    for key, value in report["ratios"].items():
        lines.append(f"{key:36} {value:6.2f}")
    for key, title in (
        ("steady_cached_read", "steady cached read"),
        ("steady_list_with_filters", "steady list with filters"),
    ):
        steady = report[key]
        lines.append(
            f"{title} ({steady['variant']}) at {steady['achieved_rps']} rps "
            f"(target {steady['target_rps']}, 50% of peak): "
            f"p50 {steady['p50_ms']:.1f} ms, p99 {steady['p99_ms']:.1f} ms, "
            f"{steady['new_connections']:g} new connections"
        )
    lines.append(f"worker RSS MB: {report['worker_rss_mb']}")
    lines.append(f"start to ready s: {report['startup_to_ready_seconds']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
