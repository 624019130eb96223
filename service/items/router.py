from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status

from service.auth.dependencies import ItemsReader, ItemsWriter
from service.cache.declared import cached
from service.dependencies import AnswerCacheDep, EventPublisherDep, SessionDep
from service.items import service
from service.items.dependencies import ItemId, VisibleItem
from service.items.models import ItemStatus
from service.items.schemas import ItemCreate, ItemRead, ItemSort, ItemUpdate
from service.items.service import ITEMS_CACHE, ItemFilters
from service.routing import NumericIdRoute
from service.schemas import MAX_ID, NO_NUL_PATTERN, Page, PageParams, page_params

# /items/exports and /items/imports (service/item_files) are not item ids.
router = APIRouter(prefix="/items", tags=["items"], route_class=NumericIdRoute)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such item, or not yours"}}
CACHED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the ETag in If-None-Match is current"}
}


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create an item")
async def create_item(
    data: ItemCreate,
    viewer: ItemsWriter,
    session: SessionDep,
    cache: AnswerCacheDep,
    events: EventPublisherDep,
) -> ItemRead:
    item = await service.create_item(
        session=session, cache=cache, events=events, owner=viewer, data=data
    )
    return ItemRead.model_validate(item)


@router.get(
    "",
    summary="List your items (admins: everyone's), filtered and sorted",
    responses=CACHED,
)
@cached(ITEMS_CACHE)
async def list_items(
    viewer: ItemsReader,
    session: SessionDep,
    page: Annotated[PageParams, Depends(page_params)],
    item_status: Annotated[ItemStatus | None, Query(alias="status")] = None,
    priority: Annotated[int | None, Query(ge=1, le=5)] = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=100, pattern=NO_NUL_PATTERN, description="Title contains"),
    ] = None,
    owner_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Admins only: one owner's items")
    ] = None,
    sort: ItemSort = ItemSort.created_desc,
) -> Page[ItemRead]:
    filters = ItemFilters(
        status=item_status, priority=priority, title_contains=q, owner_id=owner_id
    )
    items, total = await service.list_items(
        session=session, viewer=viewer, filters=filters, sort=sort, page=page
    )
    return Page[ItemRead](
        items=[ItemRead.model_validate(item) for item in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{item_id}", summary="Get one item", responses={**NOT_FOUND, **CACHED})
@cached(ITEMS_CACHE)
async def get_item(item_id: ItemId, viewer: ItemsReader, session: SessionDep) -> ItemRead:
    item = await service.get_visible_item(session=session, viewer=viewer, item_id=item_id)
    return ItemRead.model_validate(item)


@router.patch(
    "/{item_id}",
    summary="Change an item",
    responses=NOT_FOUND,
)
async def update_item(
    data: ItemUpdate,
    item: VisibleItem,
    session: SessionDep,
    cache: AnswerCacheDep,
    events: EventPublisherDep,
) -> ItemRead:
    updated = await service.update_item(
        session=session, cache=cache, events=events, item=item, data=data
    )
    return ItemRead.model_validate(updated)


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an item",
    responses=NOT_FOUND,
)
async def delete_item(
    item: VisibleItem, session: SessionDep, cache: AnswerCacheDep, events: EventPublisherDep
) -> None:
    await service.delete_item(session=session, cache=cache, events=events, item=item)
