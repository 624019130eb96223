"""Live events across processes, as production runs them: two gunicorn masters ("pods", two
workers each) on one PostgreSQL database and one Redis, clients connected to one pod while
another takes the writes, a rollout's SIGTERM, and a client that stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REDIS_URL
from tests.factories import API, Account, make_account
from tests.processes import Gunicorn, migrated_postgres_database, running_gunicorn
from tests.streams import SseStream, sse, websocket

pytestmark = pytest.mark.usefixtures("steady_timing")

WRITES = 1000
DELIVERY_BOUND_SECONDS = 1.0


def pod_settings(prefix: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": REDIS_URL,
        "GLASSHOUSE_CACHE__KEY_PREFIX": prefix,
        "GLASSHOUSE_SERVER__DRAIN_SECONDS": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def pods(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gunicorn]]:
    prefix = f"gh-e2e-events-{uuid.uuid4().hex[:8]}"
    with (
        running_gunicorn(
            database_url, tmp_path_factory.mktemp("pod-a"), **pod_settings(prefix)
        ) as a,
        running_gunicorn(
            database_url, tmp_path_factory.mktemp("pod-b"), **pod_settings(prefix)
        ) as b,
    ):
        yield [a, b]


async def account_on(pod: Gunicorn) -> Account:
    async with httpx.AsyncClient(base_url=pod.url, timeout=10) as client:
        return await make_account(client)


async def test_events_written_through_one_pod_reach_clients_of_the_other_in_order(
    pods: list[Gunicorn],
) -> None:
    pod_a, pod_b = pods
    writer, bystander = await account_on(pod_a), await account_on(pod_a)
    arrived: dict[int, float] = {}
    async with (
        websocket(pod_b.url, writer.access_token) as socket,
        websocket(pod_b.url, bystander.access_token) as other,
        sse(pod_b.url, writer.headers) as stream,
        httpx.AsyncClient(base_url=pod_a.url, timeout=10) as client,
    ):
        assert (await socket.next())["type"] == "stream.ready"
        assert (await other.next())["type"] == "stream.ready"

        async def receive() -> list[dict[str, Any]]:
            events = []
            while len(events) < WRITES:
                event = await socket.next(within=10)
                arrived[event["id"]] = time.monotonic()
                events.append(event)
            return events

        receiving = asyncio.create_task(receive())
        acknowledged: dict[int, float] = {}
        item_ids = []
        for number in range(WRITES):
            if number % 2 == 0:
                response = await client.post(
                    f"{API}/items", json={"title": f"Write {number}"}, headers=writer.headers
                )
                item_ids.append(response.json()["id"])
            else:
                response = await client.patch(
                    f"{API}/items/{item_ids[-1]}", json={"priority": 1}, headers=writer.headers
                )
            assert response.is_success, response.text
            acknowledged[number + 1] = time.monotonic()
        events = await asyncio.wait_for(receiving, timeout=30)
        sse_ids = [int((await stream.next(within=10))["id"]) for _ in range(WRITES)]
        with contextlib.suppress(TimeoutError):
            unexpected = await other.next(within=1)
            raise AssertionError(f"another user's client got {unexpected}")

    assert [event["id"] for event in events] == list(range(1, WRITES + 1))
    assert sse_ids == list(range(1, WRITES + 1))
    kinds = [event["type"] for event in events]
    assert kinds == ["item.created", "item.updated"] * (WRITES // 2)
    late = {n: arrived[n] - acknowledged[n] for n in acknowledged}
    slowest = max(late.values())
    assert slowest < DELIVERY_BOUND_SECONDS, f"slowest delivery after the write: {slowest:.3f} s"


async def test_a_pod_stopping_sends_clients_to_the_other_and_they_miss_nothing(
    database_url: str, tmp_path: Path
) -> None:
    prefix = f"gh-e2e-rollout-{uuid.uuid4().hex[:8]}"
    with (
        running_gunicorn(database_url, tmp_path / "a", **pod_settings(prefix)) as pod_a,
        running_gunicorn(database_url, tmp_path / "b", **pod_settings(prefix)) as pod_b,
    ):
        owner = await account_on(pod_a)
        writing = True
        written = 0

        async def write_steadily(client: httpx.AsyncClient) -> None:
            nonlocal written
            while writing:
                response = await client.post(
                    f"{API}/items", json={"title": f"Rollout {written}"}, headers=owner.headers
                )
                assert response.status_code == 201, response.text
                written += 1
                await asyncio.sleep(0.02)

        async with (
            httpx.AsyncClient(base_url=pod_a.url, timeout=10) as client,
            websocket(pod_b.url, owner.access_token) as socket,
            sse(pod_b.url, owner.headers) as stream,
        ):
            assert (await socket.next())["type"] == "stream.ready"
            writer = asyncio.create_task(write_steadily(client))
            for _ in range(5):  # live, mid-flight, when the signal comes
                await socket.next(within=10)
            sigterm_sent = time.monotonic()
            pod_b.process.send_signal(signal.SIGTERM)
            assert await socket.close_code(within=15) == (1001, "server_shutdown")
            closing = await _sse_until_closing(stream)
            assert closing["data"]["reason"] == "server_shutdown"
            assert stream.retry_ms == 1000
            assert time.monotonic() - sigterm_sent < 10
            received = [m["id"] for m in socket.messages if str(m["type"]).startswith("item.")]
            # Reconnect, as a client does on 1001: to the pod that is left, from the last id.
            async with websocket(
                pod_a.url, owner.access_token, last_event_id=received[-1]
            ) as again:
                assert (await again.next())["type"] == "stream.ready"
                await asyncio.sleep(1)
                writing = False
                await writer
                while received[-1] < written:
                    received.append((await again.next(within=5))["id"])
        assert pod_b.process.wait(timeout=30) == 0
    assert received == list(range(1, written + 1))


async def _sse_until_closing(stream: SseStream) -> dict[str, Any]:
    while True:
        event = await stream.next(within=15)
        if event["event"] == "stream.closing":
            return event


def test_a_client_that_stops_reading_is_cut_loose_and_the_worker_stays_small(
    database_url: str, tmp_path: Path
) -> None:
    """A WebSocket that completes its handshake and then never reads: the worker's queue for
    it fills, the stream is closed (slow_consumer), and the worker's memory stays bounded."""
    settings = pod_settings(
        f"gh-e2e-slow-{uuid.uuid4().hex[:8]}",
        GLASSHOUSE_REALTIME__QUEUE_SIZE="200",
        # No ping in the test's time: it is the queue, not the heartbeat, that must catch it.
        GLASSHOUSE_REALTIME__HEARTBEAT_SECONDS="120",
        GLASSHOUSE_REALTIME__SEND_TIMEOUT_SECONDS="2",
    )
    with running_gunicorn(database_url, tmp_path, workers=1, **settings) as pod:
        owner = asyncio.run(account_on(pod))
        [worker] = pod.worker_pids()
        with _silent_websocket(pod, owner.access_token):
            before = _rss_mib(worker)
            description = "x" * 1900
            with httpx.Client(base_url=pod.url, timeout=10) as client:
                deadline = time.monotonic() + 60
                while (
                    "reason=slow_consumer" not in pod.logs() and '"slow_consumer"' not in pod.logs()
                ):
                    assert time.monotonic() < deadline, "the stalled stream was never closed"
                    for _ in range(50):
                        response = client.post(
                            f"{API}/items",
                            json={"title": "Bulk", "description": description},
                            headers=owner.headers,
                        )
                        assert response.status_code == 201
            grown = _rss_mib(worker) - before
        assert grown < 40, f"the worker grew {grown:.0f} MiB for one stalled client"
        metrics = httpx.get(pod.metrics_url, timeout=5).text
        assert (
            'glasshouse_stream_messages_dropped_total{reason="slow_consumer",transport="ws"}'
            in metrics
        )


@contextlib.contextmanager
def _silent_websocket(pod: Gunicorn, token: str) -> Iterator[socket.socket]:
    """A WebSocket handshake by hand, and then nothing read: a client that hangs."""
    with socket.create_connection(("127.0.0.1", pod.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            (
                f"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{pod.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: glasshouse.events.v1, bearer.{token}\r\n\r\n"
            ).encode()
        )
        assert b"101" in sock.recv(256).split(b"\r\n", 1)[0]
        yield sock


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_recycled_worker_ends_its_streams_as_a_shutdown_does(
    database_url: str, tmp_path: Path
) -> None:
    """max_requests recycles a worker without any signal to the app: its streams still end
    with 1001 and the SSE retry, not with a cut socket or uvicorn's 1012."""
    settings = pod_settings(
        f"gh-e2e-recycle-{uuid.uuid4().hex[:8]}",
        GLASSHOUSE_SERVER__MAX_REQUESTS="30",
        GLASSHOUSE_SERVER__MAX_REQUESTS_JITTER="0",
    )
    with running_gunicorn(database_url, tmp_path, workers=1, **settings) as pod:
        owner = await account_on(pod)
        async with (
            websocket(pod.url, owner.access_token) as socket,
            sse(pod.url, owner.headers) as stream,
            httpx.AsyncClient(base_url=pod.url, timeout=10) as client,
        ):
            assert (await socket.next())["type"] == "stream.ready"
            for _ in range(30):
                await client.get("/health/live")
            assert await socket.close_code(within=15) == (1001, "server_shutdown")
            closing = await _sse_until_closing(stream)
            assert closing["data"]["reason"] == "server_shutdown"
