"""The sweeper: requeues jobs whose worker died (lease lapsed), sends retries when they come
due, deletes expired files and old live events, and measures the queue. One process sweeps at
a time (a lock in Redis; without Redis there is only one process)."""

import asyncio
import contextlib
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.base import utc_now
from service.events.service import delete_events_before
from service.jobs import service
from service.jobs.events import JobEvents
from service.jobs.metrics import JOBS_FAILED, QUEUE_GAUGES
from service.jobs.queue import JobQueue
from service.jobs.storage import FileStorage
from service.settings import Settings

log = structlog.get_logger(__name__)


class LeaderLock:
    """Held by one sweeper at a time; lapses leader_lock_seconds after its holder stops."""

    def __init__(self, client: Redis, name: str, ttl_seconds: float) -> None:
        self._client = client
        self._lock: Lock = client.lock(name, timeout=ttl_seconds)
        self._held = False

    async def hold(self) -> bool:
        try:
            if self._held:
                await self._lock.reacquire()
            else:
                self._held = await self._lock.acquire(blocking=False)
        except LockError:
            self._held = False  # it lapsed and another took it
        except (RedisError, OSError) as exc:
            log.warning("sweeper_lock_unavailable", error=str(exc))
            self._held = False
        return self._held

    async def release(self) -> None:
        if self._held:
            with contextlib.suppress(LockError, RedisError, OSError):  # it lapses on its own
                await self._lock.release()
            self._held = False

    async def close(self) -> None:
        await self.release()
        await self._client.aclose()


class Sweeper:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        storage: FileStorage,
        events: JobEvents,
        lock: LeaderLock | None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.queue = queue
        self.storage = storage
        self.events = events
        self.lock = lock
        self.stopped = False

    def stop(self) -> None:
        """Ends the loop at its next turn. Cancelling the task alone is not enough: a client
        library that meets the cancellation may return or raise its own error instead, and a
        sweeper that outlives its process's shutdown would keep requeuing jobs."""
        self.stopped = True

    async def run(self) -> None:
        interval = self.settings.jobs.sweep_interval_seconds
        try:
            while not self.stopped:
                # A sweep's interval after start first: a fresh process has nothing to sweep.
                await asyncio.sleep(interval)
                if self.lock is None or await self.lock.hold():
                    if self.stopped:
                        break
                    try:
                        await self.sweep()
                    except Exception:
                        if not self.stopped:
                            log.exception("sweep_failed")
                else:
                    QUEUE_GAUGES.forget()
        finally:
            QUEUE_GAUGES.forget()
            if self.lock is not None:
                await asyncio.shield(self.lock.close())

    async def sweep(self) -> None:
        settings = self.settings.jobs
        async with self.sessionmaker() as session:
            failed, requeued = await service.finish_lapsed(session=session, settings=settings)
        for job in failed:
            JOBS_FAILED.labels(job.kind).inc()
            log.error("job_failed", job_id=job.id, task=job.kind, error=job.error)
            await self.events.changed(job.id)
        if requeued:
            log.warning("jobs_requeued_after_lapsed_lease", job_ids=requeued)
        async with self.sessionmaker() as session:
            kicks = await service.kick_due(
                session=session, rekick_after_seconds=settings.redelivery_seconds
            )
        for kick in kicks:
            await self.queue.kick(
                kick.job_id, traceparent=kick.traceparent, request_id=kick.request_id
            )
        async with self.sessionmaker() as session:
            expired = await service.expire_files(session=session)
        for key in expired:
            await self.storage.delete(key)
        # Live events older than the resume window (service/events): one process does it.
        cutoff = utc_now() - timedelta(hours=self.settings.realtime.retention_hours)
        async with self.sessionmaker() as session:
            if await delete_events_before(session=session, cutoff=cutoff):
                await session.commit()
        async with self.sessionmaker() as session:
            depth, oldest = await service.queue_stats(session=session)
        QUEUE_GAUGES.record(depth, oldest)
