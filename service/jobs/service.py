"""Jobs' state of record. Every change a worker makes is fenced by the attempt it holds: a
worker whose lease lapsed (and whose job went to another) changes nothing."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.auth.principal import Principal
from service.db.base import utc_now
from service.errors import NotFoundError
from service.jobs.events import JobEvents
from service.jobs.models import FINISHED, Job, JobStatus
from service.settings import JobsSettings

# An UPDATE ... RETURNING hands back the row as it is now, even to a session that holds it.
_RETURN_CURRENT = {"synchronize_session": False, "populate_existing": True}


@dataclass(frozen=True, slots=True)
class NewJob:
    owner_id: int
    kind: str
    params: dict[str, Any]
    idempotency_key: str | None = None
    file_key: str | None = None
    request_id: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Kick:
    """A message to put on the queue for a job, with the context of the request behind it."""

    job_id: int
    traceparent: str | None
    request_id: str | None


async def create_job(*, session: AsyncSession, new: NewJob) -> tuple[Job, bool]:
    """(job, created): a job with the same owner, kind and idempotency key is returned as is."""
    if new.idempotency_key is not None:
        existing = await _same_request(session, new)
        if existing is not None:
            return existing, False
    now = utc_now()
    job = Job(
        owner_id=new.owner_id,
        kind=new.kind,
        params=new.params,
        idempotency_key=new.idempotency_key,
        file_key=new.file_key,
        request_id=new.request_id,
        traceparent=new.traceparent,
        run_after=now,
        kicked_at=now,
        created_at=now,
    )
    session.add(job)
    try:
        await session.commit()
    except IntegrityError:
        # The same request, made at the same moment by another worker, won the insert.
        await session.rollback()
        existing = await _same_request(session, new)
        if existing is None:
            raise
        return existing, False
    return job, True


async def get_own_job(*, session: AsyncSession, viewer: Principal, job_id: int) -> Job:
    job = await session.get(Job, job_id)
    # Another user's job answers like a missing one, for admins too: its files are private.
    if job is None or job.owner_id != viewer.id:
        raise NotFoundError("No job with that id.")
    return job


async def claim(*, session: AsyncSession, job_id: int, settings: JobsSettings) -> Job | None:
    """Takes a queued, due job for one attempt under a lease; None when it is not ours to run
    (finished, running elsewhere, or a message that came early or twice)."""
    now = utc_now()
    claimed = await session.scalars(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued, Job.run_after <= now)
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            run_after=now + timedelta(seconds=settings.lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
        )
        .returning(Job),
        execution_options=_RETURN_CURRENT,
    )
    job = claimed.one_or_none()
    await session.commit()
    return job


def _held(job_id: int, attempt: int) -> ColumnElement[bool]:
    return and_(Job.id == job_id, Job.status == JobStatus.running, Job.attempts == attempt)


async def renew_lease(
    *, session: AsyncSession, job_id: int, attempt: int, settings: JobsSettings
) -> bool:
    renewed = await session.execute(
        update(Job)
        .where(_held(job_id, attempt))
        .values(run_after=utc_now() + timedelta(seconds=settings.lease_seconds))
    )
    await session.commit()
    return bool(renewed.rowcount)  # type: ignore[attr-defined]


async def record_progress(
    *,
    session: AsyncSession,
    job_id: int,
    attempt: int,
    done: int,
    total: int | None,
    checkpoint: dict[str, Any] | None = None,
) -> bool:
    """Within the caller's transaction, so a checkpoint commits with the work it covers."""
    values: dict[str, Any] = {"progress_done": done, "progress_total": total}
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    recorded = await session.execute(update(Job).where(_held(job_id, attempt)).values(**values))
    return bool(recorded.rowcount)  # type: ignore[attr-defined]


async def succeed(
    *,
    session: AsyncSession,
    job_id: int,
    attempt: int,
    result: dict[str, Any],
    file_key: str | None,
    file_expires_at: datetime | None,
) -> Job | None:
    finished = await session.scalars(
        update(Job)
        .where(_held(job_id, attempt))
        .values(
            status=JobStatus.succeeded,
            result=result,
            error=None,
            file_key=file_key,
            file_expires_at=file_expires_at,
            finished_at=utc_now(),
        )
        .returning(Job),
        execution_options=_RETURN_CURRENT,
    )
    job = finished.one_or_none()
    await session.commit()
    return job


def retry_delay(attempt: int, settings: JobsSettings) -> float:
    """Exponential backoff: the first retry after retry_delay_seconds, doubling, capped."""
    delay = settings.retry_delay_seconds * 2 ** (attempt - 1)
    return float(min(delay, settings.retry_max_delay_seconds))


async def fail_attempt(
    *,
    session: AsyncSession,
    job_id: int,
    attempt: int,
    error: str,
    retryable: bool,
    settings: JobsSettings,
) -> Job | None:
    """Queues the job again after a backoff, or marks it failed once attempts run out (or the
    failure is one a retry cannot fix, such as a malformed file)."""
    now = utc_now()
    if retryable and attempt < settings.max_attempts:
        values: dict[str, Any] = {
            "status": JobStatus.queued,
            "run_after": now + timedelta(seconds=retry_delay(attempt, settings)),
            "error": error,
        }
    else:
        # An upload is kept no longer than its job: the sweeper deletes it.
        values = {
            "status": JobStatus.failed,
            "error": error,
            "finished_at": now,
            "file_expires_at": now,
        }
    changed = await session.scalars(
        update(Job).where(_held(job_id, attempt)).values(**values).returning(Job),
        execution_options=_RETURN_CURRENT,
    )
    job = changed.one_or_none()
    await session.commit()
    return job


async def release(*, session: AsyncSession, job_id: int, attempt: int) -> bool:
    """Gives a running job back to the queue at once (a worker shutting down), the attempt
    not counted against it."""
    released = await session.execute(
        update(Job)
        .where(_held(job_id, attempt))
        .values(status=JobStatus.queued, run_after=utc_now(), attempts=Job.attempts - 1)
    )
    await session.commit()
    return bool(released.rowcount)  # type: ignore[attr-defined]


async def finish_lapsed(
    *, session: AsyncSession, settings: JobsSettings
) -> tuple[list[Job], list[int]]:
    """Running jobs whose worker stopped renewing the lease: out of attempts, failed; the
    rest queued again (kick_due then sends them)."""
    now = utc_now()
    lapsed = and_(Job.status == JobStatus.running, Job.run_after < now)
    failed = await session.scalars(
        update(Job)
        .where(lapsed, Job.attempts >= settings.max_attempts)
        .values(
            status=JobStatus.failed,
            error="The worker running the job stopped responding, and no attempts are left.",
            finished_at=now,
            file_expires_at=now,
        )
        .returning(Job),
        execution_options=_RETURN_CURRENT,
    )
    failed_jobs = list(failed)
    requeued = await session.scalars(
        update(Job).where(lapsed).values(status=JobStatus.queued, run_after=now).returning(Job.id)
    )
    requeued_ids = list(requeued)
    await session.commit()
    return failed_jobs, requeued_ids


async def kick_due(
    *, session: AsyncSession, rekick_after_seconds: float, limit: int = 500
) -> list[Kick]:
    """Queued jobs that need a message: retries and requeues come due, and jobs whose
    message seems lost (none claimed it for rekick_after_seconds: a Redis restart)."""
    now = utc_now()
    due = (
        select(Job.id)
        .where(
            Job.status == JobStatus.queued,
            Job.run_after <= now,
            or_(
                Job.kicked_at.is_(None),
                Job.kicked_at < Job.run_after,
                Job.kicked_at < now - timedelta(seconds=rekick_after_seconds),
            ),
        )
        .order_by(Job.run_after)
        .limit(limit)
    )
    kicked = await session.execute(
        update(Job)
        .where(Job.id.in_(due.scalar_subquery()))
        .values(kicked_at=now)
        .returning(Job.id, Job.traceparent, Job.request_id)
    )
    kicks = [Kick(job_id=row[0], traceparent=row[1], request_id=row[2]) for row in kicked]
    await session.commit()
    return kicks


async def expire_files(*, session: AsyncSession, limit: int = 500) -> list[str]:
    """Forgets the files whose time is up (exports past their TTL, finished jobs' uploads) and
    returns their keys; the caller deletes them from storage."""
    rows = (
        await session.execute(
            select(Job.id, Job.file_key)
            .where(Job.file_key.is_not(None), Job.file_expires_at < utc_now())
            .limit(limit)
        )
    ).all()
    if rows:
        await session.execute(
            update(Job).where(Job.id.in_([row.id for row in rows])).values(file_key=None)
        )
    await session.commit()
    return [row.file_key for row in rows if row.file_key is not None]


async def queue_stats(*, session: AsyncSession) -> tuple[int, float]:
    """(jobs waiting to run, seconds the longest has waited)."""
    now = utc_now()
    count, oldest = (
        await session.execute(
            select(func.count(), func.min(Job.run_after)).where(
                Job.status == JobStatus.queued, Job.run_after <= now
            )
        )
    ).one()
    if oldest is None:
        return int(count), 0.0
    if oldest.tzinfo is None:  # SQLite hands back an aggregate without the column's type
        oldest = datetime.fromisoformat(str(oldest)).replace(tzinfo=now.tzinfo)
    return int(count), max((now - oldest).total_seconds(), 0.0)


async def _same_request(session: AsyncSession, new: NewJob) -> Job | None:
    found = await session.scalars(
        select(Job).where(
            Job.owner_id == new.owner_id,
            Job.kind == new.kind,
            Job.idempotency_key == new.idempotency_key,
        )
    )
    return found.first()


async def follow_job(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    events: JobEvents,
    job_id: int,
    heartbeat_seconds: float,
) -> AsyncIterator[Job]:
    """The job as it is now, then again each time it changes, until it is finished (its last
    state is the finished job). Woken by the job's change events, or after a heartbeat's time
    in case one was lost (Redis away): the database has the answer either way."""
    async with events.watch(job_id) as changed:
        while True:
            async with sessionmaker() as session:
                job = await session.get(Job, job_id, populate_existing=True)
            if job is None:  # deleted with its owner
                return
            yield job
            if job.status in FINISHED:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(heartbeat_seconds):
                    await changed.get()
