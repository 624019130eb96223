"""A job's changes, fanned out from whichever process runs it to whichever serves its event
stream: Redis pub/sub across pods, a set of queues within one process (the embedded default).
Messages only say "look again": the stream reads the job's state from the database, so a lost
message costs a heartbeat's delay, never a wrong state."""

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


class JobEvents(Protocol):
    async def changed(self, job_id: int) -> None: ...
    def watch(self, job_id: int) -> AbstractAsyncContextManager[asyncio.Queue[None]]: ...
    async def close(self) -> None: ...


class LocalJobEvents:
    """Within one process."""

    def __init__(self) -> None:
        self._watchers: defaultdict[int, set[asyncio.Queue[None]]] = defaultdict(set)

    async def changed(self, job_id: int) -> None:
        for queue in self._watchers.get(job_id, ()):
            if queue.empty():  # one pending wake-up is enough
                queue.put_nowait(None)

    @asynccontextmanager
    async def watch(self, job_id: int) -> AsyncIterator[asyncio.Queue[None]]:
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self._watchers[job_id].add(queue)
        try:
            yield queue
        finally:
            self._watchers[job_id].discard(queue)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    async def close(self) -> None:
        self._watchers.clear()


class RedisJobEvents:
    """Across processes and pods, on one channel per job."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _channel(self, job_id: int) -> str:
        return f"{self._prefix}jobs:{job_id}:changed"

    async def changed(self, job_id: int) -> None:
        try:
            await self._client.publish(self._channel(job_id), b"1")
        except (RedisError, OSError) as exc:
            # Watchers fall back to reading the job on every heartbeat.
            log.warning("job_event_not_published", job_id=job_id, error=str(exc))

    @asynccontextmanager
    async def watch(self, job_id: int) -> AsyncIterator[asyncio.Queue[None]]:
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        listener: asyncio.Task[None] | None = None
        try:
            await pubsub.subscribe(self._channel(job_id))
            listener = asyncio.create_task(_forward(pubsub, queue))
        except (RedisError, OSError) as exc:
            log.warning("job_events_unavailable", job_id=job_id, error=str(exc))
        try:
            yield queue
        finally:
            if listener is not None:
                listener.cancel()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._client.aclose()


async def _forward(pubsub: PubSub, queue: asyncio.Queue[None]) -> None:
    try:
        async for _ in pubsub.listen():
            if queue.empty():
                queue.put_nowait(None)
    except (RedisError, OSError) as exc:
        log.warning("job_events_lost", error=str(exc))
