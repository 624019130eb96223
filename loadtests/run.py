"""Boot the whole service and put it under a short headless locust load; stop everything after.

    uv run python loadtests/run.py --users 20 --duration 30s --shape steady

gunicorn (--workers, 3) on a fresh PostgreSQL database migrated with alembic, the shared Redis
under a key prefix of its own, production argon2 parameters. locust runs from its own pinned
tool environment (never installed into the app's). Reports land in --reports
(loadtests/reports): `glasshouse_stats.csv`, `_failures.csv`, `_stats_history.csv`,
`glasshouse.html`, plus the service's log and final /metrics. The exit code is locust's: 0 when
every limit in loadtests/thresholds.py held. Arguments after `--` go to locust as they are.
`--host URL` skips the boot and loads a service that is already running.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from loadtests.stack import metric_samples, running_service
from tests.tools import tool_command

REPO = Path(__file__).resolve().parents[1]
LOCUST = "locust==2.47.0"
LOCUSTFILE = "loadtests/locustfile.py"
CSV_PREFIX = "glasshouse"
# Past the run time: spawning, stopping users (--stop-timeout) and writing the reports.
LOCUST_OVERHEAD_SECONDS = 120


def parse_seconds(text: str) -> int:
    """locust's time spans: 90, 90s, 2m, 1h30m."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2m, 1h30m)")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    own, passthrough = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20, help="peak simulated users")
    parser.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second")
    parser.add_argument("--duration", type=parse_seconds, default="30s", help="e.g. 30s, 5m")
    parser.add_argument("--shape", choices=["steady", "ramp", "spike"], default="steady")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--reports", type=Path, default=REPO / "loadtests" / "reports")
    parser.add_argument("--host", help="load this running service instead of booting one")
    parser.add_argument(
        "--fast-hashing",
        action="store_true",
        help="cheap argon2 parameters (the default is what production uses)",
    )
    return parser.parse_args(own), passthrough


def locust_command(host: str, args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    reports: Path = args.reports
    return [
        *tool_command(LOCUST, "locust"),
        "--locustfile",
        LOCUSTFILE,
        "--headless",
        "--host",
        host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        f"{args.duration}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(reports / CSV_PREFIX),
        "--csv-full-history",
        "--html",
        str(reports / f"{CSV_PREFIX}.html"),
        "--only-summary",
        *passthrough,
    ]


def run_locust(host: str, args: argparse.Namespace, passthrough: list[str]) -> int:
    command = locust_command(host, args, passthrough)
    env = {**os.environ, "LOCUST_SHAPE": args.shape}
    print(f"locust: {args.shape}, {args.users} users, {args.duration}s against {host}", flush=True)
    completed = subprocess.run(  # noqa: S603 (a fixed command line)
        command,
        cwd=REPO,
        env=env,
        timeout=args.duration + LOCUST_OVERHEAD_SECONDS,
        check=False,
    )
    return completed.returncode


def summarize_metrics(metrics_url: str, reports: Path) -> None:
    text = httpx.get(metrics_url, timeout=5).text
    (reports / "metrics.prom").write_text(text)
    cache = metric_samples(text, "glasshouse_cache_requests_total")
    hits = sum(value for labels, value in cache.items() if 'result="hit"' in labels)
    total = sum(cache.values())
    if total:
        print(f"cache: {hits:.0f} hits of {total:.0f} cacheable reads ({hits / total:.0%})")


def main(argv: list[str] | None = None) -> int:
    args, passthrough = parse_args(sys.argv[1:] if argv is None else argv)
    args.reports = args.reports.resolve()
    args.reports.mkdir(parents=True, exist_ok=True)
    for stale in args.reports.glob(f"{CSV_PREFIX}*"):
        stale.unlink()
    if args.host:
        return run_locust(args.host, args, passthrough)
    with (
        tempfile.TemporaryDirectory(prefix="glasshouse-load-") as workdir,
        running_service(
            Path(workdir), workers=args.workers, production_hashes=not args.fast_hashing
        ) as service,
    ):
        print(f"service: gunicorn, {args.workers} workers, at {service.url}", flush=True)
        try:
            return run_locust(service.url, args, passthrough)
        finally:
            summarize_metrics(service.metrics_url, args.reports)
            shutil.copy(service.log_path, args.reports / "service.log")


if __name__ == "__main__":
    sys.exit(main())
