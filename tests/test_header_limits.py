"""Request heads (request line and headers) are limited by the server, before the app runs.

End to end: gunicorn with 2 workers on PostgreSQL, spoken to over raw sockets (an HTTP client
would refuse to send such requests, or hide how the server ended the connection). In process:
the protocol alone under uvicorn, for where the limit falls and what is not counted."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from service.http_protocol import HeadLimitedHttpToolsProtocol
from service.settings import get_settings
from tests.processes import Gunicorn, free_port, migrated_postgres_database, running_gunicorn

LIMIT = get_settings().http.max_header_bytes
MEMORY_SLACK_KIB = 10 * 1024
ENDLESS_HEAD_BYTES = 16 * 1024 * 1024
SEND_CHUNK_BYTES = 64 * 1024


def head(*, target: bytes = b"/health/live", padding: int = 0) -> bytes:
    """A GET whose head is ``padding`` bytes longer than without the padding header."""
    lines = [b"GET " + target + b" HTTP/1.1", b"host: 127.0.0.1", b"connection: close"]
    if padding:
        lines.append(b"x-padding: " + b"a" * (padding - len(b"x-padding: \r\n")))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


@dataclass
class Exchange:
    sent: int
    response: bytes
    seconds: float


def exchange(port: int, request: bytes, *, chunk: int | None = None) -> Exchange:
    """Sends the request (in pieces of ``chunk`` bytes if given) until done or the server hangs
    up, then reads the answer until the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        sent = send(connection, request, chunk or len(request))
        return Exchange(sent, read_until_closed(connection), time.monotonic() - started)


def send(connection: socket.socket, data: bytes, chunk: int) -> int:
    sent = 0
    try:
        for start in range(0, len(data), chunk):
            connection.sendall(data[start : start + chunk])
            sent = min(start + chunk, len(data))
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    try:
        while data := connection.recv(65_536):
            received += data
    except (ConnectionResetError, TimeoutError):
        # A reset may follow the answer: the server closed with part of the request unread.
        pass
    return received


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def grown_kib(service: Gunicorn, before: dict[int, int]) -> dict[int, int]:
    assert service.worker_pids() == set(before), "a worker was replaced"
    return {pid: rss_kib(pid) - kib for pid, kib in before.items()}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    with (
        migrated_postgres_database() as database_url,
        running_gunicorn(
            database_url,
            tmp_path_factory.mktemp("gunicorn"),
            GLASSHOUSE_SERVER__DRAIN_SECONDS="0",  # nothing to drain at the end
        ) as server,
    ):
        yield server


def test_a_100_kb_header_is_refused_at_once_without_growing_a_worker(service: Gunicorn) -> None:
    before = {pid: rss_kib(pid) for pid in service.worker_pids()}
    result = exchange(service.port, head(padding=100 * 1024))
    assert status_of(result.response) == 431
    assert b"connection: close" in result.response.lower()
    assert result.seconds < 1
    assert all(kib < MEMORY_SLACK_KIB for kib in grown_kib(service, before).values())


def test_a_16_kb_header_is_served(service: Gunicorn) -> None:
    response = httpx.get(f"{service.url}/health/live", headers={"x-padding": "a" * 16 * 1024})
    assert response.status_code == 200
    assert status_of(exchange(service.port, head(padding=16 * 1024)).response) == 200


# Past 64 KiB httptools cannot parse a URL and uvicorn answered 400, but only once it had
# buffered all of it; below that, nothing refused a long request line.
@pytest.mark.parametrize("kib", [48, 100])
def test_a_long_request_line_is_refused(service: Gunicorn, kib: int) -> None:
    target = b"/health/live?q=" + b"a" * kib * 1024
    result = exchange(service.port, head(target=target))
    assert status_of(result.response) == 431
    assert result.seconds < 1


@pytest.mark.parametrize(
    "start",
    [b"GET /health/live HTTP/1.1\r\nx-padding: ", b"GET /health/live?q="],
    ids=["header", "request-line"],
)
def test_an_endless_head_is_cut_off_while_it_is_sent(service: Gunicorn, start: bytes) -> None:
    before = {pid: rss_kib(pid) for pid in service.worker_pids()}
    request = start + b"a" * ENDLESS_HEAD_BYTES
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as connection:
        sent = send(connection, request, SEND_CHUNK_BYTES)
        # Measured while the connection may still be open: a server that kept reading would
        # be holding the whole header now.
        grown = grown_kib(service, before)
        connection.settimeout(2)
        response = read_until_closed(connection)
    assert sent < len(request) // 4, f"the server read {sent} bytes of an unfinished head"
    assert all(kib < MEMORY_SLACK_KIB for kib in grown.values()), grown
    # The answer may be lost to the reset that unread bytes cause; when it arrives, it is 431.
    assert not response or status_of(response) == 431
    assert status_of(exchange(service.port, head(padding=16 * 1024)).response) == 200


async def echo_body_length(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    length, more_body = 0, True
    while more_body:
        message = await receive()
        assert message["type"] == "http.request"
        length += len(message["body"])
        more_body = message["more_body"]
    answer = str(length).encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer, "more_body": False})


@pytest.fixture(scope="module")
def protocol_port() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        echo_body_length,
        host="127.0.0.1",
        port=port,
        http=HeadLimitedHttpToolsProtocol,
        ws="none",
        lifespan="off",
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("chunk", [None, 1000], ids=["at-once", "in-pieces"])
def test_a_head_of_exactly_the_limit_is_served_one_byte_more_is_not(
    protocol_port: int, chunk: int | None
) -> None:
    within = head(target=b"/", padding=LIMIT - len(head(target=b"/")))
    assert len(within) == LIMIT
    assert status_of(exchange(protocol_port, within, chunk=chunk).response) == 200
    over = head(target=b"/", padding=LIMIT + 1 - len(head(target=b"/")))
    assert status_of(exchange(protocol_port, over, chunk=chunk).response) == 431


def test_each_request_of_a_connection_has_the_whole_limit(protocol_port: int) -> None:
    near_limit = head(target=b"/", padding=LIMIT - 100).replace(b"connection: close", b"x: y")
    with socket.create_connection(("127.0.0.1", protocol_port), timeout=5) as connection:
        for _ in range(3):
            connection.sendall(near_limit)
            response = b""
            while not response.endswith(b"\r\n\r\n0"):
                response += connection.recv(65_536)
            assert status_of(response) == 200


def test_body_bytes_before_a_pipelined_head_are_not_counted_as_head(protocol_port: int) -> None:
    body = b"b" * (8 * LIMIT)
    upload = b"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n\r\n" % len(body)
    pipelined = upload + body + head(target=b"/", padding=LIMIT // 2)
    for chunk in (None, LIMIT // 3):
        response = exchange(protocol_port, pipelined, chunk=chunk).response
        assert response.count(b"HTTP/1.1 200 ") == 2, response
        assert response.endswith(b"\r\n\r\n0")
