"""Starting exports and imports, and the jobs that run them."""

import asyncio
from collections.abc import Iterator
from itertools import islice
from typing import Any

import structlog
from anyio import to_thread
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.principal import Principal
from service.cache.declared import AnswerCache
from service.events.schemas import ItemEventKind
from service.events.service import record_item_events
from service.item_files.formats import ExportEncoder, MalformedFileError, read_rows
from service.item_files.schemas import (
    MEDIA_TYPES,
    ExportParams,
    ImportParams,
    ItemExportRequest,
    RowError,
)
from service.items.metrics import ITEMS_CREATED
from service.items.models import Item
from service.items.schemas import ItemCreate, ItemRead
from service.items.service import (
    ITEMS_CACHE,
    ItemFilters,
    count_visible_items,
    visible_items,
)
from service.jobs.models import Job
from service.jobs.runner import JobContext, JobFailedError, JobOutcome, ProducedFile
from service.jobs.service import NewJob, create_job
from service.users.models import Role

log = structlog.get_logger(__name__)

EXPORT_ITEMS = "items.export"
IMPORT_ITEMS = "items.import"

# An import's result lists this many row errors; the count covers them all.
MAX_REPORTED_ERRORS = 1000
EXPORT_BATCH = 1000


async def start_export(
    *,
    session: AsyncSession,
    viewer: Principal,
    request: ItemExportRequest,
    idempotency_key: str | None,
    request_id: str | None,
    traceparent: str | None,
) -> tuple[Job, bool]:
    params = ExportParams(request=request, as_admin=viewer.is_admin)
    return await create_job(
        session=session,
        new=NewJob(
            owner_id=viewer.id,
            kind=EXPORT_ITEMS,
            params=params.model_dump(mode="json"),
            idempotency_key=idempotency_key,
            request_id=request_id,
            traceparent=traceparent,
        ),
    )


async def start_import(
    *,
    session: AsyncSession,
    viewer: Principal,
    upload_key: str,
    params: ImportParams,
    content_sha256: str,
    request_id: str | None,
    traceparent: str | None,
) -> tuple[Job, bool]:
    """The same file from the same owner is the same import: its content hash is the job's
    idempotency key."""
    return await create_job(
        session=session,
        new=NewJob(
            owner_id=viewer.id,
            kind=IMPORT_ITEMS,
            params=params.model_dump(mode="json"),
            idempotency_key=f"sha256:{content_sha256}",
            file_key=upload_key,
            request_id=request_id,
            traceparent=traceparent,
        ),
    )


async def export_items(job: JobContext) -> JobOutcome:
    params = ExportParams.model_validate(job.params)
    request = params.request
    viewer = Principal(id=job.owner_id, role=Role.admin if params.as_admin else Role.user)
    filters = ItemFilters(
        status=request.status,
        priority=request.priority,
        title_contains=request.q,
        owner_id=request.owner_id,
    )
    key = f"exports/{job.job_id}/{job.attempt}.{request.format}"
    encoder = ExportEncoder(request.format)
    done = 0
    async with job.sessionmaker() as session:
        total = await count_visible_items(session=session, viewer=viewer, filters=filters)
        await job.report_progress(done=0, total=total)
        query = visible_items(viewer=viewer, filters=filters, sort=request.sort)
        async with job.storage.open_writer(key) as out:
            await out.write(encoder.header())
            rows = await session.stream_scalars(query.execution_options(yield_per=EXPORT_BATCH))
            async for batch in rows.partitions():
                await out.write(encoder.rows(list(batch)))
                done += len(batch)
                await job.report_progress(done=done, total=max(total, done))
            await out.write(encoder.footer())
    log.info("items_exported", rows=done, bytes=out.size)
    return JobOutcome(
        result={"rows": done, "format": request.format, "sha256": out.sha256.hexdigest()},
        file=ProducedFile(
            key=key,
            name=f"items-{job.job_id}.{request.format}",
            media_type=MEDIA_TYPES[request.format],
            size=out.size,
        ),
    )


class _ImportState:
    """What an import has done so far; saved as the checkpoint with every batch."""

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        saved = checkpoint or {}
        self.rows: int = saved.get("rows", 0)
        self.stored: int = saved.get("stored", 0)
        self.invalid: int = saved.get("invalid", 0)
        self.errors: list[dict[str, Any]] = saved.get("errors", [])

    def reject(self, row: int, errors: list[RowError]) -> None:
        self.invalid += 1
        room = MAX_REPORTED_ERRORS - len(self.errors)
        self.errors.extend(error.model_dump() for error in errors[: max(room, 0)])

    def checkpoint(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "stored": self.stored,
            "invalid": self.invalid,
            "errors": self.errors,
        }


def _row_errors(row: int, exc: ValidationError) -> list[RowError]:
    return [
        RowError(
            row=row,
            field=".".join(str(part) for part in error["loc"]) or None,
            message=error["msg"],
        )
        for error in exc.errors(include_url=False)
    ]


def _validated(row: int, record: object) -> ItemCreate | list[RowError]:
    if not isinstance(record, dict):
        return [RowError(row=row, field=None, message="must be an object")]
    if "__row__" in record:
        return [RowError(row=row, field=None, message=str(record["__row__"]))]
    try:
        return ItemCreate.model_validate(record)
    except ValidationError as exc:
        return _row_errors(row, exc)


async def import_items(job: JobContext) -> JobOutcome:
    """Valid rows are committed a batch at a time with the checkpoint, so a rerun (after a
    worker died) starts after the last committed batch: each row is stored once."""
    if job.file_key is None:
        raise JobFailedError("The uploaded file is gone (the job ran past its file's lifetime).")
    params = ImportParams.model_validate(job.params)
    state = _ImportState(job.checkpoint)
    batch_size = job.settings.jobs.import_batch_size
    cache: AnswerCache = job.answers
    file = await to_thread.run_sync(job.storage.open_sync, job.file_key)
    try:
        rows = read_rows(file, params.format)
        # Rows up to the checkpoint were committed by an earlier attempt.
        await to_thread.run_sync(_skip, rows, state.rows)
        while True:
            batch = await to_thread.run_sync(_take, rows, batch_size)
            if not batch:
                break
            new_items = []
            for record in batch:
                state.rows += 1
                checked = _validated(state.rows, record)
                if isinstance(checked, ItemCreate):
                    new_items.append(Item(owner_id=job.owner_id, **checked.model_dump()))
                else:
                    state.reject(state.rows, checked)
            async with job.sessionmaker() as session:
                session.add_all(new_items)
                await session.flush()
                # Live streams find these in the event log (a large import: a stream.reset).
                await record_item_events(
                    session=session,
                    kind=ItemEventKind.created,
                    owner_id=job.owner_id,
                    items=[(item.id, _item_state(item)) for item in new_items],
                )
                state.stored += len(new_items)
                await job.commit_progress(
                    session, done=state.rows, total=None, checkpoint=state.checkpoint()
                )
            if new_items:
                ITEMS_CREATED.inc(len(new_items))
                await cache.invalidate(ITEMS_CACHE, job.owner_id)
            await asyncio.sleep(0)  # let requests in between batches (embedded default)
    except MalformedFileError as exc:
        raise JobFailedError(str(exc)) from None
    finally:
        await to_thread.run_sync(file.close)
    log.info("items_imported", rows=state.rows, stored=state.stored, invalid=state.invalid)
    return JobOutcome(result={**state.checkpoint(), "format": params.format})


def _item_state(item: Item) -> dict[str, Any]:
    return ItemRead.model_validate(item).model_dump(mode="json")


def _take(rows: Iterator[object], count: int) -> list[object]:
    return list(islice(rows, count))


def _skip(rows: Iterator[object], count: int) -> None:
    for _ in islice(rows, count):
        pass
