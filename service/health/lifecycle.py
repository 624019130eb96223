"""Where the process is in its life: starting, serving, draining. The worker flips
``draining`` on SIGTERM (service/server.py); readiness reads it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)


@dataclass
class Lifecycle:
    started_at: float = field(default_factory=time.monotonic)
    draining: bool = False

    def begin_draining(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("draining_started")

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_at
