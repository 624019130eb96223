"""The queue: taskiq over a Redis stream (any worker process takes the next job), or taskiq's
in-memory broker on the embedded default (jobs run inside the app). A message carries only a
job's id; the job's row is its state (service/jobs/service.py)."""

from typing import Annotated, Any

import structlog
from opentelemetry.sdk.trace import TracerProvider
from redis.exceptions import RedisError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from taskiq import AsyncBroker, Context, InMemoryBroker, TaskiqDepends
from taskiq.kicker import AsyncKicker
from taskiq_redis import RedisStreamBroker

from service.jobs.metrics import JOBS_ENQUEUED
from service.jobs.models import Job
from service.jobs.runner import JobRunner
from service.observability.jobs import continued_trace, job_middlewares
from service.settings import Settings

log = structlog.get_logger(__name__)

RUN_JOB = "glasshouse.run_job"


async def run_job(job_id: int, context: Annotated[Context, TaskiqDepends()]) -> None:
    """The one task on the queue: the runner in the broker's state does the rest."""
    runner: JobRunner = context.state.runner
    await runner.run(job_id)


def create_broker(settings: Settings, tracer_provider: TracerProvider | None) -> AsyncBroker:
    broker: AsyncBroker
    if not settings.jobs_in_process:
        assert settings.redis_url is not None
        broker = RedisStreamBroker(
            settings.redis_url,
            queue_name=settings.jobs.queue_name,
            consumer_group_name=f"{settings.jobs.queue_name}:workers",
            # A message whose worker died is redelivered after this; the sweeper usually
            # requeues the job long before (a lapsed lease), and the claim drops the repeat.
            idle_timeout=int(settings.jobs.redelivery_seconds * 1000),
        )
    else:
        broker = InMemoryBroker(max_async_tasks=settings.jobs.concurrency)
    broker.add_middlewares(*job_middlewares(tracer_provider))
    broker.register_task(run_job, task_name=RUN_JOB)
    return broker


class JobQueue:
    """Puts jobs on the queue, from the API (new jobs) and the sweeper (retries, requeues)."""

    def __init__(self, broker: AsyncBroker, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.broker = broker
        self.sessionmaker = sessionmaker

    async def enqueue(self, job: Job) -> None:
        """After the job's row is committed. If the queue is unreachable the job still stands:
        the sweeper sends it once it can."""
        try:
            await self.kick(job.id, traceparent=None, request_id=job.request_id)
        except (RedisError, OSError) as exc:
            log.warning("job_not_enqueued", job_id=job.id, error=f"{type(exc).__name__}: {exc}")
            async with self.sessionmaker() as session:
                await session.execute(update(Job).where(Job.id == job.id).values(kicked_at=None))
                await session.commit()
        JOBS_ENQUEUED.labels(job.kind).inc()

    async def kick(self, job_id: int, *, traceparent: str | None, request_id: str | None) -> None:
        """``traceparent``: the trace to continue (the sweeper's kicks); None: the current one."""
        kicker: AsyncKicker[[int], Any] = AsyncKicker(RUN_JOB, self.broker, {}).with_labels(
            request_id=request_id or ""
        )
        with continued_trace(traceparent):
            await kicker.kiq(job_id)
