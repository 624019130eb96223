"""Processes a fault test owns and may break: its own redis-server, and a TCP proxy that can
pass traffic, refuse it, swallow it (a hung peer) or delay it (a slow network). Loopback only;
nothing shared is touched."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import pytest

from tests.processes import free_port


def _wait_for_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class RedisServer:
    """A throwaway redis-server on a free loopback port, stopped and started at will."""

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the project's machines have it)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.extra_args = extra_args  # more redis-server options ("--rename-command", ...)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def running_redis(workdir: Path, *extra_args: str) -> Iterator[RedisServer]:
    server = RedisServer(workdir, *extra_args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ProxyMode(StrEnum):
    forward = "forward"
    refuse = "refuse"  # close every connection and refuse new ones: the peer is gone
    stall = "stall"  # accept and read, never answer: the peer hangs


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, in a thread with its own event loop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = ProxyMode.forward
        self.delay_seconds = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._run(self._listen())

    def set_mode(self, mode: ProxyMode) -> None:
        self._run(self._apply(mode))

    def set_delay(self, seconds: float) -> None:
        """Forward every chunk, both ways, this long after it arrived (0: at once). Chunks
        already waiting keep the delay they arrived under, so the order is never broken."""
        self._run(self._apply_delay(seconds))

    def close(self) -> None:
        self._run(self._apply(ProxyMode.refuse))
        self._run(self._cancel_connections())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _cancel_connections(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _apply_delay(self, seconds: float) -> None:
        self.delay_seconds = seconds

    async def _apply(self, mode: ProxyMode) -> None:
        self.mode = mode
        if mode is ProxyMode.stall:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is ProxyMode.refuse:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
        elif self._server is None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )
        for end in (writer, upstream_writer):
            end.transport.abort()
            self._writers.discard(end)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Reading goes on while chunks wait for their time, so a delay adds latency without
        # limiting throughput; b"" queued last stands for the hang-up.
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        receiving = asyncio.create_task(self._receive(reader, chunks))
        sending = asyncio.create_task(self._send(chunks, writer))
        try:
            await asyncio.wait({receiving, sending}, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in (receiving, sending):
                task.cancel()
            await asyncio.gather(receiving, sending, return_exceptions=True)
            # One side hung up: hang up on the other, as a real connection would (asyncpg's
            # close waits for the server to hang up, else for its timeout).
            writer.close()

    async def _receive(
        self, reader: asyncio.StreamReader, chunks: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        while data := await reader.read(65536):
            chunks.put_nowait((time.monotonic() + self.delay_seconds, data))
        chunks.put_nowait((time.monotonic() + self.delay_seconds, b""))

    async def _send(
        self, chunks: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await chunks.get()
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()  # while stalled, the other side waits forever
            if not data:
                return
            writer.write(data)
            await writer.drain()


@contextlib.contextmanager
def running_proxy(target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
