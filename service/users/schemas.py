from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    Strict,
    StringConstraints,
    field_validator,
)

from service.schemas import (
    DELIVERABLE_EMAIL_PATTERN,
    NO_NUL_PATTERN,
    NOT_BLANK_PATTERN,
    StrictInput,
)
from service.users.models import Role

# Never stripped: spaces at either end are part of a password.
Password = Annotated[
    str,
    StringConstraints(strip_whitespace=False),
    Field(min_length=8, max_length=128, pattern=NO_NUL_PATTERN, examples=["correct-horse-42"]),
]
FullName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=NOT_BLANK_PATTERN,
        description="Surrounding whitespace is removed; a name of whitespace only is refused.",
        examples=["Ada Lovelace"],
    ),
]
Email = Annotated[
    EmailStr,
    Field(
        max_length=320,
        description="Lower-cased. Addresses on special-use domains (RFC 6761: .test, .local, "
        ".localhost, .invalid, .onion, .arpa) or on a domain without a dot are refused.",
        json_schema_extra={"pattern": DELIVERABLE_EMAIL_PATTERN},
        examples=["ada@example.com"],
    ),
]


class _NormalizedEmail(StrictInput):
    @field_validator("email", mode="after", check_fields=False)
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value is not None else None


class UserCreate(_NormalizedEmail):
    email: Email
    password: Password
    full_name: FullName | None = None


class UserUpdateMe(_NormalizedEmail):
    not_nullable = ("email",)

    email: Email | None = None
    full_name: FullName | None = None


class UserAdminUpdate(StrictInput):
    not_nullable = ("role", "is_active")

    role: Role | None = None
    is_active: Annotated[bool, Strict()] | None = None
    full_name: FullName | None = None


class PasswordChange(StrictInput):
    current_password: Annotated[
        str,
        StringConstraints(strip_whitespace=False),
        Field(min_length=1, max_length=128, pattern=NO_NUL_PATTERN),
    ]
    new_password: Password


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    full_name: str | None
    role: Role
    is_active: bool
    created_at: datetime
