from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from service.auth.scopes import Scope
from service.schemas import NOT_BLANK_PATTERN, StrictInput, whole_number

Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=NOT_BLANK_PATTERN,
        description="Surrounding whitespace is removed; a name of whitespace only is refused.",
        examples=["deploy-bot"],
    ),
]
MAX_KEY_LIFETIME_SECONDS = 5 * 366 * 86_400
KeyLifetime = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_KEY_LIFETIME_SECONDS,
        description="Seconds from now until the key stops working; left out: never.",
        examples=[90 * 86_400],
    ),
    BeforeValidator(whole_number),
]
GraceSeconds = Annotated[
    int,
    Field(ge=0, le=30 * 86_400, description="How long the old key keeps working (default: 1 day)."),
    BeforeValidator(whole_number),
]


class ServiceAccountCreate(StrictInput):
    name: Name


class ServiceAccountRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int
    name: str
    created_at: datetime


class ApiKeyCreate(StrictInput):
    name: Name
    scopes: Annotated[
        list[Scope],
        Field(
            min_length=1,
            max_length=len(Scope),
            description="What the key may do, each scope once. `admin` needs an admin owner.",
            examples=[["items:read"]],
            json_schema_extra={"uniqueItems": True},
        ),
    ]
    expires_in_seconds: KeyLifetime | None = None

    @field_validator("scopes")
    @classmethod
    def distinct(cls, scopes: list[Scope]) -> list[Scope]:
        if len(set(scopes)) != len(scopes):
            raise ValueError("each scope once")
        return scopes


class ApiKeyRotate(StrictInput):
    grace_seconds: GraceSeconds | None = None


class ApiKeyRead(BaseModel):
    """A key as it is listed: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    service_account_id: int
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="Updated at most about once a minute.")
    revoked_at: datetime | None
    rotated_from_id: str | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")
