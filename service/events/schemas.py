from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, Field

from service.events.models import ItemEvent


class ItemEventKind(StrEnum):
    created = "item.created"
    updated = "item.updated"
    deleted = "item.deleted"


class ItemEventRead(BaseModel):
    """One item event, as a WebSocket message and as an SSE event's data."""

    id: int = Field(description="The item owner's event number: increasing, one by one.")
    type: ItemEventKind
    owner_id: int
    item_id: int
    item: dict[str, Any] | None = Field(
        description="The item as GET /api/v1/items/{id} answers it; null for item.deleted."
    )
    at: datetime


def encode(event: ItemEvent) -> bytes:
    """The wire form, built once per event and sent as is to every subscriber."""
    return orjson.dumps(
        {
            "id": event.seq,
            "type": event.kind,
            "owner_id": event.owner_id,
            "item_id": event.item_id,
            "item": event.item,
            "at": event.created_at,
        }
    )
