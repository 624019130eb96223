"""Clients for live event streams, as an application would hold them: a WebSocket (the
`websockets` library) and an SSE reader (httpx, parsed line by line)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.server import websocket_options
from service.settings import Settings

WS_PATH = "/api/v1/ws"
SSE_PATH = "/api/v1/events"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, settings: Settings) -> AsyncIterator[str]:
    """``app`` (already started) on a real uvicorn server on this loop, with the service's
    WebSocket options: WebSockets and streamed responses need one. Yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        **websocket_options(settings),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


@dataclass
class SseStream:
    """The events of one SSE response, as EventSource would dispatch them."""

    response: httpx.Response
    _lines: AsyncIterator[str] | None = None
    retry_ms: int | None = None
    comments: int = 0

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        """The next event: {"event", "id", "data" (parsed JSON)}; raises at the stream's end."""
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        event: dict[str, Any] = {"event": "message", "id": None, "data": ""}
        async with asyncio.timeout(within):
            async for line in self._lines:
                if not line:
                    if event["data"]:
                        event["data"] = json.loads(event["data"])
                        return event
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    event["data"] += value
                elif name == "retry":
                    self.retry_ms = int(value)
                elif name in {"event", "id"}:
                    event[name] = value
        raise EOFError("the stream ended")


@contextlib.asynccontextmanager
async def sse(
    base_url: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[SseStream]:
    """An open SSE stream, its first event (stream.ready) read."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
        client.stream("GET", SSE_PATH, headers=headers, params=params) as response,
    ):
        stream = SseStream(response)
        if response.status_code == 200:  # its first event says it is live
            assert (await stream.next())["event"] == "stream.ready"
        yield stream


def ws_url(base_url: str, **params: Any) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return base_url.replace("http", "ws", 1) + WS_PATH + (f"?{query}" if query else "")


@dataclass
class Socket:
    connection: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            message: dict[str, Any] = json.loads(await self.connection.recv())
        self.messages.append(message)
        return message

    async def close_code(self, within: float = 10.0) -> tuple[int | None, str | None]:
        """Reads (and drops) messages until the server closes: its code and reason."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(within):
                while True:
                    await self.connection.recv()
        return self.connection.close_code, self.connection.close_reason


@contextlib.asynccontextmanager
async def websocket(
    base_url: str, token: str | None = None, **params: Any
) -> AsyncIterator[Socket]:
    """A WebSocket that offers the events protocol and, given a token, the bearer protocol."""
    protocols = ["glasshouse.events.v1", *([f"bearer.{token}"] if token else [])]
    async with connect(
        ws_url(base_url, **params),
        subprotocols=protocols,  # type: ignore[arg-type]
        open_timeout=10,
    ) as connection:
        yield Socket(connection)
