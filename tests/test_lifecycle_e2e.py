"""gunicorn end to end with Redis: the cache stays correct across two workers, and a SIGTERM
drains without dropping a request."""

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS_URL
from tests.processes import Gunicorn, migrated_postgres_database, running_gunicorn

READS_PER_CHECK = 12


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


def redis_settings() -> dict[str, str]:
    return {"REDIS_URL": REDIS_URL, "GLASSHOUSE_CACHE__KEY_PREFIX": f"gh-e2e-{uuid.uuid4().hex}"}


def read_everywhere(service: Gunicorn, path: str, headers: dict[str, str]) -> list[httpx.Response]:
    """New connections each time, so both workers answer some of the reads."""
    return [httpx.get(f"{service.url}{path}", headers=headers) for _ in range(READS_PER_CHECK)]


def test_writes_invalidate_on_every_worker(database_url: str, tmp_path: Path) -> None:
    with running_gunicorn(database_url, tmp_path, **redis_settings()) as service:
        headers = service.new_account_headers()
        items = f"{service.url}/api/v1/items"
        item = httpx.post(items, json={"title": "v1"}, headers=headers).json()
        detail = f"/api/v1/items/{item['id']}"
        assert {r.json()["title"] for r in read_everywhere(service, detail, headers)} == {"v1"}
        assert {r.json()["total"] for r in read_everywhere(service, "/api/v1/items", headers)} == {
            1
        }

        httpx.post(items, json={"title": "second"}, headers=headers)
        assert {r.json()["total"] for r in read_everywhere(service, "/api/v1/items", headers)} == {
            2
        }

        for version in ("v2", "v3"):
            httpx.patch(f"{service.url}{detail}", json={"title": version}, headers=headers)
            titles = {r.json()["title"] for r in read_everywhere(service, detail, headers)}
            assert titles == {version}

        httpx.delete(f"{service.url}{detail}", headers=headers)
        assert {r.status_code for r in read_everywhere(service, detail, headers)} == {404}
        assert {r.json()["total"] for r in read_everywhere(service, "/api/v1/items", headers)} == {
            1
        }

        hits = [
            line
            for line in httpx.get(service.metrics_url).text.splitlines()
            if line.startswith('glasshouse_cache_requests_total{result="hit"}')
        ]
        assert float(hits[0].rsplit(" ", 1)[1]) > 0, "the reads above were meant to hit"


def test_sigterm_drains_in_flight_requests(database_url: str, tmp_path: Path) -> None:
    # Slow requests by design: each registration hashes with argon2 for most of a second.
    slow = {
        "GLASSHOUSE_AUTH__ARGON2_TIME_COST": "20",
        "GLASSHOUSE_AUTH__ARGON2_MEMORY_COST_KIB": "65536",
    }
    with running_gunicorn(
        database_url,
        tmp_path,
        GLASSHOUSE_SERVER__DRAIN_SECONDS="2",
        GLASSHOUSE_SERVER__GRACEFUL_TIMEOUT_SECONDS="20",
        # All six slow registrations in flight at once, none refused for capacity.
        GLASSHOUSE_AUTH__MAX_CONCURRENT_PASSWORD_CHECKS="6",
        **slow,
    ) as service:
        results: list[int] = []

        def register() -> None:
            body = {
                "email": f"slow-{uuid.uuid4().hex[:8]}@example.com",
                "password": "slow-password",
            }
            response = httpx.post(f"{service.url}/api/v1/auth/register", json=body, timeout=30)
            results.append(response.status_code)

        in_flight = [threading.Thread(target=register) for _ in range(6)]
        for thread in in_flight:
            thread.start()
        time.sleep(0.3)
        service.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        readiness: list[tuple[float, int]] = []
        during_drain: list[int] = []
        while time.monotonic() < signalled + 1.5:
            status = httpx.get(f"{service.url}/health/ready", timeout=5).status_code
            readiness.append((time.monotonic() - signalled, status))
            during_drain.append(httpx.get(f"{service.url}/health/live", timeout=5).status_code)
            time.sleep(0.1)
        for thread in in_flight:
            thread.join(timeout=30)
        exit_code = service.process.wait(timeout=30)

    assert results == [201] * 6, results
    # gunicorn's master passes the signal on within milliseconds; allow it 100 ms.
    after_signal = [status for elapsed, status in readiness if elapsed > 0.1]
    assert after_signal
    assert set(after_signal) == {503}, readiness
    assert set(during_drain) == {200}, "requests arriving while draining are still served"
    assert exit_code == 0
    assert "draining_started" in service.logs()
