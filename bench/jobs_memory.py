"""Memory of an export and an import of many items, through real processes.

gunicorn (one worker) serves the API and ``python -m service.jobs`` runs the jobs, on a
PostgreSQL database of their own and the local Redis. Items are seeded with SQL, exported as CSV
through the API, downloaded, and the file imported back for another user. The resident memory
(RSS) of the API worker and of the job worker is sampled every 50 ms; the figure is the growth
from before the job to the peak during it and its download or upload.

    python bench/jobs_memory.py [--items 100000] [--format csv|json]

Prints a JSON report; bench/HISTORY.md and docs/jobs.md quote it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import REDIS_URL  # noqa: E402 (after the path is set)
from tests.processes import (  # noqa: E402
    migrated_postgres_database,
    running_gunicorn,
    running_job_worker,
)

API = "/api/v1"
SAMPLE_SECONDS = 0.05
MEDIA_TYPES = {"csv": "text/csv", "json": "application/json"}
LIMITS_MB = {"api": 50, "worker": 100}  # the bars for 100,000 items


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def worker_child(parent: int) -> int:
    """taskiq's worker runs jobs in the one child of the process the command starts."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("the job worker has no child process")


@contextmanager
def peak_rss(pids: dict[str, int]) -> Iterator[dict[str, dict[str, float]]]:
    """Samples each process's RSS until the block ends: {name: {before, peak, growth}}."""
    report = {
        name: {"before_mb": rss_mb(pid), "peak_mb": rss_mb(pid)} for name, pid in pids.items()
    }
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            for name, pid in pids.items():
                report[name]["peak_mb"] = max(report[name]["peak_mb"], rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield report
    finally:
        stop.set()
        sampler.join()
        for figures in report.values():
            figures["growth_mb"] = round(figures["peak_mb"] - figures["before_mb"], 1)
            figures["before_mb"] = round(figures["before_mb"], 1)
            figures["peak_mb"] = round(figures["peak_mb"], 1)


async def _seed(database_url: str, owner: int, count: int) -> None:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await connection.execute(
            "INSERT INTO items (owner_id, title, description, status, priority, created_at,"
            " updated_at) SELECT $1, 'Item number ' || n, 'A description of item ' || n,"
            " 'todo', 1 + n % 5, now() - n * interval '1 second', now()"
            " FROM generate_series(1, $2) AS n",
            owner,
            count,
        )
    finally:
        await connection.close()


def new_user(base: str) -> tuple[dict[str, str], int]:
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = "bench-password-1"  # noqa: S105 (a throwaway account)
    assert httpx.post(f"{base}{API}/auth/register", json={"email": email, "password": password})
    token = httpx.post(
        f"{base}{API}/auth/token", data={"username": email, "password": password}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    return headers, httpx.get(f"{base}{API}/users/me", headers=headers).json()["id"]


def wait_for(base: str, headers: dict[str, str], job_id: int) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = httpx.get(f"{base}{API}/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)


def measured(
    pids: dict[str, int], work: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    started = time.monotonic()
    with peak_rss(pids) as report:
        result = work()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--format", choices=["csv", "json"], default="csv")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as scratch,
        migrated_postgres_database() as database_url,
    ):
        shared = {
            "REDIS_URL": REDIS_URL,
            "GLASSHOUSE_JOBS__QUEUE_NAME": f"bench-jobs-{secrets.token_hex(4)}",
            "GLASSHOUSE_JOBS__FILES_DIR": f"{scratch}/files",
            "GLASSHOUSE_JOBS__MAX_UPLOAD_BYTES": str(200 * 1024 * 1024),
            "GLASSHOUSE_CACHE__KEY_PREFIX": f"bench-jobs-{secrets.token_hex(4)}",
        }
        with (
            running_gunicorn(database_url, Path(scratch, "api"), workers=1, **shared) as api,
            running_job_worker(
                database_url, REDIS_URL, Path(scratch, "worker"), **shared
            ) as worker,
        ):
            pids = {
                "api": next(iter(api.worker_pids())),
                "worker": worker_child(worker.process.pid),
            }
            headers, owner = new_user(api.url)
            asyncio.run(_seed(database_url, owner, args.items))
            export_file = Path(scratch, f"export.{args.format}")

            def export() -> dict[str, Any]:
                started = httpx.post(
                    f"{api.url}{API}/items/exports", json={"format": args.format}, headers=headers
                ).json()
                job = wait_for(api.url, headers, started["id"])
                with (
                    httpx.stream("GET", job["download_url"], headers=headers) as response,
                    export_file.open("wb") as out,
                ):
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                return {"status": job["status"], "rows": job["result"]["rows"]}

            exported, export_memory = measured(pids, export)
            importer, _ = new_user(api.url)

            def import_back() -> dict[str, Any]:
                with export_file.open("rb") as content:
                    started = httpx.post(
                        f"{api.url}{API}/items/imports",
                        files={"file": (export_file.name, content, MEDIA_TYPES[args.format])},
                        headers=importer,
                        timeout=300,
                    ).json()
                job = wait_for(api.url, importer, started["id"])
                return {"status": job["status"], "stored": job["result"]["stored"]}

            imported, import_memory = measured(pids, import_back)
            file_mb = round(export_file.stat().st_size / 2**20, 1)
    report = {
        "items": args.items,
        "format": args.format,
        "file_mb": file_mb,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "export": {**exported, "rss": export_memory},
        "import": {**imported, "rss": import_memory},
        "limits_mb": LIMITS_MB,
    }
    print(json.dumps(report, indent=2))
    over = [
        f"{phase} {name}: {phase_report['rss'][name]['growth_mb']} MB"
        for phase, phase_report in (("export", report["export"]), ("import", report["import"]))
        for name, limit in LIMITS_MB.items()
        if phase_report["rss"][name]["growth_mb"] > limit
    ]
    if over:
        sys.exit("over the bar: " + ", ".join(over))


if __name__ == "__main__":
    main()
