"""The one typed Settings object: every knob the service has, read from the environment.

Variables use the ``GLASSHOUSE_`` prefix and ``__`` for nested groups, e.g.
``GLASSHOUSE_DATABASE__POOL_SIZE=10``. A ``.env`` file in the working directory is read too.
``DATABASE_URL`` is also accepted without prefix, because every platform sets it that way.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Self

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# 64 bytes: long enough for every HS* algorithm, so PyJWT never warns about key length.
DEVELOPMENT_JWT_SECRET = "development-only-jwt-secret-never-use-in-production-0123456789ab"  # noqa: S105
EMBEDDED_DATABASE_URL = "sqlite+aiosqlite:///./glasshouse.db"


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class DatabaseSettings(BaseModel):
    url: Annotated[
        str,
        Field(description="SQLAlchemy async URL. Unset: a local SQLite file (embedded default)."),
    ] = EMBEDDED_DATABASE_URL
    pool_size: Annotated[int, Field(ge=1, le=100, description="Connections kept open.")] = 5
    max_overflow: Annotated[
        int, Field(ge=0, le=100, description="Extra connections opened under bursts.")
    ] = 10
    pool_timeout_seconds: Annotated[
        float, Field(gt=0, description="Wait for a free pooled connection before failing.")
    ] = 5.0
    pool_recycle_seconds: Annotated[
        int, Field(ge=-1, description="Reconnect connections older than this (-1: never).")
    ] = 1800
    pool_pre_ping: Annotated[
        bool, Field(description="Test a connection before handing it out (survives DB restarts).")
    ] = True
    connect_timeout_seconds: Annotated[
        float, Field(gt=0, description="TCP connect timeout to PostgreSQL.")
    ] = 5.0
    statement_timeout_ms: Annotated[
        int, Field(ge=0, description="PostgreSQL statement_timeout for every session (0: none).")
    ] = 10_000
    echo: Annotated[bool, Field(description="Log every SQL statement (debugging only).")] = False

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class AuthSettings(BaseModel):
    jwt_secret: Annotated[
        SecretStr,
        Field(
            description="HMAC key for access tokens; production needs a random 32+ bytes (HS256)."
        ),
    ] = SecretStr(DEVELOPMENT_JWT_SECRET)
    jwt_algorithm: Annotated[
        str, Field(pattern=r"^HS(256|384|512)$", description="HMAC algorithm pinned on decode.")
    ] = "HS256"
    jwt_issuer: Annotated[str, Field(description="`iss` claim written and required.")] = (
        "glasshouse"
    )
    access_token_ttl_seconds: Annotated[
        int, Field(ge=30, le=86_400, description="Lifetime of an access token.")
    ] = 900
    refresh_token_ttl_seconds: Annotated[
        int, Field(ge=60, description="Lifetime of a refresh token (each use rotates it).")
    ] = 14 * 86_400
    argon2_time_cost: Annotated[int, Field(ge=1, description="argon2id iterations.")] = 3
    argon2_memory_cost_kib: Annotated[int, Field(ge=8, description="argon2id memory in KiB.")] = (
        65_536
    )
    argon2_parallelism: Annotated[int, Field(ge=1, description="argon2id lanes.")] = 4
    bootstrap_admin_email: Annotated[
        str | None, Field(description="Create (or promote) this admin at startup if set.")
    ] = None
    bootstrap_admin_password: Annotated[
        SecretStr | None, Field(description="Password for a bootstrapped admin that is created.")
    ] = None


class HttpSettings(BaseModel):
    host: Annotated[str, Field(description="Address `python -m service` binds.")] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65_535, description="Port `python -m service` binds.")] = (
        8000
    )
    max_body_bytes: Annotated[
        int, Field(ge=1024, description="Larger request bodies are refused with 413.")
    ] = 1_048_576
    cors_origins: Annotated[
        list[str], Field(description="Browser origins allowed by CORS (JSON list).")
    ] = []


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GLASSHOUSE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    environment: Annotated[Environment, Field(description="development, test or production.")] = (
        Environment.development
    )
    service_name: Annotated[str, Field(description="Name used in logs, metrics and traces.")] = (
        "glasshouse"
    )
    database_url: Annotated[
        str | None,
        Field(
            validation_alias=AliasChoices("DATABASE_URL", "GLASSHOUSE_DATABASE_URL"),
            description="Shortcut for database.url, as platforms set it.",
        ),
    ] = None
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    http: HttpSettings = HttpSettings()
    auto_migrate: Annotated[
        bool | None,
        Field(description="Apply migrations at startup. Unset: only on the embedded SQLite."),
    ] = None

    @model_validator(mode="after")
    def _apply_database_url_and_refuse_placeholder_secrets(self) -> Self:
        if self.database_url:
            url = _async_driver_url(self.database_url)
            object.__setattr__(self, "database", self.database.model_copy(update={"url": url}))
        if self.environment is Environment.production:
            secret = self.auth.jwt_secret.get_secret_value()
            # RFC 7518: an HMAC key at least as long as the hash output (HS256: 32 bytes).
            min_length = int(self.auth.jwt_algorithm.removeprefix("HS")) // 8
            if secret == DEVELOPMENT_JWT_SECRET or len(secret.encode()) < min_length:
                raise ValueError(
                    "GLASSHOUSE_AUTH__JWT_SECRET must be set to a random value of at least "
                    f"{min_length} bytes in production (generate one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
        return self

    @property
    def should_auto_migrate(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.database.is_sqlite


def _async_driver_url(url: str) -> str:
    """Accept the plain URLs platforms hand out and pick the async driver for them."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url.removeprefix(plain)
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
