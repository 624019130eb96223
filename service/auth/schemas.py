from typing import Annotated, Literal

from pydantic import BaseModel, Field

from service.schemas import StrictInput


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth2 type name)
    expires_in: Annotated[int, Field(description="Seconds until the access token expires.")]
    refresh_token: Annotated[
        str, Field(description="Single use: exchange it at /auth/refresh for a new pair.")
    ]


class RefreshRequest(StrictInput):
    # The token's own alphabet (URL-safe base64): a value with spaces, which would be stripped
    # below the minimum length, is refused by the schema too, so clients and fuzzers agree.
    refresh_token: Annotated[str, Field(min_length=16, max_length=256, pattern=r"^[A-Za-z0-9_-]+$")]


class LoginForm(BaseModel):
    """The OAuth2 password grant's form (RFC 6749, section 4.3.2), as Swagger's Authorize
    sends it. A form model rather than FastAPI's OAuth2PasswordRequestForm class, which as a
    plain class dependency is built in a worker thread on every login."""

    grant_type: Annotated[str | None, Field(pattern="^password$")] = None
    username: Annotated[str, Field(description="The account's email.")]
    password: Annotated[str, Field(json_schema_extra={"format": "password"})]
    scope: str = ""


class StreamTicket(BaseModel):
    ticket: str = Field(description="Pass as ?ticket= to an event stream, once.")
    expires_in: int = Field(description="Seconds the ticket stays valid.")
