from typing import Annotated, Literal

from pydantic import BaseModel, Field

from service.schemas import NO_NUL_PATTERN, StrictInput


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth2 type name)
    expires_in: Annotated[int, Field(description="Seconds until the access token expires.")]
    refresh_token: Annotated[
        str, Field(description="Single use: exchange it at /auth/refresh for a new pair.")
    ]


class RefreshRequest(StrictInput):
    refresh_token: Annotated[str, Field(min_length=16, max_length=256, pattern=NO_NUL_PATTERN)]
