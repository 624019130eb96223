from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from service.items.models import ItemStatus
from service.schemas import NO_NUL_PATTERN, NOT_BLANK_PATTERN, StrictInput, whole_number

Title = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=NOT_BLANK_PATTERN,
        description="Surrounding whitespace is removed; a title of whitespace only is refused.",
        examples=["Water the ferns"],
    ),
]
Description = Annotated[
    str,
    Field(max_length=2000, pattern=NO_NUL_PATTERN, examples=["Twice a week, not on Sundays."]),
]
Priority = Annotated[
    int,
    Field(ge=1, le=5, description="1 (highest) to 5 (lowest)."),
    BeforeValidator(whole_number),
]


class ItemCreate(StrictInput):
    title: Title
    description: Description | None = None
    status: ItemStatus = ItemStatus.todo
    priority: Priority = 3


class ItemUpdate(StrictInput):
    not_nullable = ("title", "status", "priority")

    title: Title | None = None
    description: Description | None = None
    status: ItemStatus | None = None
    priority: Priority | None = None


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int
    title: str
    description: str | None
    status: ItemStatus
    priority: int
    created_at: datetime
    updated_at: datetime


class ItemSort(StrEnum):
    """The only orderings offered: each is backed by a column, none lets a client pick SQL."""

    created_asc = "created_at"
    created_desc = "-created_at"
    title_asc = "title"
    title_desc = "-title"
    priority_asc = "priority"
    priority_desc = "-priority"
