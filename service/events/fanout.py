"""Events from whichever process committed them to every process with streams open: Redis
pub/sub across pods, or a direct call within one process (the embedded default). Publishing is
best effort by design: the streams read anything a message did not bring from the event log
(service/events/hub.py)."""

import asyncio
import contextlib
from typing import Protocol

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.events.hub import Hub
from service.events.models import ItemEvent
from service.events.schemas import encode

log = structlog.get_logger(__name__)


class EventPublisher(Protocol):
    async def item_changed(self, event: ItemEvent) -> None: ...
    async def credentials_changed(self, user_id: int) -> None: ...


class LocalFanOut:
    """Within one process."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def item_changed(self, event: ItemEvent) -> None:
        self._hub.deliver(event.owner_id, event.seq, event.kind, encode(event))

    async def credentials_changed(self, user_id: int) -> None:
        self._hub.credentials_changed(user_id)

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class RedisFanOut:
    """One subscription per process, on two channels: item events (the wire form, as
    published) and credential changes (a user id)."""

    def __init__(
        self, client: Redis, prefix: str, hub: Hub, *, retry_seconds: float, publish_timeout: float
    ) -> None:
        self._client = client
        self._publish_timeout = publish_timeout
        self._hub = hub
        self._events_channel = f"{prefix}:events:items"
        self._credentials_channel = f"{prefix}:events:credentials"
        self._retry_seconds = retry_seconds
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self._lost = False
        self._closing = False

    async def item_changed(self, event: ItemEvent) -> None:
        await self._publish(self._events_channel, encode(event))

    async def credentials_changed(self, user_id: int) -> None:
        # Also here directly: this process's streams close without a round trip, and even if
        # Redis is away.
        self._hub.credentials_changed(user_id)
        await self._publish(self._credentials_channel, str(user_id).encode())

    async def _publish(self, channel: str, data: bytes) -> None:
        if self._lost:
            return  # no waiting on a Redis known to be away: the streams catch up later
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._client.publish(channel, data)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("event_not_published", channel=channel, error=str(exc))

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="events-fan-out")

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            # The subscription's read ends with its connection: cancelled mid-read alone, it
            # was seen never to return, holding up the shutdown.
            await self._client.connection_pool.disconnect()
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._events_channel, self._credentials_channel)
                self.subscribed.set()
                if self._lost:
                    # Idle pooled connections are from before the outage: Redis closed them.
                    await self._client.connection_pool.disconnect(inuse_connections=False)
                    self._lost = False
                    log.info("event_fan_out_restored")
                    self._hub.fan_out_restored()
                async for message in pubsub.listen():
                    self._dispatch(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                if self._closing:
                    return
                if not self._lost:
                    self._lost = True
                    log.warning("event_fan_out_lost", error=str(exc))
                    self._hub.fan_out_lost()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._retry_seconds)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            if channel == self._credentials_channel.encode():
                self._hub.credentials_changed(int(data))
            else:
                event = orjson.loads(data)
                self._hub.deliver(
                    int(event["owner_id"]), int(event["id"]), str(event["type"]), data
                )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("event_message_malformed", channel=channel, error=str(exc))
