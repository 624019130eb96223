import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status

from service.auth.dependencies import ItemsReader, ItemsWriter
from service.dependencies import JobOriginDep, JobsDep, SessionDep, SettingsDep
from service.item_files import service
from service.item_files.schemas import ACCEPTED_UPLOADS, FileFormat, ImportParams, ItemExportRequest
from service.jobs.models import Job
from service.jobs.router import job_answer
from service.jobs.schemas import JobRead
from service.jobs.uploads import UPLOAD_OPENAPI, receive_upload

router = APIRouter(prefix="/items", tags=["items"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=100,
        pattern=r"^[\x21-\x7e]+$",
        description="The same key (per user) answers with the job it started the first time.",
    ),
]
ACCEPTED: dict[int | str, dict[str, Any]] = {
    200: {"description": "The job this same request started before", "model": JobRead},
    202: {"description": "The job, queued; follow it at Location"},
}


@router.post(
    "/exports",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Export your items (admins: anyone's) as CSV or JSON, in a background job",
    responses=ACCEPTED,
)
async def export_items(
    request: Request,
    response: Response,
    data: ItemExportRequest,
    viewer: ItemsReader,
    session: SessionDep,
    jobs: JobsDep,
    origin: JobOriginDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    job, created = await service.start_export(
        session=session,
        viewer=viewer,
        request=data,
        idempotency_key=idempotency_key,
        request_id=origin.request_id,
        traceparent=origin.traceparent,
    )
    if created:
        await jobs.queue.enqueue(job)
    return _started(request, response, job, created=created)


@router.post(
    "/imports",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Import items from a CSV or JSON file, in a background job",
    description="Rows are checked like POST /items; valid rows are stored, the others listed "
    "with their row, field and reason in the job's result. The same file uploaded again "
    "answers with its first job (200) and imports nothing twice.",
    responses={
        **ACCEPTED,
        413: {"description": "The file is larger than the limit"},
        415: {"description": "Not multipart/form-data, or the file is not CSV or JSON"},
    },
    openapi_extra=UPLOAD_OPENAPI,
)
async def import_items(
    request: Request,
    response: Response,
    viewer: ItemsWriter,
    session: SessionDep,
    jobs: JobsDep,
    origin: JobOriginDep,
    settings: SettingsDep,
) -> JobRead:
    upload = await receive_upload(
        request,
        storage=jobs.storage,
        key=f"uploads/{viewer.id}/{uuid.uuid4().hex}",
        max_bytes=settings.jobs.max_upload_bytes,
        accepted=ACCEPTED_UPLOADS,
    )
    file_format = FileFormat.json if upload.media_type == "application/json" else FileFormat.csv
    job, created = await service.start_import(
        session=session,
        viewer=viewer,
        upload_key=upload.key,
        params=ImportParams(format=file_format),
        content_sha256=upload.sha256,
        request_id=origin.request_id,
        traceparent=origin.traceparent,
    )
    if created:
        await jobs.queue.enqueue(job)
    else:
        await jobs.storage.delete(upload.key)
    return _started(request, response, job, created=created)


def _started(request: Request, response: Response, job: Job, *, created: bool) -> JobRead:
    """202 for a new job, 200 for the one the same request started before; Location either way."""
    response.status_code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
    return job_answer(request, job)
