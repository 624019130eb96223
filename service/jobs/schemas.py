from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.jobs.models import Job, JobStatus


class JobProgress(BaseModel):
    done: int = Field(description="Units of work done (rows, for exports and imports).")
    total: int | None = Field(description="Units in all, once known.")


class JobRead(BaseModel):
    id: int
    kind: str = Field(description="What the job does, e.g. items.export.")
    status: JobStatus
    attempts: int = Field(description="Attempts started so far (retries included).")
    progress: JobProgress
    result: dict[str, Any] | None = Field(description="What a finished job produced.")
    error: str | None = Field(description="Why the last attempt failed.")
    download_url: str | None = Field(description="The finished export's file, until it expires.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job, *, download_url: str | None = None) -> "JobRead":
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            attempts=job.attempts,
            progress=JobProgress(done=job.progress_done, total=job.progress_total),
            result=job.result,
            error=job.error,
            download_url=download_url,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )
