"""Where the process is in its life: starting, serving, draining. The worker flips
``draining`` on SIGTERM (service/server.py); readiness reads it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)


@dataclass
class Lifecycle:
    started_at: float = field(default_factory=time.monotonic)
    draining: bool = False
    # Run before the server's own shutdown (service/server.py), which would cut long-lived
    # streams with its own close code: the app ends them first, its way.
    stream_enders: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def begin_draining(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("draining_started")

    async def end_streams(self) -> None:
        for end in self.stream_enders:
            await end()

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_at
