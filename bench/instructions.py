"""What observability costs in instructions per request: the steady instrument.

On this machine the same worker's CPU time per request moves by 15-30% from one short run to
the next, so a 5% change cannot be seen in requests/s or CPU time. Instruction counts barely
move: each variant's app (bench/inprocess.py) runs under ``valgrind --tool=callgrind``, which
counts the instructions executed inside asyncio's callbacks and tasks (``context_run``) and
in threads (``thread_run``, the span exporter), and the count for 20 requests after a warm-up
is subtracted from the count for 220, leaving 200 requests' worth. Run to run within 3%;
every run uses the same hash seed (PYTHONHASHSEED, 0 unless set), so that two versions of the
code are compared with the same dict and set layouts.

Variants: off, on with tracing at 0% (the fixed cost: request ID, log context, access line,
metrics, span middleware) and on at 100%; 10% is reported as 0% plus a tenth of the traced
part, since which requests a real 10% draw traces is random. Instructions are not time (cache
misses and system calls are not in them): read the ratios beside `make bench`, not instead.

  python bench/instructions.py [--endpoints a,d] [--variants off,on-0%,on-100%]
  python bench/instructions.py --parts [--endpoints a]

``--parts`` splits the fixed cost by part: on at 0% is run again with each part switched off
in turn (the access line, the HTTP metrics, tracing), each part's cost is what switching it
off saved, and what is left over "off" is the request-context middleware itself (request ID,
log context, response headers, the send wrapper).

About a minute per variant and endpoint, two at a time (one per core). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
WARM_UP = 100
FEW, MANY = 20, 220
# CPython's C functions that every asyncio callback and task step, and every thread, run in.
COLLECTED_FUNCTIONS = ("context_run", "thread_run")
# Under valgrind the app runs about 50 times slower than in real time, so work done once per
# period (access lines and metrics written every second, spans exported every 5 s when fewer
# than a batch are waiting) would be charged to each request about 50 times as often as in a
# worker under load, where it is a rounding error (the cached read on at 0% counted 999k
# instructions a request with them, 984k without). In the child those periods are an hour;
# the lifespan's shutdown writes and exports what is left once, in both runs of a difference,
# and spans are still exported by the batch (512) as they are under load.
PERIODIC_SECONDS = 3600
VARIANTS = ("off", "on-0%", "on-100%")
# ``--parts``: on at 0% with one part switched off (observability settings), by part.
WITHOUT = "-without-"
PARTS: dict[str, dict[str, bool]] = {
    "access-line": {"access_log": False},
    "http-metrics": {"metrics": False},
    "tracing": {"tracing": False},
}


def count_instructions(variant: str, endpoint: str, requests: int) -> int:
    """Runs this script's child mode under callgrind; the instructions it collected."""
    with tempfile.TemporaryDirectory(prefix="glasshouse-callgrind-") as workdir:
        output = Path(workdir) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            *(f"--toggle-collect={function}" for function in COLLECTED_FUNCTIONS),
            f"--callgrind-out-file={output}",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            variant,
            endpoint,
            str(requests),
        ]
        # One hash seed for every run (unless one is given): with a random one per process,
        # dict and set layouts differ from run to run, and that alone moved a variant by up
        # to 2.5%, more than many changes worth measuring.
        env = {**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
        completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if completed.returncode != 0:
            raise SystemExit(f"{variant} {endpoint} failed:\n{completed.stderr[-3000:]}")
        for line in output.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit("callgrind wrote no totals")


def per_request(variant: str, endpoint: str, few: int = FEW, many: int = MANY) -> float:
    with ThreadPoolExecutor(max_workers=2) as pool:
        low = pool.submit(count_instructions, variant, endpoint, few)
        high = pool.submit(count_instructions, variant, endpoint, many)
        difference = high.result() - low.result()
    if difference <= 0:
        raise SystemExit(
            "no instructions counted: this Python's libpython has no symbols for "
            + ", ".join(COLLECTED_FUNCTIONS)
        )
    return difference / (many - few)


def report(counts: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"{'endpoint':24} " + " ".join(f"{v:>10}" for v in VARIANTS) + "   ratios to off"]
    for endpoint, by_variant in counts.items():
        row = f"{endpoint:24} " + " ".join(
            f"{by_variant[v] / 1000:9.0f}k" if v in by_variant else f"{'':>10}" for v in VARIANTS
        )
        off = by_variant.get("off")
        if off and "on-0%" in by_variant and "on-100%" in by_variant:
            fixed, full = by_variant["on-0%"], by_variant["on-100%"]
            ten = fixed + 0.1 * (full - fixed)
            row += f"   100%: {off / full:.2f}  10%: {off / ten:.2f}  0%: {off / fixed:.2f}"
        lines.append(row)
    lines.append("Instructions per request (callgrind); 10% = 0% + a tenth of (100% - 0%).")
    return lines


def part_variants() -> list[str]:
    return ["off", "on-0%", *(f"on-0%{WITHOUT}{part}" for part in PARTS)]


def report_parts(counts: dict[str, dict[str, float]]) -> list[str]:
    """What each part of the fixed cost (on at 0% minus off) takes, per endpoint."""
    lines = []
    for endpoint, by_variant in counts.items():
        off, fixed = by_variant["off"], by_variant["on-0%"]
        parts = {part: fixed - by_variant[f"on-0%{WITHOUT}{part}"] for part in PARTS}
        parts["request context (the rest)"] = fixed - off - sum(parts.values())
        lines.append(f"{endpoint}: off {off / 1000:.0f}k, on at 0% {fixed / 1000:.0f}k")
        lines.extend(
            f"  {part:28} {cost / 1000:6.1f}k  {cost / (fixed - off):4.0%} of the fixed cost"
            for part, cost in parts.items()
        )
    lines.append("Instructions per request (callgrind): each part = on at 0% minus on at 0%")
    lines.append("without it; the rest = what is left of (on at 0% - off).")
    return lines


def variant_settings(variant: str, database_url: str, sink: str) -> Settings:
    """bench/inprocess.py's settings for ``variant``, or for on at 0% without one part."""
    from bench import inprocess

    base, _, part = variant.partition(WITHOUT)
    settings = inprocess.settings_for(base, database_url, sink)
    observability = settings.observability.model_copy(
        update={"metrics_flush_seconds": PERIODIC_SECONDS, **(PARTS[part] if part else {})}
    )
    return settings.model_copy(update={"observability": observability})


def child(variant: str, endpoint: str, requests: int) -> None:
    """Inside valgrind: one variant's app, warmed up, then ``requests`` requests."""
    from bench import inprocess
    from service.main import create_app
    from service.observability.logging import configure_logging
    from service.server import tune_garbage_collector
    from service.settings import ServerSettings

    with (
        inprocess.sink_in_its_own_process() as endpoint_url,
        tempfile.TemporaryFile("w") as log,
        inprocess.migrated_postgres_database() as url,
    ):
        # The span exporter sends by batch size only, as it does under load (see PERIODIC).
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = str(PERIODIC_SECONDS * 1000)
        configure_logging(json=True, stream=log, access_flush_seconds=PERIODIC_SECONDS)
        settings = variant_settings(variant, url, endpoint_url)

        async def run() -> None:
            app = inprocess.App(create_app(settings))
            await app.start()
            try:
                await app.sign_up()
                request = app.request(endpoint)
                for _ in range(WARM_UP):
                    await app.call(*request)
                tune_garbage_collector(ServerSettings().gc_young_threshold)
                for _ in range(requests):
                    status, body = await app.call(*request)
                    assert status < 300, (status, body)
            finally:
                await app.stop()

        asyncio.run(run())


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", default="a,d")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--parts", action="store_true", help="split the fixed cost by part (instead of variants)"
    )
    parser.add_argument("--few", type=int, default=FEW, help=argparse.SUPPRESS)
    parser.add_argument("--many", type=int, default=MANY, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind (make tools does)")
    from bench.run import ENDPOINTS

    counts: dict[str, dict[str, float]] = {}
    variants = part_variants() if args.parts else args.variants.split(",")
    for endpoint in args.endpoints.split(","):
        label = f"{endpoint} {ENDPOINTS[endpoint]}"
        for variant in variants:
            counts.setdefault(label, {})[variant] = per_request(
                variant, endpoint, args.few, args.many
            )
            print(f"{label} {variant}: {counts[label][variant]:.0f}", file=sys.stderr)
    print("\n".join(report_parts(counts) if args.parts else report(counts)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
