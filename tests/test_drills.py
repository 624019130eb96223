"""Fault drills under load (loadtests/drills.py): gunicorn with 3 workers on PostgreSQL behind a
proxy and a redis-server of its own, a load loop of reads and writes, and four faults in turn,
at their real durations. About a minute; every process is stopped and the database dropped."""

from pathlib import Path

import pytest

from loadtests.drill_judge import (
    BROKEN_CONNECTIONS,
    DATABASE_RECOVERY_SECONDS,
    FAST_503_SECONDS,
    table,
)
from loadtests.drills import Drill, run_drills

CONCURRENCY = 6


@pytest.fixture(scope="module")
def drills(tmp_path_factory: pytest.TempPathFactory, steady_timing: None) -> dict[str, Drill]:
    workdir: Path = tmp_path_factory.mktemp("drills")
    return {drill.name: drill for drill in run_drills(workdir, concurrency=CONCURRENCY)}


def report(drills: dict[str, Drill]) -> str:
    return "\n" + table(drills.values())


def test_every_drill_ran_under_load(drills: dict[str, Drill]) -> None:
    assert list(drills) == ["redis_stop", "postgres_cut", "worker_kill", "master_sigterm"]
    for drill in drills.values():
        assert len(drill.records) > 100, f"{drill.name} ran almost no load" + report(drills)


def test_redis_outage_costs_no_request(drills: dict[str, Drill]) -> None:
    drill = drills["redis_stop"]
    during = [r for r in drill.records if drill.fault_start <= r.started <= drill.fault_end]
    assert len(during) > 100, "the load must run through the outage" + report(drills)
    assert drill.failed == [], report(drills)
    assert drill.facts["readiness during"] == "200 degraded"
    assert drill.problems == [], report(drills)


def test_database_cut_gives_only_fast_503s_and_recovers(drills: dict[str, Drill]) -> None:
    drill = drills["postgres_cut"]
    answered = [r for r in drill.failed if r.status]
    assert answered, "the cut must reach the service" + report(drills)
    assert {(r.status, r.error) for r in answered} == {(503, "database_unavailable")}
    assert max(r.seconds for r in drill.failed) < FAST_503_SECONDS, report(drills)
    assert drill.recovery is not None
    assert drill.recovery < DATABASE_RECOVERY_SECONDS, report(drills)
    others = [p for p in drill.problems if not p.startswith(BROKEN_CONNECTIONS)]
    assert others == [], report(drills)


def test_database_cut_breaks_no_connection(drills: dict[str, Drill]) -> None:
    # A session closed after the response started, on a connection that had just died, once
    # cut the client's connection (a 200 arriving as a connection error); now it only logs.
    drill = drills["postgres_cut"]
    assert [r for r in drill.failed if not r.status] == [], report(drills)


def test_killed_worker_fails_only_its_requests_in_flight(drills: dict[str, Drill]) -> None:
    drill = drills["worker_kill"]
    killed_at = drill.fault_start
    for record in drill.failed:
        assert record.status == 0, report(drills)  # a broken connection, never an HTTP error
        assert record.started <= killed_at + 0.1 <= record.ended + 0.1, report(drills)
    assert len(drill.failed) <= CONCURRENCY
    assert "replacement ready after s" in drill.facts, report(drills)
    assert drill.problems == [], report(drills)


def test_sigterm_fails_no_request_that_started_before_it(drills: dict[str, Drill]) -> None:
    drill = drills["master_sigterm"]
    before = [r for r in drill.records if r.started < drill.fault_start]
    assert before
    assert [r for r in before if not r.ok] == [], report(drills)
    assert drill.facts["exit code"] == 0
    assert drill.problems == [], report(drills)


def test_every_acknowledged_write_is_in_the_database(drills: dict[str, Drill]) -> None:
    assert sum(drill.writes_acknowledged for drill in drills.values()) > 100
    assert [r for drill in drills.values() for r in drill.lost] == [], report(drills)
