from typing import Annotated

from fastapi import Depends, Path

from service.auth.dependencies import ItemsReader, ItemsStreamReader
from service.dependencies import SessionDep
from service.jobs import service
from service.jobs.models import Job
from service.schemas import MAX_ID

JobId = Annotated[int, Path(ge=1, le=MAX_ID)]


async def own_job(job_id: JobId, viewer: ItemsReader, session: SessionDep) -> Job:
    """The caller's own job; anyone else's is a 404. (The jobs so far move items, so reading
    them takes the items:read scope.)"""
    return await service.get_own_job(session=session, viewer=viewer, job_id=job_id)


OwnJob = Annotated[Job, Depends(own_job)]


async def streamed_job(job_id: JobId, viewer: ItemsStreamReader, session: SessionDep) -> Job:
    """The caller's own job, for its event stream (a browser may come with a ticket)."""
    return await service.get_own_job(session=session, viewer=viewer, job_id=job_id)


StreamedJob = Annotated[Job, Depends(streamed_job)]
