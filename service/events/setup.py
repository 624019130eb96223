"""Live events for the app's lifetime: this process's hub and its fan-out (Redis when there is
one, the process alone on the embedded default)."""

import asyncio
import contextlib
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.events import metrics
from service.events.fanout import LocalFanOut, RedisFanOut
from service.events.hub import CloseReason, Hub
from service.settings import Settings


@dataclass
class LiveEvents:
    hub: Hub
    publisher: LocalFanOut | RedisFanOut

    async def end_streams(self) -> None:
        """Before the server's own shutdown: every stream ends with "going away" (WebSocket
        1001, SSE's last event and its retry), so clients reconnect, to another pod. Waits
        for them a little (a client that does not read is not waited for long)."""
        self.hub.close_all(CloseReason.shutdown)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.hub.settings.shutdown_wait_seconds):
                await self.hub.emptied.wait()

    async def close(self) -> None:
        await self.hub.stop()
        await self.publisher.close()


def start_live_events(
    settings: Settings, read_sessionmaker: async_sessionmaker[AsyncSession]
) -> LiveEvents:
    metrics.declare()
    hub = Hub(settings.realtime, read_sessionmaker)
    publisher: LocalFanOut | RedisFanOut
    if settings.redis_url:
        client = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.cache.connect_timeout_seconds,
            health_check_interval=int(settings.realtime.heartbeat_seconds),
            # No retries: they would hold up the write that publishes; the streams catch up.
            retry=Retry(NoBackoff(), 0),
        )
        publisher = RedisFanOut(
            client,
            settings.cache.key_prefix,
            hub,
            retry_seconds=1.0,
            publish_timeout=settings.cache.operation_timeout_seconds,
        )
    else:
        publisher = LocalFanOut(hub)
    hub.start()
    publisher.start()
    return LiveEvents(hub=hub, publisher=publisher)
