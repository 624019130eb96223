"""The benchmark command works from a clean checkout. Its numbers are not judged here: a
benchmark measures, a test checks; this only checks that it runs and reports every figure."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS_URL
from tests.processes import REPO, base_env, migrated_postgres_database, running_gunicorn


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
        *("--rounds", "1", "--seconds", "1", "--steady-seconds", "1", "--baseline", "none"),
        *("--json", str(result_file)),
    )
    assert "cached read on-10% / bare" in completed.stdout
    assert "on-10% / standard-10% (e)" in completed.stdout
    assert "new PostgreSQL connections per run" in completed.stdout
    report = json.loads(result_file.read_text())
    variants = {"off", "on-100%", "on-10%", "standard-10%"}
    for variant in variants:
        for endpoint in "abcde":
            sample = report["medians"][f"{variant}/{endpoint}"]
            assert sample["rps"] > 0
            assert sample["errors"] == 0, (variant, endpoint, sample)
    assert report["medians"]["bare/a"]["rps"] > 0
    for endpoint in "bc":  # the database floor answers as the service does
        sample = report["medians"][f"floor/{endpoint}"]
        assert sample["rps"] > 0
        assert sample["errors"] == 0, (endpoint, sample)
    assert report["spans_received_by_sink"] > 0  # the "on" variants really exported traces
    assert set(report["worker_rss_mb"]) == variants
    connections = report["new_postgres_connections_per_run"]
    assert set(connections) == variants
    for by_endpoint in connections.values():  # counted (run.py checks the counter moves)
        assert set(by_endpoint) == set("abcde")
        for counts in by_endpoint.values():
            assert set(counts) == {"warm_up", "median", "max"}
            assert all(count >= 0 for count in counts.values()), counts
    for key, variant in (("steady_cached_read", "on-10%"), ("steady_list_with_filters", "off")):
        assert report[key]["variant"] == variant
        assert report[key]["achieved_rps"] > 0
        assert report[key]["errors"] == 0
    assert report["baseline"] is None
    assert not any("baseline" in key for key in report["ratios"])


def test_the_baseline_is_the_earlier_commit_run_from_a_worktree_removed_after(
    tmp_path: Path,
) -> None:
    from bench import run

    with run.baseline_worktree(run.BASELINE_REV) as tree:
        assert run.commit_of(tree).startswith(run.BASELINE_REV)
        # The service that answers is the worktree's, not this checkout's.
        marker = "print('service imported from', __file__, flush=True)\n"
        with (tree / "service" / "__init__.py").open("a") as init:
            init.write(marker)
        with (
            migrated_postgres_database(repo=tree) as database_url,
            running_gunicorn(
                database_url,
                tmp_path,
                workers=1,
                repo=tree,
                REDIS_URL=REDIS_URL,
                GLASSHOUSE_OBSERVABILITY__ENABLED="false",
            ) as server,
        ):
            assert f"service imported from {tree / 'service' / '__init__.py'}" in server.logs()
            headers = server.new_account_headers()
            created = httpx.post(f"{server.url}/api/v1/items", json={"title": "x"}, headers=headers)
            assert created.status_code == 201, created.text
    assert not tree.exists()
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert str(tree) not in worktrees


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


def test_the_parts_breakdown_switches_off_one_part_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bench import instructions

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    url, sink = "postgresql+asyncpg://127.0.0.1/unused", "http://127.0.0.1:4318"
    base = instructions.variant_settings("on-0%", url, sink).observability
    assert (base.enabled, base.access_log, base.metrics, base.trace_sample_ratio) == (
        True,
        True,
        True,
        0.0,
    )
    for part, switched_off in instructions.PARTS.items():
        variant = instructions.variant_settings(f"on-0%-without-{part}", url, sink)
        changed = {
            name
            for name in type(base).model_fields
            if getattr(variant.observability, name) != getattr(base, name)
        }
        assert changed == set(switched_off), part
        for name, value in switched_off.items():
            assert getattr(variant.observability, name) == value
    assert not instructions.variant_settings("off", url, sink).observability.enabled


def test_the_parts_breakdown_leaves_the_rest_to_the_request_context() -> None:
    from bench import instructions

    counts = {
        "a cached item read": {
            "off": 300_000,
            "on-0%": 400_000,
            "on-0%-without-access-line": 360_000,
            "on-0%-without-http-metrics": 392_000,
            "on-0%-without-tracing": 398_000,
        }
    }
    lines = instructions.report_parts(counts)
    costs = {line.split()[0]: line.split()[1:3] for line in lines if line.startswith("  ")}
    assert costs["access-line"] == ["40.0k", "40%"]
    assert costs["http-metrics"] == ["8.0k", "8%"]
    assert costs["tracing"] == ["2.0k", "2%"]
    rest = next(line for line in lines if "request context (the rest)" in line)
    assert rest.split()[-6:-4] == ["50.0k", "50%"]


def test_realtime_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    result_file = tmp_path / "realtime.json"
    completed = run_bench(
        "bench/realtime.py",
        *("--connections", "20", "--sse", "5", "--seconds", "2", "--json", str(result_file)),
    )
    assert "KiB/conn" in completed.stdout
    report = json.loads(result_file.read_text())
    assert set(report["worker_rss_mib"]) == {"before", "websockets", "sse"}
    assert set(report["growth"]) == {"websockets", "sse"}
    assert report["streams_ended_early"] == 0
    for figures in (*report["delivery"].values(), report["post_answered"]):
        assert figures["received"] == figures["expected"] > 0, figures
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"], figures
