"""The event log: record an event in the writer's transaction, read it back for a replay."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.base import utc_now
from service.events.models import EventSequence, ItemEvent
from service.events.schemas import ItemEventKind

# Written with Core statements on the tables: an event is written once and never loaded back
# into the writer's session, so the ORM's bookkeeping would be spent on every write for nothing.
_EVENTS = cast(Table, ItemEvent.__table__)
_SEQUENCES = cast(Table, EventSequence.__table__)

# PostgreSQL numbers and stores an item write's event in one statement (the counter's UPDATE
# as a data-modifying CTE): one statement fewer in every write's transaction. It inserts
# nothing when the owner has no counter yet, and the two-step path below creates it.
_BUMPED = (
    update(_SEQUENCES)
    .where(_SEQUENCES.c.owner_id == bindparam("event_owner_id"))
    .values(last_seq=_SEQUENCES.c.last_seq + 1)
    .returning(_SEQUENCES.c.last_seq)
    .cte("bumped")
)
_INSERT_NEXT_EVENT = (
    insert(_EVENTS)
    .from_select(
        ["owner_id", "seq", "kind", "item_id", "item", "created_at"],
        select(
            bindparam("event_owner_id", type_=_EVENTS.c.owner_id.type),
            _BUMPED.c.last_seq,
            bindparam("event_kind", type_=_EVENTS.c.kind.type),
            bindparam("event_item_id", type_=_EVENTS.c.item_id.type),
            bindparam("event_item", type_=_EVENTS.c.item.type),
            bindparam("event_created_at", type_=_EVENTS.c.created_at.type),
        ),
    )
    .returning(_EVENTS.c.seq)
)


async def record_item_event(
    *,
    session: AsyncSession,
    kind: ItemEventKind,
    owner_id: int,
    item_id: int,
    item: dict[str, Any] | None,
) -> ItemEvent:
    """Adds the event to the caller's transaction: it exists exactly when the change does."""
    [event] = await record_item_events(
        session=session, kind=kind, owner_id=owner_id, items=[(item_id, item)]
    )
    return event


async def record_item_events(
    *,
    session: AsyncSession,
    kind: ItemEventKind,
    owner_id: int,
    items: Sequence[tuple[int, dict[str, Any] | None]],
) -> list[ItemEvent]:
    """One event per (item id, item state), numbered in one step (an import's batch)."""
    if not items:
        return []
    now = utc_now()
    rows: list[dict[str, Any]] = [
        {
            "owner_id": owner_id,
            "kind": kind.value,
            "item_id": item_id,
            "item": item,
            "created_at": now,
        }
        for item_id, item in items
    ]
    if len(rows) == 1 and session.bind.dialect.name == "postgresql":
        # Its parameters are not named as columns: those would be taken for the UPDATE's SET.
        parameters = {f"event_{name}": value for name, value in rows[0].items()}
        seq = await session.scalar(_INSERT_NEXT_EVENT, parameters)
        if seq is not None:
            return [ItemEvent(**rows[0], seq=seq)]
    first = await _take_seqs(session, owner_id, len(rows))
    for n, row in enumerate(rows):
        row["seq"] = first + n
    await session.execute(insert(_EVENTS), rows)
    return [ItemEvent(**row) for row in rows]


async def _take_seqs(session: AsyncSession, owner_id: int, count: int) -> int:
    """The first of ``count`` new event numbers for the owner."""
    bump = (
        update(_SEQUENCES)
        .where(_SEQUENCES.c.owner_id == owner_id)
        .values(last_seq=_SEQUENCES.c.last_seq + count)
        .returning(_SEQUENCES.c.last_seq)
    )
    last = await session.scalar(bump)
    if last is None:
        # The owner's first event creates the counter. An upsert, as two first writes can
        # race; not the everyday statement, because SQLAlchemy compiles the dialects' ON
        # CONFLICT statements anew each time (they have no cache key).
        dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
        create = (
            dialect.insert(_SEQUENCES)
            .values(owner_id=owner_id, last_seq=count)
            .on_conflict_do_update(
                index_elements=[_SEQUENCES.c.owner_id],
                set_={"last_seq": _SEQUENCES.c.last_seq + count},
            )
            .returning(_SEQUENCES.c.last_seq)
        )
        last = await session.scalar(create)
    return int(last) - count + 1


async def events_after(
    *, session: AsyncSession, owner_id: int, after: int, limit: int
) -> list[ItemEvent]:
    rows = await session.scalars(
        select(ItemEvent)
        .where(ItemEvent.owner_id == owner_id, ItemEvent.seq > after)
        .order_by(ItemEvent.seq)
        .limit(limit)
    )
    return list(rows)


async def last_seqs(*, session: AsyncSession, owner_ids: Iterable[int]) -> dict[int, int]:
    """Each owner's last event number (0: none yet)."""
    owners = list(owner_ids)
    rows = await session.execute(
        select(EventSequence.owner_id, EventSequence.last_seq).where(
            EventSequence.owner_id.in_(owners)
        )
    )
    found = {int(owner): int(seq) for owner, seq in rows}
    return {owner: found.get(owner, 0) for owner in owners}


async def forget_owner(*, session: AsyncSession, owner_id: int) -> None:
    """A deleted account's events and counter (in the deletion's transaction)."""
    await session.execute(delete(ItemEvent).where(ItemEvent.owner_id == owner_id))
    await session.execute(delete(EventSequence).where(EventSequence.owner_id == owner_id))


async def delete_events_before(*, session: AsyncSession, cutoff: datetime) -> int:
    result = await session.execute(delete(ItemEvent).where(ItemEvent.created_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
