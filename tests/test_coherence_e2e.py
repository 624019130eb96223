"""Two pods, one PostgreSQL, one Redis, each pod reaching Redis through a proxy this test owns:
a write acknowledged by pod A is what pod B answers next, and a login session ended through
pod A is refused by pod B at once. Five phases on the same pods, each with at least 500 writes
and 30 logouts: normal operation; the invalidation (pubsub) connections killed again and again;
pod B's Redis traffic delayed 200 ms each way; Redis restarted empty, twice; pod B's Redis path
stalled, where a stale answer may last 1 s at most. A phase not over within 240 s fails. About
a minute and a half.

Each pod is gunicorn with 2 workers on the service's defaults. GLASSHOUSE_TEST_COHERENCE_EXTRA_ENV
(a JSON object of settings) is added to both, to measure another configuration with the same
harness; GLASSHOUSE_TEST_COHERENCE_WRITES changes the writes per phase. `pytest -s` prints each
phase's summary. The harness: tests/coherence.py (records and loops) and
tests/coherence_phases.py (faults, pods, the run)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as BlockingRedis

from tests.coherence import MIN_REVOCATIONS, STALE_BOUND_SECONDS, WRITES, Phase, report
from tests.coherence_phases import DELAY_SECONDS, PHASES, run_phases, running_pods
from tests.faults import running_proxy, running_redis


def test_the_proxy_delays_both_ways_and_keeps_the_order(tmp_path: Path) -> None:
    """The harness's own check: a delayed round trip takes two delays, and pipelined
    commands are answered in order."""
    with running_redis(tmp_path) as server, running_proxy(server.port) as proxy:
        client = BlockingRedis(port=proxy.port)
        try:
            client.ping()
            proxy.set_delay(DELAY_SECONDS)
            started = time.monotonic()
            with client.pipeline(transaction=False) as pipe:
                for value in range(2000):
                    pipe.set("counter", value).get("counter")
                replies = pipe.execute()
            elapsed = time.monotonic() - started
            proxy.set_delay(0)
            started = time.monotonic()
            client.ping()
            undelayed = time.monotonic() - started
        finally:
            client.close()
    assert replies[1::2] == [str(value).encode() for value in range(2000)]
    assert 2 * DELAY_SECONDS <= elapsed < 2 * DELAY_SECONDS + 0.5
    assert undelayed < DELAY_SECONDS


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Phase]]:
    with running_pods(tmp_path_factory.mktemp("coherence")) as pods:
        yield asyncio.run(run_phases(pods))


@pytest.mark.parametrize("name", PHASES)
def test_every_phase_ran_its_writes_and_revocations(phases: dict[str, Phase], name: str) -> None:
    phase = phases[name]
    assert not phase.unfinished, report(phase)
    assert phase.writes >= WRITES, report(phase)
    assert phase.revocations >= MIN_REVOCATIONS, report(phase)


@pytest.mark.parametrize("name", PHASES)
def test_pod_b_reads_what_pod_a_acknowledged(phases: dict[str, Phase], name: str) -> None:
    phase = phases[name]
    if name == "b_stalled":
        assert all(s.ended and s.seconds <= STALE_BOUND_SECONDS for s in phase.stale), report(phase)
    else:
        assert phase.stale == [], report(phase)


@pytest.mark.parametrize("name", PHASES)
def test_pod_b_refuses_a_token_pod_a_revoked(phases: dict[str, Phase], name: str) -> None:
    phase = phases[name]
    if name == "b_stalled":
        assert all(s.ended and s.seconds <= STALE_BOUND_SECONDS for s in phase.accepted), report(
            phase
        )
    else:
        assert phase.accepted == [], report(phase)


@pytest.mark.parametrize("name", PHASES)
def test_no_request_fails_whatever_redis_does(phases: dict[str, Phase], name: str) -> None:
    # Without a usable Redis the service answers from the database: a fault costs latency.
    assert phases[name].failed == Counter(), report(phases[name])
