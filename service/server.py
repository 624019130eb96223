"""The gunicorn worker: uvicorn, plus a drain on SIGTERM.

Kubernetes sends SIGTERM and removes the pod from the Service endpoints at the same time, and
load balancers take a few seconds to notice. Stopping at once would refuse the requests still
on their way. So on the first SIGTERM the worker keeps serving for ``drain_seconds`` with
readiness answering 503, then stops accepting and lets in-flight requests finish (gunicorn's
graceful timeout bounds the whole). A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

import structlog
from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from service.http_protocol import HeadLimitedHttpToolsProtocol
from service.settings import Settings, get_settings

log = structlog.get_logger(__name__)


def tune_garbage_collector(young_threshold: int) -> None:
    """Once the worker is ready (``young_threshold``: GLASSHOUSE_SERVER__GC_YOUNG_THRESHOLD).

    Everything built so far (modules, the app, its pools) lives as long as the worker. Frozen,
    the collector stops walking it on every full collection: those walks were the stalls at
    the p99 of a cached read (bench/HISTORY.md).

    A young collection every 700 allocations ran in the middle of most requests and promoted
    whatever they held at that moment (spans, log fields, ORM rows) to the older generations,
    which then walked them again. At 20,000 most of a request's objects are freed by reference
    counting before any collection sees them (measured in bench/HISTORY.md)."""
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, oldest)


def websocket_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's WebSocket options from settings: pings as heartbeats (a peer that misses one
    is dropped), and the largest message a client may send (then 1009)."""
    realtime = settings.realtime
    return {
        "ws": "websockets-sansio",
        "ws_max_size": realtime.max_message_bytes,
        "ws_ping_interval": realtime.heartbeat_seconds,
        "ws_ping_timeout": realtime.heartbeat_seconds,
    }


class StreamEndingServer(Server):
    """uvicorn's server, which lets the app end its event streams before its own shutdown
    (SIGTERM after the drain, SIGINT, a worker recycled by max_requests): uvicorn would close
    WebSockets with 1012 and wait on every SSE response until the graceful timeout."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        lifecycle = getattr(getattr(self.config.loaded_app, "state", None), "lifecycle", None)
        if lifecycle is not None:
            await lifecycle.end_streams()
        await super().shutdown(sockets=sockets)


class DrainingServer(StreamEndingServer):
    """uvicorn's server, with the drain on the first SIGTERM and the collector tuned once ready.

    ``on_drain`` is where the drain starts: called once, on the event loop, when the first
    SIGTERM arrives; the server then keeps serving for ``drain_seconds`` before it stops."""

    def __init__(
        self,
        config: Config,
        *,
        drain_seconds: float,
        gc_young_threshold: int,
        on_drain: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._gc_young_threshold = gc_young_threshold
        self._on_drain = on_drain
        self._serving_loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._serving_loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        tune_garbage_collector(self._gc_young_threshold)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._serving_loop
        if sig != signal.SIGTERM or self._draining or not self._drain_seconds or loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        # A signal handler may only hand work to the loop, never touch it (or the log stream)
        # itself. A context of its own: the handler interrupts whichever request is current,
        # and the drain's log lines must not carry that request's ID.
        loop.call_soon_threadsafe(self._begin_drain, sig, frame, context=contextvars.Context())

    def _begin_drain(self, sig: int, frame: FrameType | None) -> None:
        self._on_drain()
        log.info("sigterm_received", drain_seconds=self._drain_seconds)
        asyncio.get_running_loop().call_later(self._drain_seconds, super().handle_exit, sig, frame)


class DrainingUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        # httptools with a limit on request heads (service/http_protocol.py).
        "http": HeadLimitedHttpToolsProtocol,
        "lifespan": "on",
        # The app reads X-Forwarded-For itself, validated (service/middleware.py).
        "proxy_headers": False,
        "server_header": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, value in websocket_options(get_settings()).items():
            setattr(self.config, name, value)

    def run(self) -> None:
        """gunicorn's entry point in the forked worker (uvicorn_worker's own goes through its
        private helpers, which an upgrade may change)."""
        with asyncio.Runner(loop_factory=self.config.get_loop_factory()) as runner:
            runner.run(self.serve_until_exit())

    async def serve_until_exit(self) -> None:
        self.config.app = self.wsgi
        settings = get_settings().server
        server = DrainingServer(
            config=self.config,
            drain_seconds=settings.drain_seconds,
            gc_young_threshold=settings.gc_young_threshold,
            on_drain=self.begin_draining,
        )
        # As uvicorn_worker does: gunicorn's quick shutdown sends SIGQUIT, which init_signals
        # left at its default (a core dump). See encode/uvicorn#1116, benoitc/gunicorn#2604.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGQUIT, self.handle_exit, signal.SIGQUIT, None
        )
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def begin_draining(self) -> None:
        """Once, when the first SIGTERM arrives: readiness answers 503 from now on. Whatever
        else must react at once to the drain (closing real-time connections) starts here."""
        lifecycle = getattr(getattr(self.wsgi, "state", None), "lifecycle", None)
        if lifecycle is not None:
            lifecycle.begin_draining()
