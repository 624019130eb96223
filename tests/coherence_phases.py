"""The coherence test's phases (tests/test_coherence_e2e.py): the fault each one puts on the
pods, the pods themselves, and the run. A phase that is not over within PHASE_TIMEOUT_SECONDS
is recorded as unfinished, with what it was still doing, and fails the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from tests.coherence import (
    API,
    EXTRA_ENV,
    HEADER,
    PASSWORD,
    REVOKERS,
    SETTINGS,
    WRITERS,
    Account,
    Phase,
    Pods,
    log_in,
    revoke_and_check,
    write_and_read,
)
from tests.faults import ProxyMode, running_proxy, running_redis
from tests.processes import Gunicorn, migrated_postgres_database, running_gunicorn

DELAY_SECONDS = 0.2
RESTARTS = 2
# The circuit breaker leaves Redis alone 5 s after an outage (breaker_open_seconds): the
# phase goes on past that, until the pods use Redis again.
AFTER_RESTART_SECONDS = 6.0
PHASE_TIMEOUT_SECONDS = 240.0
STOP_SECONDS = 1.0  # the wait for a fault's task to end once asked to, and after each cancellation
STOP_ATTEMPTS = 3  # cancellations before a task that goes on is an error

# --- the faults ------------------------------------------------------------------------------

Fault = Callable[[Pods, Phase], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def normal_operation(pods: Pods, phase: Phase) -> AsyncIterator[None]:
    phase.may_end.set()
    yield


@contextlib.asynccontextmanager
async def background(
    task: asyncio.Task[None], ending: asyncio.Event | None = None
) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await stopped(task, ending)


async def stopped(task: asyncio.Task[None], ending: asyncio.Event | None) -> None:
    """Ends ``task``, asking first if it watches ``ending``; its error, if it had one, is
    raised: a fault that broke down is the harness's error, not the service's. Cancelling a
    task that sends Redis commands may not end it: Python 3.11's asyncio.wait_for, which
    redis-py's commands go through, drops a cancellation that comes as the command is sent
    (CPython gh-86296), and the task goes on."""
    try:
        if ending is not None:
            ending.set()
            await asyncio.wait({task}, timeout=STOP_SECONDS)
        for _ in range(STOP_ATTEMPTS):
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_SECONDS)
        if not task.done():
            raise AssertionError(f"{task.get_name()} went on after {STOP_ATTEMPTS} cancellations")
    except asyncio.CancelledError:
        task.cancel()  # the phase ran out of time: leave nothing running into the next one
        raise
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


@contextlib.asynccontextmanager
async def invalidation_connections_killed(pods: Pods, phase: Phase) -> AsyncIterator[None]:
    phase.may_end.set()
    killer = Redis.from_url(pods.redis.url)  # straight to Redis: the proxies do not matter
    ending = asyncio.Event()

    async def kill_again_and_again() -> None:
        while not ending.is_set():
            await asyncio.sleep(random.uniform(0.1, 0.2))  # noqa: S311
            killed = await killer.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            phase.facts["CLIENT KILL TYPE pubsub sent"] += 1
            phase.facts["pubsub connections killed"] += int(killed)

    try:
        task = asyncio.create_task(kill_again_and_again(), name="CLIENT KILL loop")
        async with background(task, ending):
            yield
    finally:
        await killer.aclose()


@contextlib.asynccontextmanager
async def pod_b_delayed(pods: Pods, phase: Phase) -> AsyncIterator[None]:
    phase.may_end.set()
    await asyncio.to_thread(pods.proxy_b.set_delay, DELAY_SECONDS)
    try:
        yield
    finally:
        await asyncio.to_thread(pods.proxy_b.set_delay, 0)


@contextlib.asynccontextmanager
async def redis_restarted(pods: Pods, phase: Phase) -> AsyncIterator[None]:
    async def restart_twice() -> None:
        for _ in range(RESTARTS):
            await asyncio.sleep(1.0)  # the loops run on a working Redis first
            phase.note("Redis stopped")
            await asyncio.to_thread(pods.redis.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pods.redis.start)  # empty: it saves nothing
            phase.note("Redis restarted")
            await asyncio.sleep(AFTER_RESTART_SECONDS)
        phase.may_end.set()

    try:
        async with background(asyncio.create_task(restart_twice(), name="Redis restarts")):
            yield
    finally:
        if pods.redis.process is None:
            pods.redis.start()


@contextlib.asynccontextmanager
async def pod_b_stalled(pods: Pods, phase: Phase) -> AsyncIterator[None]:
    phase.may_end.set()
    await asyncio.to_thread(pods.proxy_b.set_mode, ProxyMode.stall)
    try:
        yield
    finally:
        await asyncio.to_thread(pods.proxy_b.set_mode, ProxyMode.forward)


PHASES: dict[str, Fault] = {
    "normal": normal_operation,
    "pubsub_killed": invalidation_connections_killed,
    "b_delayed": pod_b_delayed,
    "redis_restart": redis_restarted,
    "b_stalled": pod_b_stalled,
}


# --- the run ---------------------------------------------------------------------------------


@contextlib.contextmanager
def running_pods(workdir: Path) -> Iterator[Pods]:
    """Two pods of gunicorn, 2 workers each, on one new PostgreSQL database and one
    redis-server, each pod reaching Redis through a proxy of its own."""
    prefix = f"coherence-{os.urandom(4).hex()}"
    with (
        migrated_postgres_database() as database_url,
        running_redis(workdir) as redis_server,
        running_proxy(redis_server.port) as proxy_a,
        running_proxy(redis_server.port) as proxy_b,
        running_gunicorn(
            database_url,
            workdir / "pod-a",
            REDIS_URL=f"redis://127.0.0.1:{proxy_a.port}/0",
            GLASSHOUSE_CACHE__KEY_PREFIX=prefix,
            **SETTINGS,
        ) as pod_a,
        running_gunicorn(
            database_url,
            workdir / "pod-b",
            REDIS_URL=f"redis://127.0.0.1:{proxy_b.port}/0",
            GLASSHOUSE_CACHE__KEY_PREFIX=prefix,
            **SETTINGS,
        ) as pod_b,
    ):
        yield Pods(pod_a, pod_b, redis_server, proxy_a, proxy_b)


async def wait_until_normal(pods: Pods, account: Account) -> None:
    """Every worker of both pods on Redis again: breaker closed, invalidation connection up."""
    for pod in (pods.a, pods.b):
        deadline = time.monotonic() + 30
        healthy_rounds = 0
        while healthy_rounds < 3:
            # New connections at once, spread over the workers; the item read lets a worker
            # whose breaker is open try Redis again.
            answers = await asyncio.gather(*(worker_health(pod, account) for _ in range(6)))
            ok = all(
                answer["status"] == "ok"
                and answer["cache_breaker"] == "closed"
                and answer.get("near_cache") != "down"
                for answer in answers
            )
            healthy_rounds = healthy_rounds + 1 if ok else 0
            assert time.monotonic() < deadline, f"{pod.url} not back to normal: {answers}"
            await asyncio.sleep(0.1 if ok else 0.3)


async def worker_health(pod: Gunicorn, account: Account) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=pod.url, timeout=5) as one_connection:
        assert (await one_connection.get(account.item, headers=account.headers)).status_code == 200
        health: dict[str, Any] = (await one_connection.get("/health")).json()
        return health


async def new_account(via_a: httpx.AsyncClient, index: int) -> Account:
    email = f"coherence-{index}-{os.urandom(4).hex()}@example.com"
    registered = await via_a.post(
        f"{API}/auth/register", json={"email": email, "password": PASSWORD}
    )
    assert registered.status_code == 201, registered.text
    phase = Phase("setup")
    headers = await log_in(phase, via_a, email)
    created = await via_a.post(f"{API}/items", json={"title": "created"}, headers=headers)
    assert created.status_code == 201, created.text
    return Account(email, headers, created.json()["id"])


async def run_phase(
    name: str,
    fault: Fault,
    pods: Pods,
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
    writers: list[Account],
    revokers: list[Account],
) -> Phase:
    via_a, via_b = clients
    logs_before = {pod.url: len(pod.logs()) for pod in (pods.a, pods.b)}
    phase = Phase(name)
    writers_done = asyncio.Event()

    async def writing() -> None:
        async with asyncio.TaskGroup() as loops:
            for index, writer in enumerate(writers):
                loops.create_task(write_and_read(phase, via_a, via_b, writer, index))
        writers_done.set()

    deadline = asyncio.timeout(PHASE_TIMEOUT_SECONDS)
    doing = "starting its fault"
    try:
        async with deadline, fault(pods, phase):
            doing = "in its loops"
            # A task group: if one loop fails, the others stop with it.
            async with asyncio.TaskGroup() as loops:
                loops.create_task(writing())
                for revoker in revokers:
                    loops.create_task(revoke_and_check(phase, via_a, via_b, revoker, writers_done))
            loops_done = time.monotonic() - phase.started
            doing = f"ending its fault (the loops were done at {loops_done:.1f} s)"
    except TimeoutError:
        if not deadline.expired():
            raise
    phase.seconds = time.monotonic() - phase.started
    # Checked whether or not a TimeoutError came out: code that swallows a cancellation on
    # the way out (the fault's ending, say) leaves nothing else to see.
    if deadline.expired():
        phase.unfinished = f"not over after {PHASE_TIMEOUT_SECONDS:.0f} s: still {doing}"
    for label, pod in (("A", pods.a), ("B", pods.b)):
        for line in pod.logs()[logs_before[pod.url] :].splitlines():
            if line.startswith("{") and (event := json.loads(line)).get("level") != "info":
                phase.log_events[f"{label} {event['level']} {event['event']}"] += 1
            elif line.startswith("Traceback"):
                phase.log_events[f"{label} traceback"] += 1
    return phase


async def run_phases(pods: Pods) -> dict[str, Phase]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with (
        httpx.AsyncClient(base_url=pods.a.url, timeout=10, limits=limits) as via_a,
        httpx.AsyncClient(base_url=pods.b.url, timeout=10, limits=limits) as via_b,
    ):
        accounts = [await new_account(via_a, index) for index in range(WRITERS + REVOKERS)]
        writers, revokers = accounts[:WRITERS], accounts[WRITERS:]
        print(f"\nextra settings: {EXTRA_ENV or 'none'}\n{HEADER}")
        phases = {}
        for name, fault in PHASES.items():
            await wait_until_normal(pods, writers[0])
            phases[name] = await run_phase(name, fault, pods, (via_a, via_b), writers, revokers)
            print(phases[name].summary(), flush=True)
        return phases
