"""A short locust run in CI, through the documented command (loadtests/run.py): the whole service
under 10 simulated users for 20 s, the pass/fail limits enforced. And the limits themselves:
a service that does not answer must fail the run."""

import csv
import subprocess
import sys
from pathlib import Path

from loadtests.stack import metric_samples
from tests.processes import REPO, free_port

RUN = [sys.executable, str(REPO / "loadtests" / "run.py")]
# The journeys' endpoints (loadtests/journeys.py): each must have been exercised. (Not the logout
# in on_stop: it runs as locust stops its users, and locust writes the CSV every second, not at
# exit, so the file may miss it; the console summary and the limits count it.)
ENDPOINTS = {
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/token"),
    ("GET", "/api/v1/items"),
    ("POST", "/api/v1/items"),
    ("GET", "/api/v1/items/[id]"),
    ("GET", "/api/v1/items/[id] (if-none-match)"),
    ("GET", "/api/v1/items?[filters]"),
}


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUN, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def stats_rows(reports: Path) -> list[dict[str, str]]:
    with (reports / "glasshouse_stats.csv").open(newline="") as stats:
        return [row for row in csv.DictReader(stats) if row["Name"] != "Aggregated"]


def test_smoke_load_keeps_every_limit(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    completed = run(
        *("--users", "10", "--spawn-rate", "2", "--duration", "20s", "--shape", "steady"),
        *("--reports", str(reports)),
        timeout=300,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    assert "every limit held" in output

    rows = stats_rows(reports)
    assert {(row["Type"], row["Name"]) for row in rows} >= ENDPOINTS, rows
    wanted = [row for row in rows if not row["Name"].startswith("bad: ")]
    failing = {row["Name"]: row["Failure Count"] for row in wanted if row["Failure Count"] != "0"}
    assert failing == {}, (reports / "glasshouse_failures.csv").read_text()
    assert sum(int(row["Request Count"]) for row in wanted) > 100
    assert (reports / "glasshouse.html").stat().st_size > 0
    # The repeated reads are meant to hit the cache.
    metrics = (reports / "metrics.prom").read_text()
    cache = metric_samples(metrics, "glasshouse_cache_requests_total")
    assert cache['{result="hit"}'] > 0, cache


def test_a_service_that_does_not_answer_fails_the_run(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    nowhere = f"http://127.0.0.1:{free_port()}"
    completed = run(
        *("--host", nowhere, "--users", "2", "--spawn-rate", "2", "--duration", "4s"),
        *("--reports", str(reports)),
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output[-4000:]
    assert "limit broken: failure ratio 100.00%" in output
    assert int(stats_rows(reports)[0]["Failure Count"]) > 0
