from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.db.base import utc_now
from service.dependencies import JobsDep, ReadSessionmakerDep, SettingsDep
from service.errors import GoneError, NotFoundError
from service.jobs import service
from service.jobs.dependencies import OwnJob, StreamedJob
from service.jobs.models import FINISHED, Job, JobStatus
from service.jobs.schemas import JobRead

router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job, or not yours"}}


def _produced_file(job: Job) -> dict[str, Any] | None:
    if job.status != JobStatus.succeeded or not job.result:
        return None
    produced = job.result.get("file")
    return produced if isinstance(produced, dict) else None


def _file_kept(job: Job) -> bool:
    return (
        job.file_key is not None
        and job.file_expires_at is not None
        and job.file_expires_at > utc_now()
    )


def job_answer(request: Request, job: Job) -> JobRead:
    downloadable = _produced_file(job) is not None and _file_kept(job)
    download = str(request.url_for("download_job_file", job_id=job.id)) if downloadable else None
    return JobRead.of(job, download_url=download)


@router.get("/{job_id}", summary="A job's state, progress and result", responses=NOT_FOUND)
async def get_job(request: Request, job: OwnJob) -> JobRead:
    return job_answer(request, job)


@router.get(
    "/{job_id}/file",
    summary="Download what the job produced (an export)",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"description": "The file", "content": {"text/csv": {}, "application/json": {}}},
        206: {"description": "The requested byte range"},
        410: {"description": "The file has expired"},
    },
)
async def download_job_file(job: OwnJob, jobs: JobsDep) -> Response:
    produced = _produced_file(job)
    if produced is None:
        raise NotFoundError("This job has no file (yet).")
    if not _file_kept(job) or job.file_key is None:
        raise GoneError("The file has expired; run the job again.")
    return jobs.storage.download(
        job.file_key, filename=str(produced["name"]), media_type=str(produced["media_type"])
    )


@router.get(
    "/{job_id}/events",
    summary="The job's progress and final state, as Server-Sent Events",
    description="An `event: job` with the job (as GET /jobs/{id}) whenever it changes, "
    "comment lines as heartbeats, and an `event: end` with the finished job, after which the "
    "stream ends. Browsers: open it with `?ticket=` from POST /api/v1/auth/stream-tickets.",
    response_class=EventSourceResponse,
    responses={
        **NOT_FOUND,
        200: {"description": "The event stream", "content": {"text/event-stream": {}}},
    },
)
async def job_events(
    request: Request,
    job: StreamedJob,
    jobs: JobsDep,
    settings: SettingsDep,
    sessionmaker: ReadSessionmakerDep,
) -> EventSourceResponse:
    async def stream() -> AsyncIterator[ServerSentEvent]:
        sent = None
        async for current in service.follow_job(
            sessionmaker=sessionmaker,
            events=jobs.events,
            job_id=job.id,
            heartbeat_seconds=settings.jobs.events_heartbeat_seconds,
        ):
            answer = job_answer(request, current).model_dump_json()
            if current.status in FINISHED:
                yield ServerSentEvent(data=answer, event="end")
            elif answer != sent:
                yield ServerSentEvent(data=answer, event="job")
                sent = answer

    return EventSourceResponse(
        stream(),
        ping=settings.jobs.events_heartbeat_seconds,
        # Proxies (nginx and others) pass each event on at once instead of buffering.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
