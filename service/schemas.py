"""Schema building blocks shared by every domain: strict input models and pagination."""

from typing import Annotated, ClassVar, Generic, Self, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PAGE_SIZE = 100
MAX_OFFSET = 100_000
MAX_ID = 2**63 - 1  # BIGINT: larger ids cannot exist, and would overflow the driver
NO_NUL_PATTERN = r"^[^\x00]*$"  # PostgreSQL text cannot hold U+0000


class StrictInput(BaseModel):
    """Request bodies refuse unknown fields: a typo in a field name is a 422, not a no-op."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # Fields that may be left out of a PATCH but never set to null (their columns are NOT NULL).
    not_nullable: ClassVar[tuple[str, ...]] = ()

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_nul_characters(cls, value: object) -> object:
        # PostgreSQL cannot store U+0000 in text; refused here it is a 422, not a 500.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _refuse_explicit_nulls(self) -> Self:
        for name in self.not_nullable:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} may be omitted but not null")
        return self


class PageParams(BaseModel):
    limit: int
    offset: int


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip.")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: Annotated[int, Field(description="Rows matching the filters, across all pages.")]
    limit: int
    offset: int
