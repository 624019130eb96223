"""The benchmark command works from a clean checkout. Its numbers are not judged here: a
benchmark measures, a test checks; this only checks that it runs and reports every figure."""

import json
import subprocess
import sys
from pathlib import Path

from tests.processes import REPO, base_env


def run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    result_file = tmp_path / "bench.json"
    completed = run_bench(
        "bench/run.py",
        *("--rounds", "1", "--seconds", "1", "--steady-seconds", "1"),
        *("--json", str(result_file)),
    )
    assert "cached read on-10% / bare" in completed.stdout
    report = json.loads(result_file.read_text())
    for variant in ("off", "on-100%", "on-10%"):
        for endpoint in "abcd":
            sample = report["medians"][f"{variant}/{endpoint}"]
            assert sample["rps"] > 0
            assert sample["errors"] == 0, (variant, endpoint, sample)
    assert report["medians"]["bare/a"]["rps"] > 0
    assert report["spans_received_by_sink"] > 0  # the "on" variants really exported traces
    assert set(report["worker_rss_mb"]) == {"off", "on-100%", "on-10%"}


def test_in_process_benchmark_runs_and_reports_every_ratio() -> None:
    completed = run_bench("bench/inprocess.py", "--cycles", "2", "--requests", "3")
    lines = completed.stderr.splitlines()
    rows = [line.split() for line in lines if line[:2] in {"a ", "b ", "c ", "d "}]
    assert [row[0] for row in rows] == ["a", "b", "c", "d"]
    for row in rows:
        ratios = [float(value) for value in row[-2:]]
        assert all(ratio > 0 for ratio in ratios), row


def test_instruction_count_benchmark_runs_and_reports_per_request_counts() -> None:
    completed = run_bench(
        "bench/instructions.py",
        *("--endpoints", "d", "--variants", "off", "--few", "5", "--many", "15"),
    )
    row = next(line for line in completed.stdout.splitlines() if line.startswith("d "))
    # Tens of thousands of instructions at least: a count of nothing would be 0 or negative.
    assert int(row.split()[-1].removesuffix("k")) > 50, row
