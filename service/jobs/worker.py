"""The worker process: taskiq's worker runs ``broker`` from this module (``python -m
service.jobs`` starts it with the settings' options). Startup opens the database, the file
storage and the sweeper; shutdown hands back jobs still running after the wait."""

import asyncio

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from taskiq import TaskiqEvents, TaskiqState

from service.cache.setup import build_caches
from service.db.migrate import is_at_head
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
    heartbeat = LoopHeartbeat(stale_after_seconds=30)
    beating = asyncio.create_task(_beat(heartbeat), name="worker-heartbeat")
    if settings.jobs.worker_metrics_port:
        state.listener = start_worker_listener(
            settings.observability.metrics_host, settings.jobs.worker_metrics_port, heartbeat
        )
    engine = create_engine(settings.database)
    observability.observe_worker_engine(engine, tracer_provider)
    await _wait_for_migrations(engine)
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
    jobs.background.append(beating)
    state.jobs = jobs
    state.engine = engine
    state.caches = caches
    log.info("worker_started", queue=settings.jobs.queue_name)


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def stop_worker(state: TaskiqState) -> None:
    jobs: Jobs | None = getattr(state, "jobs", None)
    if jobs is not None:  # None: stopped while waiting for the database
        await jobs.close()
        await state.caches.close()
        await state.engine.dispose()
    observability.shutdown_tracing(tracer_provider, settings)
    log.info("worker_stopped")


async def _wait_for_migrations(engine: AsyncEngine) -> None:
    """A new release's workers start with its API pods, maybe before its migration has run:
    they take no job until the schema is the one their code expects (alive meanwhile)."""
    waited = 0
    while True:
        try:
            if await is_at_head(engine):
                return
            reason = "migrations behind"
        except (SQLAlchemyError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if waited % 30 == 0:
            log.warning("worker_waiting_for_database", reason=reason, waited_seconds=waited)
        await asyncio.sleep(1)
        waited += 1


async def _beat(heartbeat: LoopHeartbeat) -> None:
    while True:
        heartbeat.beat()
        await asyncio.sleep(1)
