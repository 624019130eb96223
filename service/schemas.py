"""Schema building blocks shared by every domain: strict input models and pagination."""

from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PAGE_SIZE = 100
MAX_OFFSET = 100_000
MAX_ID = 2**63 - 1  # BIGINT: larger ids cannot exist, and would overflow the driver
MAX_JSON_INTEGER = 2**53 - 1  # the largest integer every JSON parser keeps exact (I-JSON)
NO_NUL_PATTERN = r"^[^\x00]*$"  # PostgreSQL text cannot hold U+0000
# What str.strip() removes (str.isspace()), spelled so that JSON Schema's regex dialect and
# pydantic's agree.
_WHITESPACE = r"\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# No U+0000, and something besides whitespace: input is stripped, and a name left empty is
# refused. Saying so in the schema keeps schema-driven clients and fuzzers in agreement.
NOT_BLANK_PATTERN = rf"^[^\x00]*[^\x00{_WHITESPACE}][^\x00]*$"
# email-validator refuses special-use domains (RFC 6761: .test, .localhost, ...) and domains
# without a dot; the schema says the same in a pattern. Letters in both cases: no regex flags.
_SPECIAL_USE = "|".join(
    "".join(f"[{c.lower()}{c.upper()}]" for c in name)
    for name in ("arpa", "invalid", "local", "localhost", "onion", "test")
)
DELIVERABLE_EMAIL_PATTERN = rf"^[^@]+@(?![^@]*\.(?:{_SPECIAL_USE})\.?$)[^@]+\.[^@]+$"


def whole_number(value: object) -> object:
    """Numbers only: 2 and 2.0 are 2; "2", true and 2.5 are refused (lax mode took "2" and
    true, strict mode refused 2.0, which JSON Schema calls an integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


def _not_nullable_in_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The documented schema of a not_nullable field has no ``null``: it may be left out."""
    for name in getattr(model, "not_nullable", ()):
        field = schema.get("properties", {}).get(name, {})
        options = [o for o in field.get("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1 and "anyOf" in field:
            del field["anyOf"]
            field.update(options[0])


class StrictInput(BaseModel):
    """Request bodies refuse unknown fields: a typo in a field name is a 422, not a no-op."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, json_schema_extra=_not_nullable_in_schema
    )

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
