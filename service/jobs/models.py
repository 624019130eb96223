from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, BigIntPrimaryKey, UtcDateTime, utc_now


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


FINISHED = (JobStatus.succeeded, JobStatus.failed)


class Job(Base):
    """The job's state of record: the queue only carries its id, so a lost or repeated message
    never loses or repeats work (the row decides who runs it, and when again)."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The same request made twice (an Idempotency-Key, or the same uploaded file) is one job.
        # Led by owner_id, it also serves the users.id cascade.
        UniqueConstraint(
            "owner_id", "kind", "idempotency_key", name="uq_jobs_owner_id_kind_idempotency_key"
        ),
        # The sweeper's scans: due retries, lapsed leases, expired files.
        Index("ix_jobs_status_run_after", "status", "run_after"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPrimaryKey, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[JobStatus] = mapped_column(String(16), default=JobStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Queued: not before this time (a retry's backoff). Running: the lease's end.
    run_after: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    # When a message for this job was last put on the queue: the sweeper kicks a queued job
    # again once its run_after passes this (a retry, a requeue) or the message seems lost.
    kicked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    # Where a rerun resumes (an import: rows already committed), written with the work it covers.
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # The file a job reads (an upload) or writes (an export), in the file storage.
    file_key: Mapped[str | None] = mapped_column(String(200))
    file_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The enqueuing request's trace context and ID, so the job's span and logs join them.
    traceparent: Mapped[str | None] = mapped_column(String(100))
    request_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
