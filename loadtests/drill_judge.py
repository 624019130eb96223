"""What each fault drill expects, in code, and the table a drill run prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from loadtests.drill_load import Record

if TYPE_CHECKING:
    from loadtests.drills import Drill

# A database outage answers 503 within this (connect timeout 1 s in the drill's settings).
FAST_503_SECONDS = 2.0
# After the database is back, requests succeed again within this.
DATABASE_RECOVERY_SECONDS = 5.0
# The kernel closes a SIGKILLed worker's sockets within milliseconds of the signal: a request
# that starts this long after it can no longer reach the dead worker.
KILL_SLACK_SECONDS = 0.1
BROKEN_CONNECTIONS = "connections broken without an answer"


def recovery_seconds(records: Iterable[Record], fault_end: float) -> float | None:
    """From the end of the fault to the end of the first write (writes always need the
    database) that started after it and succeeded."""
    ends = [r.ended for r in records if r.is_write and r.ok and r.started >= fault_end]
    return min(ends) - fault_end if ends else None


def lost_in(lost: Iterable[Record], started: float, ended: float) -> list[Record]:
    return [record for record in lost if started <= record.started < ended]


def summary(records: Iterable[Record]) -> str:
    counts = Counter(f"{r.status} {r.error}".strip() for r in records)
    return ", ".join(f"{count}x {what}" for what, count in counts.most_common())


def percentile(records: Iterable[Record], fraction: float) -> float:
    latencies = sorted(record.seconds for record in records)
    if not latencies:
        return 0.0
    return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))]


def _common(drill: Drill) -> list[str]:
    problems = []
    during = [r for r in drill.records if drill.fault_start <= r.started <= drill.fault_end]
    if not drill.records or (drill.fault_end > drill.fault_start and not during):
        problems.append("no load ran during the fault: the drill proves nothing")
    if drill.lost:
        problems.append(
            f"{len(drill.lost)} acknowledged writes are not in the database: "
            + ", ".join(f"{r.operation} item {r.item_id}" for r in drill.lost[:5])
        )
    return problems


def judge_redis_stop(drill: Drill) -> list[str]:
    problems = _common(drill)
    if drill.failed:
        problems.append(f"requests failed while Redis was away: {summary(drill.failed)}")
    if drill.facts.get("readiness during") != "200 degraded":
        problems.append(f"readiness during the outage: {drill.facts.get('readiness during')}")
    return problems


def judge_postgres_cut(drill: Drill) -> list[str]:
    problems = _common(drill)
    answered = [r for r in drill.failed if r.status]
    not_503 = [r for r in answered if (r.status, r.error) != (503, "database_unavailable")]
    if not_503:
        problems.append(f"failures other than 503 database_unavailable: {summary(not_503)}")
    broken = [r for r in drill.failed if not r.status]
    if broken:
        problems.append(f"{BROKEN_CONNECTIONS} during the cut: {summary(broken)}")
    slow = [r for r in drill.failed if r.seconds >= FAST_503_SECONDS]
    if slow:
        worst = max(r.seconds for r in slow)
        problems.append(
            f"{len(slow)} errors took {FAST_503_SECONDS} s or more (worst {worst:.2f} s)"
        )
    late = [r for r in drill.failed if r.started > drill.fault_end + DATABASE_RECOVERY_SECONDS]
    early = [r for r in drill.failed if r.ended < drill.fault_start]
    if late or early:
        problems.append(
            f"failures outside the cut (+{DATABASE_RECOVERY_SECONDS} s): {summary(late + early)}"
        )
    if not any(r.status == 503 for r in drill.failed):
        problems.append("no 503 during the cut: the cut did not reach the service")
    recovery = drill.recovery
    if recovery is None or recovery > DATABASE_RECOVERY_SECONDS:
        problems.append(
            f"no successful write within {DATABASE_RECOVERY_SECONDS} s of the cut ending"
        )
    if drill.facts.get("readiness during") != "200 degraded":
        problems.append(f"readiness during the cut: {drill.facts.get('readiness during')}")
    return problems


def judge_worker_kill(drill: Drill) -> list[str]:
    problems = _common(drill)
    killed = drill.fault_start
    in_flight = [
        r
        for r in drill.failed
        if r.status == 0 and r.started <= killed + KILL_SLACK_SECONDS and r.ended >= killed
    ]
    others = [r for r in drill.failed if r not in in_flight]
    if others:
        problems.append(f"failures of requests not in flight at the kill: {summary(others)}")
    if len(in_flight) > drill.concurrency:
        problems.append(f"{len(in_flight)} in-flight failures, more than {drill.concurrency} loops")
    if "replacement ready after s" not in drill.facts:
        problems.append("gunicorn did not replace the killed worker within 30 s")
    return problems


def judge_master_sigterm(drill: Drill) -> list[str]:
    problems = _common(drill)
    before = [r for r in drill.records if r.started < drill.fault_start]
    failed_before = [r for r in before if not r.ok]
    if failed_before:
        problems.append(f"requests started before SIGTERM failed: {summary(failed_before)}")
    if not before:
        problems.append("no request started before SIGTERM: the drill proves nothing")
    # The drain (docs/operations.md): for DRAIN_SECONDS after SIGTERM the workers keep serving
    # (readiness answers 503 so load balancers move on). Half a second of slack for the signal's
    # delivery.
    drain = float(drill.facts.get("drain s", 0)) - 0.5
    draining = [
        r for r in drill.records if drill.fault_start <= r.started < drill.fault_start + drain
    ]
    refused_early = [r for r in draining if not r.ok]
    if refused_early:
        problems.append(f"requests during the drain were not served: {summary(refused_early)}")
    if not draining:
        problems.append("no request was made during the drain")
    if drill.facts.get("exit code") != 0:
        problems.append(f"gunicorn's exit code after SIGTERM: {drill.facts.get('exit code')}")
    return problems


JUDGES: dict[str, Callable[[Drill], list[str]]] = {
    "redis_stop": judge_redis_stop,
    "postgres_cut": judge_postgres_cut,
    "worker_kill": judge_worker_kill,
    "master_sigterm": judge_master_sigterm,
}


def table(drills: Iterable[Drill]) -> str:
    header = (
        "drill",
        "requests",
        "failed",
        "p99 s",
        "max latency s",
        "recovered after s",
        "writes acked",
        "writes lost",
        "result",
    )
    rows = [header]
    details = []
    for drill in drills:
        recovery = drill.recovery
        rows.append(
            (
                drill.name,
                str(len(drill.records)),
                str(len(drill.failed)),
                f"{percentile(drill.records, 0.99):.3f}",
                f"{drill.max_latency:.3f}",
                "-" if recovery is None or drill.name == "master_sigterm" else f"{recovery:.3f}",
                str(drill.writes_acknowledged),
                str(len(drill.lost)),
                "FAIL" if drill.problems else "ok",
            )
        )
        if drill.name == "master_sigterm":
            after = [r for r in drill.records if r.started >= drill.fault_start]
            drill.facts["served after SIGTERM"] = sum(1 for r in after if r.ok)
        facts = ", ".join(f"{key}: {value}" for key, value in drill.facts.items())
        if drill.records:
            slowest = max(drill.records, key=lambda r: r.seconds)
            facts += (
                f"{', ' if facts else ''}slowest: {slowest.operation} "
                f"{slowest.started - drill.fault_start:+.2f} s from the fault"
            )
        failed = summary(drill.failed)
        details.append(f"{drill.name}: {facts or 'no facts'}; failures: {failed or 'none'}")
        details.extend(f"  PROBLEM: {problem}" for problem in drill.problems)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join([*lines, "", *details])
