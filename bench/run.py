"""What observability costs, measured side by side in one run.

Starts the service five times under gunicorn (one worker each, PostgreSQL + Redis): with
observability off, fully on exporting traces to a local OTLP sink at 100% and at 10% sampling,
the standard wiring (the named instrumentation libraries) at 10%, and a bare FastAPI app as the
ceiling. Then, round after round, alternating the variants
(A B C, C B A, ...), it drives each endpoint with wrk. Each figure is the median of the
rounds; each ratio is the median of the rounds' own ratios, whose two runs were measured
close together in time, so that the machine's drift between rounds cancels out:

  a  cached item read      GET /api/v1/items/{id}
  b  uncached item read    the same with Cache-Control: no-cache (PostgreSQL)
  c  item create           POST /api/v1/items
  d  trivial endpoint      GET /api/v1/info

wrk runs on the first CPU and every measured worker on the last, so that each variant gets
the same placement. Spans left queued when a traced run ends are sent before the next run.
It prints a table of ratios and writes the numbers to JSON. A benchmark, not a test: it
checks nothing, it measures. Run it with `make bench` (docs/performance.md shows the latest table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import REDIS_URL  # noqa: E402 (after the path is set)
from tests.processes import (  # noqa: E402
    Gunicorn,
    migrated_postgres_database,
    running_gunicorn,
    running_otlp_sink,
)

WRK_SCRIPT = REPO / "bench" / "wrk" / "request.lua"
VARIANTS = ("off", "on-100%", "on-10%", "standard-10%")
# Under load the span exporter sends a batch whenever 512 spans are queued; only what is left
# when a run ends waits for this delay (the SDK's default is 5 s). Shortened so that it is sent
# before the next variant's run, instead of costing that variant CPU.
EXPORT_IDLE_DELAY_MS = 500
ENDPOINTS = {
    "a": "cached item read",
    "b": "uncached item read",
    "c": "item create",
    "d": "trivial endpoint",
}


@dataclass
class Target:
    name: str
    server: Gunicorn
    token: str = ""
    item_id: int = 0
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


def prepare(target: Target) -> None:
    base = target.server.url
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    credentials = {"email": email, "password": "benchmark-password"}
    httpx.post(f"{base}/api/v1/auth/register", json=credentials).raise_for_status()
    tokens = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": email, "password": credentials["password"]}
    ).json()
    target.token = tokens["access_token"]
    headers = {"Authorization": f"Bearer {target.token}"}
    item = httpx.post(f"{base}/api/v1/items", json={"title": "Water the ferns"}, headers=headers)
    target.item_id = item.json()["id"]
    httpx.get(f"{base}/api/v1/items/{target.item_id}", headers=headers).raise_for_status()


def measure(target: Target, endpoint: str, seconds: float, connections: int) -> Sample:
    base = target.server.url
    item_url = f"{base}/api/v1/items/{target.item_id}"
    if endpoint == "a":
        return wrk(item_url, seconds=seconds, connections=connections, token=target.token)
    if endpoint == "b":
        return wrk(
            item_url, seconds=seconds, connections=connections, token=target.token, no_cache=True
        )
    if endpoint == "c":
        body = '{"title": "Benchmark item", "priority": 2}'
        return wrk(
            f"{base}/api/v1/items",
            seconds=seconds,
            connections=connections,
            method="POST",
            token=target.token,
            body=body,
        )
    return wrk(f"{base}/api/v1/info", seconds=seconds, connections=connections)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--steady-seconds", type=int, default=10)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    ensure_wrk()

    results = Results()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glasshouse-bench-")))
        database_url = stack.enter_context(migrated_postgres_database())
        sink = stack.enter_context(running_otlp_sink())
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
        targets: dict[str, Target] = {}
        for name, extra in variants.items():
            started = time.perf_counter()
            server = stack.enter_context(
                running_gunicorn(
                    database_url,
                    workdir / name,
                    workers=1,
                    **common,
                    **extra,
                    GLASSHOUSE_CACHE__KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}",
                )
            )
            targets[name] = Target(name, server, startup_seconds=time.perf_counter() - started)
            pin_workers(server)
            prepare(targets[name])
        bare = stack.enter_context(
            running_gunicorn(
                database_url,
                workdir / "bare",
                workers=1,
                app="bench.bare_app:app",
                GLASSHOUSE_OBSERVABILITY__ENABLED="false",
            )
        )
        pin_workers(bare)
        pin_load_generator()  # after the servers started: they must not inherit it

        for round_number in range(args.rounds):
            order = VARIANTS if round_number % 2 == 0 else tuple(reversed(VARIANTS))
            for endpoint in ENDPOINTS:
                for name in order:
                    cpu_before = worker_cpu_seconds(targets[name].server)
                    sample = measure(targets[name], endpoint, args.seconds, args.connections)
                    # Spans still queued when the load stops go out now, not while the next
                    # variant is being measured (every variant waits, so all are alike).
                    time.sleep(2 * EXPORT_IDLE_DELAY_MS / 1000)
                    cpu = worker_cpu_seconds(targets[name].server) - cpu_before
                    sample.worker_cpu_us = 1e6 * cpu / max(sample.requests, 1)
                    results.add(f"{name}/{endpoint}", sample)
                    print(
                        f"round {round_number + 1} {name:8} {endpoint}: {sample.rps:8.0f} rps"
                        f" {sample.worker_cpu_us:6.0f} us CPU/request",
                        file=sys.stderr,
                    )
            ceiling = wrk(f"{bare.url}/item", seconds=args.seconds, connections=args.connections)
            results.add("bare/a", ceiling)
            print(f"round {round_number + 1} bare     a: {ceiling.rps:8.0f} rps", file=sys.stderr)

        # p99 of the cached read under a steady load at half its peak throughput.
        production = targets["on-10%"]
        peak = results.median("on-10%/a").rps
        steady_connections = 8
        target_rps = peak / 2

        def steady_load(delay_ms: float, seconds: float) -> Sample:
            return wrk(
                f"{production.server.url}/api/v1/items/{production.item_id}",
                seconds=seconds,
                connections=steady_connections,
                token=production.token,
                delay_ms=delay_ms,
            )

        # Each connection waits the delay after every answer, so it sends one request per
        # (delay + response time): a short run measures the response time, and the delay is
        # shortened by it (without this the load came out at about 40% of peak, not 50%).
        delay_ms = steady_connections * 1000 / target_rps
        calibration = steady_load(delay_ms, seconds=min(3, args.steady_seconds))
        response_ms = steady_connections * 1000 / max(calibration.rps, 1) - delay_ms
        steady = steady_load(max(delay_ms - max(response_ms, 0), 0.1), args.steady_seconds)
        rss = {name: worker_rss_mb(target.server) for name, target in targets.items()}
        startup = {name: target.startup_seconds for name, target in targets.items()}
        spans_received = len(sink.snapshot())

    report = build_report(results, steady, target_rps, rss, startup, spans_received, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    return 0


def build_report(
    results: Results,
    steady: Sample,
    steady_target_rps: float,
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
    ratios["cached read on-10% / bare"] = ratio("on-10%/a", "bare/a")
    ratios["cached read off / bare"] = ratio("off/a", "bare/a")
    ratios["cached / uncached read (on-10%)"] = ratio("on-10%/a", "on-10%/b")
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
        "steady_cached_read": {
            "target_rps": round(steady_target_rps),
            "achieved_rps": round(steady.rps),
            "p50_ms": steady.p50_ms,
            "p99_ms": steady.p99_ms,
            "errors": steady.errors,
        },
        "worker_rss_mb": {key: round(value, 1) for key, value in rss.items()},
        "startup_to_ready_seconds": {key: round(value, 2) for key, value in startup.items()},
        "spans_received_by_sink": spans_received,
    }


def render(report: dict[str, Any]) -> str:
    medians = report["medians"]
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
    lines.append("worker CPU per request (us), off / on-100% / on-10% / standard-10%:")
    for endpoint, label in ENDPOINTS.items():
        cpu = [medians[f"{v}/{endpoint}"]["worker_cpu_us"] for v in VARIANTS]
        lines.append(f"{endpoint} {label:22} " + " ".join(f"{value:9.0f}" for value in cpu))
    lines.append("")
    for key, value in report["ratios"].items():
        lines.append(f"{key:36} {value:6.2f}")
    steady = report["steady_cached_read"]
    lines.append(
        f"steady cached read at {steady['achieved_rps']} rps "
        f"(target {steady['target_rps']}, 50% of peak): "
        f"p50 {steady['p50_ms']:.1f} ms, p99 {steady['p99_ms']:.1f} ms"
    )
    lines.append(f"worker RSS MB: {report['worker_rss_mb']}")
    lines.append(f"start to ready s: {report['startup_to_ready_seconds']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
