"""Wires the queue for the two kinds of process: the API (enqueues, serves job state and event
streams) and the worker (runs jobs, sweeps). On the embedded default the API is both."""

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from taskiq import AsyncBroker

from service.cache.declared import AnswerCache
from service.jobs.events import JobEvents, LocalJobEvents, RedisJobEvents
from service.jobs.metrics import declare_tasks
from service.jobs.queue import JobQueue, create_broker
from service.jobs.runner import JobHandler, JobRunner
from service.jobs.storage import FileStorage, LocalDirectoryStorage
from service.jobs.sweeper import LeaderLock, Sweeper
from service.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Jobs:
    broker: AsyncBroker
    queue: JobQueue
    storage: FileStorage
    events: JobEvents
    # Set where jobs run in this process: the worker, or the app without Redis.
    runner: JobRunner | None = None
    sweeper: Sweeper | None = None
    # False in the worker, whose command line starts and stops the broker.
    owns_broker: bool = True
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        # The sweeper first (it kicks jobs), then the jobs still running (handed back).
        if self.sweeper is not None:
            self.sweeper.stop()
        for task in self.background:
            task.cancel()
        if self.background:
            await asyncio.wait(self.background, timeout=5)
        if self.runner is not None:
            await self.runner.stop()
        if self.owns_broker:
            await self.broker.shutdown()
        await self.events.close()


def _redis(settings: Settings) -> Redis:
    assert settings.redis_url is not None
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.cache.connect_timeout_seconds,
        health_check_interval=30,
    )


async def start_jobs(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    handlers: Mapping[str, JobHandler],
    *,
    answers: AnswerCache,
    tracer_provider: TracerProvider | None,
    broker: AsyncBroker | None = None,
) -> Jobs:
    """``broker``: the worker's own (the one its command line names); None: a new one."""
    declare_tasks(handlers)
    in_worker = broker is not None
    broker = broker or create_broker(settings, tracer_provider)
    storage = LocalDirectoryStorage(settings.jobs.files_dir)
    events: JobEvents = (
        RedisJobEvents(_redis(settings), settings.jobs.queue_name)
        if settings.redis_url
        else LocalJobEvents()
    )
    queue = JobQueue(broker, sessionmaker)
    jobs = Jobs(
        broker=broker, queue=queue, storage=storage, events=events, owns_broker=not in_worker
    )
    runs_jobs = in_worker or settings.jobs_in_process
    if runs_jobs:
        jobs.runner = JobRunner(
            settings=settings,
            sessionmaker=sessionmaker,
            storage=storage,
            events=events,
            answers=answers,
            handlers=handlers,
        )
        broker.state.runner = jobs.runner
        lock = (
            LeaderLock(
                _redis(settings),
                f"{settings.jobs.queue_name}:sweeper",
                settings.jobs.leader_lock_seconds,
            )
            if settings.redis_url
            else None
        )
        jobs.sweeper = sweeper = Sweeper(
            settings=settings,
            sessionmaker=sessionmaker,
            queue=queue,
            storage=storage,
            events=events,
            lock=lock,
        )
        jobs.background.append(asyncio.create_task(sweeper.run(), name="jobs-sweeper"))
    if not in_worker:
        # The worker's broker is started by its command line.
        await broker.startup()
    return jobs
