"""The list endpoint's query plans on PostgreSQL: every filter and sort a user can ask for, and
the count behind its ``total``, reads the index meant for it (docs/performance.md, "The list
endpoint: indexes and plans").

100k items over 1000 owners: one owner with a tenth of them, the rest about 90 each. The SQL is
the one service.items.service.list_items sends, captured on its way to the driver and explained
with the same parameters; no planner setting is changed."""

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from service.auth.principal import Principal
from service.items.models import ItemStatus
from service.items.schemas import ItemSort
from service.items.service import ItemFilters, list_items
from service.schemas import PageParams
from service.users.models import Role
from tests.conftest import unavailable
from tests.processes import migrated_postgres_database

OWNERS = 1000
ITEMS = 100_000
HEAVY_OWNER = 1  # every tenth item
TYPICAL_OWNER = 500

BY_OWNER = "ix_items_owner_id_created_at_id"
BY_STATUS = "ix_items_owner_id_status_created_at_id"
BY_PRIORITY = "ix_items_owner_id_priority_created_at_id"

SEED = [
    """INSERT INTO users (id, email, hashed_password, role, is_active, created_at, updated_at)
    SELECT n, 'owner' || n || '@example.com', '-', 'user', true, now(), now()
    FROM generate_series(1, CAST(:owners AS integer)) AS n""",
    """INSERT INTO items (owner_id, title, status, priority, created_at, updated_at)
    SELECT CASE WHEN n % 10 = 0 THEN CAST(:heavy AS integer)
            ELSE 2 + n % (CAST(:owners AS integer) - 1) END,
        'item ' || md5(n::text),
        (ARRAY['todo', 'doing', 'done'])[1 + (n / 7) % 3],
        1 + (n / 11) % 5,
        timestamptz '2026-01-01 00:00:00+00' + n * interval '1 minute',
        timestamptz '2026-01-01 00:00:00+00' + n * interval '1 minute'
    FROM generate_series(1, CAST(:items AS integer)) AS n""",
]
SIZES = {"owners": OWNERS, "items": ITEMS, "heavy": HEAVY_OWNER}


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(migrated_postgres_database())
        except OSError as exc:
            unavailable(f"PostgreSQL unreachable: {exc}")
        yield url


@pytest.fixture(scope="module")
async def seeded(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(postgres_url)
    async with engine.begin() as connection:
        for statement in SEED:
            sizes = {name: value for name, value in SIZES.items() if f":{name}" in statement}
            await connection.execute(text(statement), sizes)
        # Statistics only: without VACUUM's visibility map a count reads the index, then the
        # rows it points to (docs/performance.md), and must still not read the table.
        await connection.execute(text("ANALYZE users, items"))
    yield engine
    await engine.dispose()


async def sent_sql(
    engine: AsyncEngine, owner_id: int, filters: ItemFilters, sort: ItemSort
) -> list[tuple[str, Any]]:
    """The statements list_items sends for one request, with their parameters: count, page."""
    sent: list[tuple[str, Any]] = []

    def record(_: Connection, __: Any, statement: str, parameters: Any, *___: Any) -> None:
        sent.append((statement, parameters))

    viewer = Principal(id=owner_id, role=Role.user, session_id="plans")
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with AsyncSession(engine) as session:
            await list_items(
                session=session,
                viewer=viewer,
                filters=filters,
                sort=sort,
                page=PageParams(limit=20, offset=0),
            )
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    return sent


async def plan_nodes(engine: AsyncEngine, statement: str, parameters: Any) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        plan = result.scalar_one()
    [root] = json.loads(plan) if isinstance(plan, str) else plan
    nodes, pending = [], [root["Plan"]]
    while pending:
        node = pending.pop()
        nodes.append(node)
        pending.extend(node.get("Plans", []))
    return nodes


async def assert_plans(
    engine: AsyncEngine,
    owner_id: int,
    filters: ItemFilters,
    sort: ItemSort,
    *,
    count_index: set[str],
    page_index: set[str],
    in_order: bool = False,
) -> None:
    """Count and page each read one of the given indexes, never the whole table; ``in_order``:
    the page comes in the index's order, unsorted, so the scan stops after its rows."""
    [count, page] = await sent_sql(engine, owner_id, filters, sort)
    assert "count(" in count[0]
    assert "ORDER BY" in page[0]
    for (statement, parameters), indexes in ((count, count_index), (page, page_index)):
        nodes = await plan_nodes(engine, statement, parameters)
        summary = [(node["Node Type"], node.get("Index Name")) for node in nodes]
        assert indexes & {node.get("Index Name") for node in nodes}, (statement, summary)
        assert "Seq Scan" not in {node["Node Type"] for node in nodes}, (statement, summary)
        if in_order and statement == page[0]:
            assert not {"Sort", "Incremental Sort"} & {n["Node Type"] for n in nodes}, summary


FILTERS = {
    "owner": ItemFilters(),
    "status": ItemFilters(status=ItemStatus.doing),
    "priority": ItemFilters(priority=2),
    "q": ItemFilters(title_contains="a1"),
}
BY_FILTER = {"owner": BY_OWNER, "status": BY_STATUS, "priority": BY_PRIORITY, "q": BY_OWNER}
# Each of these indexes holds all an owner's rows: any of them bounds a scan to the owner.
OWNERS_ROWS = {BY_OWNER, BY_STATUS, BY_PRIORITY}
CREATED = (ItemSort.created_asc, ItemSort.created_desc)
BY_PRIORITY_SORTS = (ItemSort.priority_asc, ItemSort.priority_desc)
# The pages an index returns in their order: the scan stops after the page, however many rows.
IN_ORDER = {
    **{("owner", sort): BY_OWNER for sort in CREATED},
    **{("owner", sort): BY_PRIORITY for sort in BY_PRIORITY_SORTS},
    **{("status", sort): BY_STATUS for sort in CREATED},
    **{("priority", sort): BY_PRIORITY for sort in CREATED + BY_PRIORITY_SORTS},
}
# Through the heaviest owner's rows the title search, too, walks the index in created order and
# stops at a full page; through a typical owner's it reads them all and sorts the few matches.
HEAVY_IN_ORDER = {**IN_ORDER, **{("q", sort): BY_OWNER for sort in CREATED}}


@pytest.mark.parametrize("sort", list(ItemSort), ids=[s.name for s in ItemSort])
@pytest.mark.parametrize("filtered", list(FILTERS))
async def test_a_typical_owners_list_and_total_stay_in_the_owners_rows(
    seeded: AsyncEngine, filtered: str, sort: ItemSort
) -> None:
    """About 90 rows: where no index returns the page in order, any of the owner's indexes
    reads them at the same cost, and the planner may take either."""
    narrowing = filtered in {"status", "priority"}
    await assert_plans(
        seeded,
        TYPICAL_OWNER,
        FILTERS[filtered],
        sort,
        count_index={BY_FILTER[filtered]} if narrowing else OWNERS_ROWS,
        page_index={IN_ORDER[filtered, sort]} if (filtered, sort) in IN_ORDER else OWNERS_ROWS,
    )


@pytest.mark.parametrize(
    ("filtered", "sort"),
    list(HEAVY_IN_ORDER),
    ids=[f"{filtered}-{sort.name}" for filtered, sort in HEAVY_IN_ORDER],
)
async def test_the_heaviest_owners_pages_are_read_in_index_order(
    seeded: AsyncEngine, filtered: str, sort: ItemSort
) -> None:
    await assert_plans(
        seeded,
        HEAVY_OWNER,
        FILTERS[filtered],
        sort,
        count_index={BY_FILTER[filtered]},
        page_index={HEAVY_IN_ORDER[filtered, sort]},
        in_order=True,
    )
