"""The whole service for a load run or a fuzzing run: gunicorn with several workers on a fresh
PostgreSQL database migrated with alembic, and the shared Redis under a key prefix of its own.
Everything it starts it stops; the database is dropped and the Redis keys deleted afterwards.

Runs in the app's environment (it reuses the end-to-end helpers in tests/processes.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from service.settings import AuthSettings
from tests.conftest import REDIS_URL
from tests.processes import Gunicorn, migrated_postgres_database, running_gunicorn


def production_hashing() -> dict[str, str]:
    """The argon2 parameters the service ships with (the test helpers use cheap ones)."""
    defaults = AuthSettings()
    return {
        "GLASSHOUSE_AUTH__ARGON2_TIME_COST": str(defaults.argon2_time_cost),
        "GLASSHOUSE_AUTH__ARGON2_MEMORY_COST_KIB": str(defaults.argon2_memory_cost_kib),
        "GLASSHOUSE_AUTH__ARGON2_PARALLELISM": str(defaults.argon2_parallelism),
    }


@contextmanager
def running_service(
    workdir: Path, *, workers: int, production_hashes: bool = True, **settings: str
) -> Iterator[Gunicorn]:
    prefix = f"gh-load-{uuid.uuid4().hex[:12]}"
    hashing = production_hashing() if production_hashes else {}
    try:
        with (
            migrated_postgres_database() as database_url,
            running_gunicorn(
                database_url,
                workdir,
                workers=workers,
                REDIS_URL=REDIS_URL,
                GLASSHOUSE_CACHE__KEY_PREFIX=prefix,
                **{**hashing, **settings},
            ) as service,
        ):
            yield service
    finally:
        delete_redis_keys(prefix)


def delete_redis_keys(prefix: str) -> int:
    """Deletes what a run left in the shared Redis (versions and counters have no TTL)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


def metric_samples(metrics_text: str, name: str) -> dict[str, float]:
    """``name``'s samples from a Prometheus exposition, keyed by their label text."""
    samples: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name) :].rpartition(" ")
            samples[labels.strip()] = float(value)
    return samples
