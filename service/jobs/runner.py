"""Runs one attempt of a job: claim it under a lease, keep the lease while the handler works,
record how it ended. The queue delivers at least once; the claim makes each attempt run once."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.cache.declared import AnswerCache
from service.db.base import utc_now
from service.jobs import service
from service.jobs.events import JobEvents
from service.jobs.metrics import (
    JOB_DURATION,
    JOBS_FAILED,
    JOBS_RETRIED,
    JOBS_STARTED,
    JOBS_SUCCEEDED,
)
from service.jobs.models import Job, JobStatus
from service.jobs.storage import FileStorage
from service.settings import Settings

log = structlog.get_logger(__name__)


class JobFailedError(Exception):
    """A failure no retry can fix (a malformed file): the job fails at once, with this message
    as its error."""


class LeaseLostError(Exception):
    """The job was given to another worker (this one stopped renewing in time)."""


class ReleasedError(Exception):
    """The process is stopping: the job goes back to the queue, between two units of work."""


@dataclass(frozen=True, slots=True)
class ProducedFile:
    """A file a job made for its owner to download, kept for jobs.file_ttl_seconds."""

    key: str
    name: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class JobOutcome:
    result: dict[str, Any]
    file: ProducedFile | None = None


@dataclass
class JobContext:
    """What a handler gets: the job's parameters and where it may resume, and the means to
    record progress (with a checkpoint, in the same transaction as the work it covers)."""

    job_id: int
    owner_id: int
    params: dict[str, Any]
    attempt: int
    checkpoint: dict[str, Any] | None
    file_key: str | None
    sessionmaker: async_sessionmaker[AsyncSession]
    storage: FileStorage
    settings: Settings
    events: JobEvents
    answers: AnswerCache
    stopping: Callable[[], bool]
    _last_announced: float = field(default=0.0)

    async def commit_progress(
        self,
        session: AsyncSession,
        *,
        done: int,
        total: int | None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        """Commits the session's work with the progress (and checkpoint), or nothing at all if
        the job is no longer this attempt's or the process is stopping (the job is then handed
        back, and its next attempt resumes from the last checkpoint)."""
        if self.stopping():
            await session.rollback()
            raise ReleasedError
        recorded = await service.record_progress(
            session=session,
            job_id=self.job_id,
            attempt=self.attempt,
            done=done,
            total=total,
            checkpoint=checkpoint,
        )
        if not recorded:
            await session.rollback()
            raise LeaseLostError
        await session.commit()
        # Watchers re-read the job; a few wake-ups a second are plenty.
        now = time.monotonic()
        if now - self._last_announced >= 0.25:
            self._last_announced = now
            await self.events.changed(self.job_id)

    async def report_progress(self, *, done: int, total: int | None) -> None:
        async with self.sessionmaker() as session:
            await self.commit_progress(session, done=done, total=total)


JobHandler = Callable[[JobContext], Awaitable[JobOutcome]]


class JobRunner:
    """One per process that runs jobs (a worker, or the app on the embedded default)."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: FileStorage,
        events: JobEvents,
        answers: AnswerCache,
        handlers: Mapping[str, JobHandler],
    ) -> None:
        self.settings = settings
        self.answers = answers
        self.sessionmaker = sessionmaker
        self.storage = storage
        self.events = events
        self.handlers = handlers
        self._running: set[asyncio.Task[Any]] = set()
        self.stopping = False

    async def run(self, job_id: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.stopping:
            return  # the message stays unacknowledged; the job stays queued for another
        self._running.add(task)
        try:
            async with self.sessionmaker() as session:
                job = await service.claim(
                    session=session, job_id=job_id, settings=self.settings.jobs
                )
            if job is None:
                log.debug("job_not_claimed", job_id=job_id)
                return
            with structlog.contextvars.bound_contextvars(
                job_id=job.id, task=job.kind, attempt=job.attempts, request_id=job.request_id
            ):
                await self._attempt(job, task)
        finally:
            self._running.discard(task)

    async def _attempt(self, job: Job, task: asyncio.Task[Any]) -> None:
        handler = self.handlers.get(job.kind)
        JOBS_STARTED.labels(job.kind).inc()
        log.info("job_started")
        await self.events.changed(job.id)
        context = JobContext(
            job_id=job.id,
            owner_id=job.owner_id,
            params=job.params,
            attempt=job.attempts,
            checkpoint=job.checkpoint,
            file_key=job.file_key,
            sessionmaker=self.sessionmaker,
            storage=self.storage,
            settings=self.settings,
            events=self.events,
            answers=self.answers,
            stopping=lambda: self.stopping,
        )
        lease = _Lease(self, job, task)
        keeper = asyncio.create_task(lease.keep())
        started = time.perf_counter()
        outcome = "released"
        try:
            if handler is None:
                raise JobFailedError(f"No handler for jobs of kind {job.kind!r}.")
            async with asyncio.timeout(self.settings.jobs.time_limit_seconds) as limit:
                result = await handler(context)
            outcome = await self._succeed(job, result)
        except LeaseLostError:
            log.warning("job_lease_lost")
            outcome = "lost"
        except ReleasedError:
            await self._release(job)
        except JobFailedError as exc:
            outcome = await self._fail(job, str(exc), retryable=False)
        except TimeoutError:
            if not limit.expired():
                raise
            message = f"The attempt ran past the {self.settings.jobs.time_limit_seconds:g} s limit."
            outcome = await self._fail(job, message, retryable=True)
        except asyncio.CancelledError:
            if lease.lost:
                log.warning("job_lease_lost")
                task.uncancel()
                outcome = "lost"
            else:
                # The worker is stopping: hand the job back so another runs it now.
                await asyncio.shield(self._release(job))
                raise
        except Exception as exc:
            log.exception("job_attempt_failed")
            outcome = await self._fail(job, f"{type(exc).__name__}: {exc}", retryable=True)
        finally:
            keeper.cancel()
            JOB_DURATION.labels(job.kind, outcome).observe(time.perf_counter() - started)

    async def _succeed(self, job: Job, result: JobOutcome) -> str:
        now = utc_now()
        produced = result.file
        stored = dict(result.result)
        if produced is not None:
            stored["file"] = {
                "name": produced.name,
                "media_type": produced.media_type,
                "bytes": produced.size,
            }
        async with self.sessionmaker() as session:
            finished = await service.succeed(
                session=session,
                job_id=job.id,
                attempt=job.attempts,
                result=stored,
                # A produced file stays for its TTL; a consumed upload goes with the next sweep.
                file_key=produced.key if produced else job.file_key,
                file_expires_at=(
                    now + timedelta(seconds=self.settings.jobs.file_ttl_seconds)
                    if produced
                    else now
                ),
            )
        if finished is None:
            raise LeaseLostError
        JOBS_SUCCEEDED.labels(job.kind).inc()
        log.info("job_succeeded")
        await self.events.changed(job.id)
        return "succeeded"

    async def _fail(self, job: Job, error: str, *, retryable: bool) -> str:
        async with self.sessionmaker() as session:
            changed = await service.fail_attempt(
                session=session,
                job_id=job.id,
                attempt=job.attempts,
                error=error,
                retryable=retryable,
                settings=self.settings.jobs,
            )
        if changed is None:
            log.warning("job_lease_lost")
            return "lost"
        await self.events.changed(job.id)
        if changed.status == JobStatus.failed:
            JOBS_FAILED.labels(job.kind).inc()
            log.error("job_failed", error=error)
            return "failed"
        JOBS_RETRIED.labels(job.kind).inc()
        log.warning("job_attempt_will_retry", error=error, run_after=changed.run_after.isoformat())
        return "retried"

    async def _release(self, job: Job) -> None:
        try:
            async with self.sessionmaker() as session:
                released = await service.release(
                    session=session, job_id=job.id, attempt=job.attempts
                )
            log.info("job_released", released=released)
        except Exception:
            # The lease lapses instead, and the sweeper requeues the job.
            log.exception("job_release_failed")

    async def stop(self, *, grace_seconds: float = 5.0) -> None:
        """Hands every still-running job back to the queue: each at its next unit of work,
        or, past ``grace_seconds``, cancelled wherever it is."""
        self.stopping = True
        running = list(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace_seconds)


class _Lease:
    """Renews the attempt's lease a third of the way through it. When renewal says the job is
    no longer ours (or the database stays unreachable until the lease would have lapsed), the
    attempt is cancelled: another worker may already be running it."""

    def __init__(self, runner: JobRunner, job: Job, task: asyncio.Task[Any]) -> None:
        self.runner = runner
        self.job = job
        self.task = task
        self.lost = False

    async def keep(self) -> None:
        settings = self.runner.settings.jobs
        deadline = time.monotonic() + settings.lease_seconds
        while True:
            await asyncio.sleep(settings.lease_seconds / 3)
            try:
                async with self.runner.sessionmaker() as session:
                    renewed = await service.renew_lease(
                        session=session,
                        job_id=self.job.id,
                        attempt=self.job.attempts,
                        settings=settings,
                    )
            except Exception as exc:
                log.warning("job_lease_not_renewed", error=f"{type(exc).__name__}: {exc}")
                if time.monotonic() < deadline:
                    continue
                renewed = False
            if not renewed:
                self.lost = True
                self.task.cancel()
                return
            deadline = time.monotonic() + settings.lease_seconds
