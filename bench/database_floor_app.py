"""The database floor: what FastAPI and SQLAlchemy alone cost on the benchmark's uncached read
and create, with the service's engine, pool and sessions and nothing else (no middleware, no
auth, no cache, no event log). Run by bench/run.py on the "off" variant's database; whatever
the service adds to a request comes on top of this, so it bounds how far the service can go
while it reads and writes through SQLAlchemy's async session."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException

from service.db.models import Item  # every table, so that the item's foreign key resolves
from service.db.session import create_engine, create_read_sessionmaker, create_sessionmaker
from service.items.schemas import ItemCreate, ItemRead
from service.settings import get_settings

settings = get_settings().database
engine = create_engine(settings)
read_session = create_read_sessionmaker(engine, settings)
write_session = create_sessionmaker(engine)
# Every item created here belongs to the benchmark's user, as the service's creates do.
OWNER_ID = int(os.environ["BENCH_FLOOR_OWNER_ID"])


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(
    lifespan=lifespan,
    telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/api/v1/items/{item_id}")
async def get_item(item_id: int) -> ItemRead:
    async with read_session() as session:
        item = await session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return ItemRead.model_validate(item)


@app.post("/api/v1/items", status_code=201)
async def create_item(data: ItemCreate) -> ItemRead:
    async with write_session() as session:
        item = Item(owner_id=OWNER_ID, **data.model_dump())
        session.add(item)
        await session.commit()
    return ItemRead.model_validate(item)
