from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import EMBEDDED_DATABASE_URL, Environment, Settings


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_defaults_run_on_the_embedded_database(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(monkeypatch)
    assert settings.environment is Environment.development
    assert settings.database.url == EMBEDDED_DATABASE_URL
    assert settings.should_auto_migrate


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgresql://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_database_url_picks_the_async_driver(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    settings = settings_from_env(monkeypatch, DATABASE_URL=given)
    assert settings.database.url == expected
    assert settings.should_auto_migrate == expected.startswith("sqlite")


def test_nested_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(
        monkeypatch,
        GLASSHOUSE_DATABASE__POOL_SIZE="12",
        GLASSHOUSE_AUTH__ACCESS_TOKEN_TTL_SECONDS="60",
        GLASSHOUSE_AUTO_MIGRATE="false",
    )
    assert settings.database.pool_size == 12
    assert settings.auth.access_token_ttl_seconds == 60
    assert not settings.should_auto_migrate


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("GLASSHOUSE_SERVICE_NAME=from-dotenv\n")
    assert Settings(_env_file=env_file).service_name == "from-dotenv"  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "secret", [None, "development-only-jwt-secret-never-use-in-production-0123456789ab", "short"]
)
def test_production_refuses_placeholder_or_weak_secret(
    monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    if secret is not None:
        monkeypatch.setenv("GLASSHOUSE_AUTH__JWT_SECRET", secret)
    with pytest.raises(ValidationError, match="GLASSHOUSE_AUTH__JWT_SECRET"):
        settings_from_env(monkeypatch, GLASSHOUSE_ENVIRONMENT="production")


def test_production_accepts_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(
        monkeypatch,
        GLASSHOUSE_ENVIRONMENT="production",
        GLASSHOUSE_AUTH__JWT_SECRET="q" * 32,
    )
    assert settings.environment is Environment.production
    # A secret never shows in a repr, so it cannot leak through a log line of the settings.
    assert "q" * 32 not in repr(settings)
