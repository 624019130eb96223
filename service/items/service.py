"""Items and who may see them: owners see their own, admins see all."""

from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import UnaryExpression

from service.auth.principal import Principal
from service.cache.declared import AnswerCache, CacheNamespace
from service.errors import NotFoundError
from service.events.fanout import EventPublisher
from service.events.models import ItemEvent
from service.events.schemas import ItemEventKind
from service.events.service import record_item_event
from service.items.metrics import ITEMS_CREATED, ITEMS_DELETED
from service.items.models import Item, ItemStatus
from service.items.schemas import ItemCreate, ItemRead, ItemSort, ItemUpdate
from service.schemas import PageParams

log = structlog.get_logger(__name__)

# The item routes' cached answers, per owner: every write below invalidates its owner's.
ITEMS_CACHE = CacheNamespace("items")

_Query = TypeVar("_Query", bound=Select[Any])

# Priority ties in created order (as ids are): the priority index then returns a page in order.
_ORDERINGS: dict[ItemSort, tuple[UnaryExpression[Any], ...]] = {
    ItemSort.created_asc: (Item.created_at.asc(), Item.id.asc()),
    ItemSort.created_desc: (Item.created_at.desc(), Item.id.desc()),
    ItemSort.title_asc: (Item.title.asc(), Item.id.asc()),
    ItemSort.title_desc: (Item.title.desc(), Item.id.desc()),
    ItemSort.priority_asc: (Item.priority.asc(), Item.created_at.asc(), Item.id.asc()),
    ItemSort.priority_desc: (Item.priority.desc(), Item.created_at.desc(), Item.id.desc()),
}


@dataclass(frozen=True, slots=True)
class ItemFilters:
    status: ItemStatus | None = None
    priority: int | None = None
    title_contains: str | None = None
    owner_id: int | None = None


async def create_item(
    *,
    session: AsyncSession,
    cache: AnswerCache,
    events: EventPublisher,
    owner: Principal,
    data: ItemCreate,
) -> Item:
    item = Item(owner_id=owner.id, **data.model_dump())
    session.add(item)
    await session.flush()
    event = await _record(session, ItemEventKind.created, item)
    await session.commit()
    # After the commit: a reader that sees the new version also sees the new row.
    await cache.invalidate(ITEMS_CACHE, owner.id)
    await events.item_changed(event)
    log.info("item_created", item_id=item.id, owner_id=owner.id)
    ITEMS_CREATED.inc()
    return item


async def get_visible_item(*, session: AsyncSession, viewer: Principal, item_id: int) -> Item:
    item = await session.get(Item, item_id)
    # Someone else's item answers exactly like a missing one: existence is not leaked.
    if item is None or (item.owner_id != viewer.id and not viewer.is_admin):
        raise NotFoundError("No item with that id.")
    return item


async def list_items(
    *,
    session: AsyncSession,
    viewer: Principal,
    filters: ItemFilters,
    sort: ItemSort,
    page: PageParams,
) -> tuple[list[Item], int]:
    query = _filtered(select(Item), viewer=viewer, filters=filters)
    total = await session.scalar(
        _filtered(select(func.count()).select_from(Item), viewer=viewer, filters=filters)
    )
    items = await session.scalars(
        query.order_by(*_ORDERINGS[sort]).limit(page.limit).offset(page.offset)
    )
    return list(items), total or 0


async def update_item(
    *,
    session: AsyncSession,
    cache: AnswerCache,
    events: EventPublisher,
    item: Item,
    data: ItemUpdate,
) -> Item:
    for field, value in data.model_dump(exclude_unset=True).items():
        setattr(item, field, value)
    await session.flush()
    event = await _record(session, ItemEventKind.updated, item)
    await session.commit()
    await cache.invalidate(ITEMS_CACHE, item.owner_id)
    await events.item_changed(event)
    log.info("item_updated", item_id=item.id)
    return item


async def delete_item(
    *, session: AsyncSession, cache: AnswerCache, events: EventPublisher, item: Item
) -> None:
    await session.delete(item)
    await session.flush()
    event = await _record(session, ItemEventKind.deleted, item)
    await session.commit()
    await cache.invalidate(ITEMS_CACHE, item.owner_id)
    await events.item_changed(event)
    log.info("item_deleted", item_id=item.id)
    ITEMS_DELETED.inc()


async def _record(session: AsyncSession, kind: ItemEventKind, item: Item) -> ItemEvent:
    """The change's event, in its transaction (the outbox): committed with it, or not at all.
    Live streams get it after the commit (EventPublisher), or read it from the log."""
    state = (
        None
        if kind is ItemEventKind.deleted
        else ItemRead.model_validate(item).model_dump(mode="json")
    )
    return await record_item_event(
        session=session, kind=kind, owner_id=item.owner_id, item_id=item.id, item=state
    )


async def count_visible_items(
    *, session: AsyncSession, viewer: Principal, filters: ItemFilters
) -> int:
    total = await session.scalar(
        _filtered(select(func.count()).select_from(Item), viewer=viewer, filters=filters)
    )
    return total or 0


def visible_items(
    *, viewer: Principal, filters: ItemFilters, sort: ItemSort
) -> Select[tuple[Item]]:
    """Every item the viewer may see that passes the filters, in the sort's order (exports)."""
    return _filtered(select(Item), viewer=viewer, filters=filters).order_by(*_ORDERINGS[sort])


def _filtered(query: _Query, *, viewer: Principal, filters: ItemFilters) -> _Query:
    if not viewer.is_admin:
        query = query.where(Item.owner_id == viewer.id)
    elif filters.owner_id is not None:
        query = query.where(Item.owner_id == filters.owner_id)
    if filters.status is not None:
        query = query.where(Item.status == filters.status)
    if filters.priority is not None:
        query = query.where(Item.priority == filters.priority)
    if filters.title_contains:
        query = query.where(Item.title.icontains(filters.title_contains, autoescape=True))
    return query
