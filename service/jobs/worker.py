"""The worker process: taskiq's worker runs ``broker`` from this module (``python -m
service.jobs`` starts it with the settings' options). Startup opens the database, the file
storage and the sweeper; shutdown hands back jobs still running after the wait."""

import asyncio

import structlog
from taskiq import TaskiqEvents, TaskiqState

from service.cache.setup import build_caches
from service.db.session import create_engine, create_sessionmaker
from service.jobs.queue import create_broker
from service.jobs.setup import Jobs, start_jobs
from service.observability import setup as observability
from service.observability.jobs import LoopHeartbeat, start_worker_listener
from service.settings import get_settings
from service.tasks import JOB_HANDLERS

log = structlog.get_logger(__name__)

settings = get_settings()
observability.configure_process_logging(settings)
tracer_provider = observability.create_tracer_provider(settings, span_exporter=None)
broker = create_broker(settings, tracer_provider)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def start_worker(state: TaskiqState) -> None:
    engine = create_engine(settings.database)
    observability.observe_worker_engine(engine, tracer_provider)
    # Imports invalidate the item answers the API caches.
    caches = build_caches(settings)
    caches.start()
    jobs = await start_jobs(
        settings,
        create_sessionmaker(engine),
        JOB_HANDLERS,
        answers=caches.answers,
        tracer_provider=tracer_provider,
        broker=broker,
    )
    heartbeat = LoopHeartbeat(stale_after_seconds=30)
    jobs.background.append(asyncio.create_task(_beat(heartbeat), name="worker-heartbeat"))
    if settings.jobs.worker_metrics_port:
        state.listener = start_worker_listener(
            settings.observability.metrics_host, settings.jobs.worker_metrics_port, heartbeat
        )
    state.jobs = jobs
    state.engine = engine
    state.caches = caches
    log.info("worker_started", queue=settings.jobs.queue_name)


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def stop_worker(state: TaskiqState) -> None:
    jobs: Jobs = state.jobs
    await jobs.close()
    await state.caches.close()
    await state.engine.dispose()
    observability.shutdown_tracing(tracer_provider, settings)
    log.info("worker_stopped")


async def _beat(heartbeat: LoopHeartbeat) -> None:
    while True:
        heartbeat.beat()
        await asyncio.sleep(1)
