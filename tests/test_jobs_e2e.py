"""Jobs across real processes: gunicorn serves the API, ``python -m service.jobs`` runs the
jobs from a Redis stream, both on PostgreSQL and one shared file directory. Exports and imports
end to end, retries, a worker killed or stopped mid-import, one trace and one request ID from
the request to the job, and the queue's metrics from the one worker that sweeps."""

import asyncio
import csv
import io
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.faults import RedisServer, running_redis
from tests.processes import (
    REPO,
    Gunicorn,
    OtlpSink,
    base_env,
    empty_postgres_database,
    migrated_postgres_database,
    running_gunicorn,
    running_job_worker,
    running_otlp_sink,
)

API = "/api/v1"
# The bound docs/jobs.md states for the defaults: lease (20 s) + sweep (5 s) + the dead
# worker's sweeper lock (15 s).
REQUEUE_BOUND_SECONDS = 40
CONSUMER_SPAN = 5  # OTLP's SPAN_KIND_CONSUMER


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with running_otlp_sink() as otlp_sink:
        yield otlp_sink


@pytest.fixture(scope="module")
def shared(
    database_url: str,
    redis_server: RedisServer,
    sink: OtlpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """What the API and the workers must agree on: the database, Redis, the queue, the cache's
    keys and the file directory (a ReadWriteMany volume in Kubernetes)."""
    return {
        "REDIS_URL": redis_server.url,
        "GLASSHOUSE_JOBS__QUEUE_NAME": f"e2e-jobs-{secrets.token_hex(4)}",
        "GLASSHOUSE_JOBS__FILES_DIR": str(tmp_path_factory.mktemp("files")),
        "GLASSHOUSE_CACHE__KEY_PREFIX": f"e2e-jobs-{secrets.token_hex(4)}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "GLASSHOUSE_OBSERVABILITY__TRACE_SAMPLE_RATIO": "1.0",
    }


@pytest.fixture(scope="module")
def api(
    database_url: str, shared: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gunicorn]:
    with running_gunicorn(
        database_url,
        tmp_path_factory.mktemp("gunicorn"),
        workers=2,
        GLASSHOUSE_SERVER__DRAIN_SECONDS="0",
        **shared,
    ) as server:
        yield server


def start_worker(database_url: str, shared: dict[str, str], tmp_path: Path, **settings: str) -> Any:
    return running_job_worker(database_url, shared["REDIS_URL"], tmp_path, **shared, **settings)


def wait_for(
    api: Gunicorn,
    headers: dict[str, str],
    job_id: int,
    done: Any = lambda job: job["status"] in ("succeeded", "failed"),
    timeout: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = httpx.get(f"{api.url}{API}/jobs/{job_id}", headers=headers).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {job}"
        time.sleep(0.1)


def owner_id(api: Gunicorn, headers: dict[str, str]) -> int:
    user_id: int = httpx.get(f"{api.url}{API}/users/me", headers=headers).json()["id"]
    return user_id


async def _database_rows(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def database_rows(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_database_rows(database_url, query, *args))


def seed_items(database_url: str, owner: int, count: int) -> None:
    database_rows(
        database_url,
        "INSERT INTO items (owner_id, title, description, status, priority, created_at,"
        " updated_at) SELECT $1, 'Item ' || n, CASE WHEN n % 3 = 0 THEN NULL ELSE"
        " '=cell ' || n END, 'todo', 1 + n % 5, now() - n * interval '1 second', now()"
        " FROM generate_series(1, $2) AS n",
        owner,
        count,
    )


def import_file(valid: int, invalid_every: int) -> tuple[bytes, int]:
    """A CSV with ``valid`` good rows and a bad one (priority 9) after every
    ``invalid_every``-th; the number of bad rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["title", "priority"])
    invalid = 0
    for number in range(1, valid + 1):
        writer.writerow([f"Imported {secrets.token_hex(4)} {number}", 1 + number % 5])
        if number % invalid_every == 0:
            writer.writerow([f"Bad {number}", 9])
            invalid += 1
    return buffer.getvalue().encode(), invalid


def upload(api: Gunicorn, headers: dict[str, str], content: bytes) -> dict[str, Any]:
    response = httpx.post(
        f"{api.url}{API}/items/imports",
        files={"file": ("items.csv", content, "text/csv")},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def titles_stored(database_url: str, owner: int) -> list[str]:
    rows = database_rows(database_url, "SELECT title FROM items WHERE owner_id = $1", owner)
    return [row["title"] for row in rows]


def test_an_export_of_10000_items_downloads_the_databases_rows(
    api: Gunicorn, database_url: str, shared: dict[str, str], tmp_path: Path
) -> None:
    headers = api.new_account_headers()
    owner = owner_id(api, headers)
    seed_items(database_url, owner, 10_000)
    with start_worker(database_url, shared, tmp_path):
        started = httpx.post(
            f"{api.url}{API}/items/exports", json={"format": "csv"}, headers=headers
        )
        assert started.status_code == 202, started.text
        job = wait_for(api, headers, started.json()["id"])
    assert job["status"] == "succeeded", job
    download = httpx.get(job["download_url"], headers=headers, timeout=60)
    assert download.status_code == 200
    rows = list(csv.DictReader(io.StringIO(download.text)))
    stored = database_rows(
        database_url,
        "SELECT id, title, description, priority FROM items WHERE owner_id = $1"
        " ORDER BY created_at DESC, id DESC",
        owner,
    )
    assert len(rows) == len(stored) == 10_000
    assert [
        (
            int(row["id"]),
            row["title"],
            row["description"].removeprefix("'") or None,
            int(row["priority"]),
        )
        for row in rows
    ] == [(r["id"], r["title"], r["description"], r["priority"]) for r in stored]
    # Another user sees neither the job nor its file.
    stranger = api.new_account_headers()
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/file"):
        assert httpx.get(f"{api.url}{API}{path}", headers=stranger).status_code == 404


def test_the_request_and_its_job_share_one_trace_and_one_request_id(
    api: Gunicorn, database_url: str, shared: dict[str, str], sink: OtlpSink, tmp_path: Path
) -> None:
    headers = api.new_account_headers()
    request_id = f"jobs-e2e-{secrets.token_hex(6)}"
    with start_worker(database_url, shared, tmp_path) as worker:
        started = httpx.post(
            f"{api.url}{API}/items/exports",
            json={"format": "json"},
            headers={**headers, "X-Request-ID": request_id},
        )
        job = wait_for(api, headers, started.json()["id"])
        assert job["status"] == "succeeded", job
        worker_lines = [line for line in worker.log_lines() if line.get("job_id") == job["id"]]
    # The access line is written once its buffer is flushed (within a second or so).
    deadline = time.monotonic() + 10
    while True:
        api_lines = [
            line
            for line in api.log_lines()
            if line.get("request_id") == request_id and line.get("event") == "request"
        ]
        if api_lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert api_lines, "no access line of the request"
    api_line = api_lines[0]
    assert {line["event"] for line in worker_lines} >= {"job_started", "job_succeeded"}
    for line in worker_lines:
        assert (line["request_id"], line["trace_id"]) == (request_id, api_line["trace_id"])

    deadline = time.monotonic() + 10
    while True:
        spans = [span for span in sink.snapshot() if span.trace_id == api_line["trace_id"]]
        services = {span.resource.get("service.name") for span in spans}
        consumer = [span for span in spans if span.kind == CONSUMER_SPAN]
        if consumer or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert consumer, f"no job span in the request's trace: {[s.name for s in spans]}"
    by_id = {span.span_id: span for span in spans}
    # The job's span descends from the request's server span, through the enqueue.
    ancestor = by_id.get(consumer[0].parent_span_id)
    assert ancestor is not None
    while ancestor.parent_span_id in by_id:
        ancestor = by_id[ancestor.parent_span_id]
    assert ancestor.name.startswith("POST /api/v1/items/exports")
    # SQL the job ran is inside its span.
    assert any(span.parent_span_id == consumer[0].span_id for span in spans)
    assert len(services) == 1  # one service name, two kinds of process


def test_a_failing_job_is_retried_and_one_that_always_fails_ends_failed(
    api: Gunicorn, database_url: str, shared: dict[str, str], tmp_path: Path
) -> None:
    headers = api.new_account_headers()
    blocker = Path(shared["GLASSHOUSE_JOBS__FILES_DIR"], "exports")
    moved = blocker.with_name("exports.moved")
    if blocker.exists():
        blocker.rename(moved)
    blocker.write_text("storage trouble: no directory can be made here")
    try:
        with start_worker(
            database_url, shared, tmp_path, GLASSHOUSE_JOBS__RETRY_DELAY_SECONDS="0.5"
        ):
            flaky = httpx.post(f"{api.url}{API}/items/exports", json={}, headers=headers).json()
            job = wait_for(
                api, headers, flaky["id"], lambda job: job["attempts"] == 2 and job["error"]
            )
            assert job["status"] in ("queued", "running")
            job = wait_for(
                api,
                headers,
                flaky["id"],
                lambda job: job["attempts"] == 2 and job["status"] == "queued",
            )
            blocker.unlink()
            job = wait_for(api, headers, flaky["id"])
            assert (job["status"], job["attempts"], job["error"]) == ("succeeded", 3, None)

            shutil.rmtree(blocker)  # made by the export that succeeded
            blocker.write_text("storage trouble, for good")
            hopeless = httpx.post(f"{api.url}{API}/items/exports", json={}, headers=headers)
            job = wait_for(api, headers, hopeless.json()["id"])
            assert (job["status"], job["attempts"]) == ("failed", 3)
            assert "exports" in job["error"]
    finally:
        if blocker.is_file():
            blocker.unlink()
        if moved.exists() and not blocker.exists():
            moved.rename(blocker)


def test_a_worker_killed_mid_import_leads_to_the_job_running_again_each_row_stored_once(
    api: Gunicorn, database_url: str, shared: dict[str, str], tmp_path: Path
) -> None:
    headers = api.new_account_headers()
    owner = owner_id(api, headers)
    content, invalid = import_file(valid=40_000, invalid_every=100)
    # Small batches: the import takes long enough to be killed in the middle.
    slow = {"GLASSHOUSE_JOBS__IMPORT_BATCH_SIZE": "50"}
    with start_worker(database_url, shared, tmp_path / "first", **slow) as worker:
        job = upload(api, headers, content)
        job = wait_for(api, headers, job["id"], lambda job: job["progress"]["done"] >= 1000)
        assert job["status"] == "running"
        worker.kill()
        killed_at = time.monotonic()
    partial = len(titles_stored(database_url, owner))
    assert 0 < partial < 40_000
    with start_worker(database_url, shared, tmp_path / "second"):
        job = wait_for(api, headers, job["id"], lambda job: job["attempts"] == 2, timeout=60)
        assert time.monotonic() - killed_at < REQUEUE_BOUND_SECONDS + 10
        job = wait_for(api, headers, job["id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert (job["result"]["stored"], job["result"]["invalid"]) == (40_000, invalid)
    titles = titles_stored(database_url, owner)
    assert len(titles) == len(set(titles)) == 40_000  # each valid row once
    assert [error["row"] for error in job["result"]["errors"]][:2] == [101, 202]


def test_sigterm_lets_the_running_job_finish_or_hands_it_back(
    api: Gunicorn, database_url: str, shared: dict[str, str], tmp_path: Path
) -> None:
    headers = api.new_account_headers()
    owner = owner_id(api, headers)
    content, _ = import_file(valid=30_000, invalid_every=1_000_000)
    slow = {
        "GLASSHOUSE_JOBS__IMPORT_BATCH_SIZE": "50",
        "GLASSHOUSE_JOBS__SHUTDOWN_WAIT_SECONDS": "1",
    }
    with start_worker(database_url, shared, tmp_path / "first", **slow) as worker:
        job = upload(api, headers, content)
        wait_for(api, headers, job["id"], lambda job: job["progress"]["done"] >= 500)
        stopping = time.monotonic()
        assert worker.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - stopping < 20
    job = wait_for(api, headers, job["id"], lambda job: True)
    # Handed back at once (not left to its lease), its attempt not counted.
    assert (job["status"], job["attempts"]) == ("queued", 0)
    assert any(line.get("event") == "job_released" for line in worker.log_lines())
    with start_worker(database_url, shared, tmp_path / "second"):
        job = wait_for(api, headers, job["id"], timeout=120)
    assert (job["status"], job["result"]["stored"]) == ("succeeded", 30_000)
    titles = titles_stored(database_url, owner)
    assert len(titles) == len(set(titles)) == 30_000


def test_the_queue_is_measured_by_the_one_worker_that_sweeps(
    api: Gunicorn, database_url: str, shared: dict[str, str], tmp_path: Path
) -> None:
    headers = api.new_account_headers()
    with (
        start_worker(database_url, shared, tmp_path / "a") as first,
        start_worker(database_url, shared, tmp_path / "b") as second,
    ):
        job = httpx.post(f"{api.url}{API}/items/exports", json={}, headers=headers).json()
        wait_for(api, headers, job["id"])
        deadline = time.monotonic() + 30
        while True:
            exports = [httpx.get(worker.metrics_url).text for worker in (first, second)]
            measuring = [text for text in exports if "glasshouse_jobs_queue_depth " in text]
            if len(measuring) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert len(measuring) == 1, "exactly one worker exports the queue's depth"
    assert "glasshouse_jobs_oldest_waiting_seconds " in measuring[0]
    assert any('glasshouse_jobs_succeeded_total{task="items.export"}' in text for text in exports)
    api_metrics = httpx.get(api.metrics_url).text
    assert 'glasshouse_jobs_enqueued_total{task="items.export"}' in api_metrics


def test_an_event_stream_on_the_api_follows_a_job_the_worker_runs(
    api: Gunicorn, database_url: str, shared: dict[str, str], tmp_path: Path
) -> None:
    headers = api.new_account_headers()
    content, _ = import_file(valid=8_000, invalid_every=1_000_000)
    with start_worker(database_url, shared, tmp_path, GLASSHOUSE_JOBS__IMPORT_BATCH_SIZE="100"):
        job = upload(api, headers, content)
        # As a browser would: a ticket, then EventSource without headers.
        ticket = httpx.post(f"{api.url}{API}/auth/stream-tickets", headers=headers).json()
        events: list[tuple[str, dict[str, Any]]] = []
        with httpx.stream(
            "GET",
            f"{api.url}{API}/jobs/{job['id']}/events",
            params={"ticket": ticket["ticket"]},
            timeout=60,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            name = "message"
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
    names = [name for name, _ in events]
    assert names[-1] == "end"
    assert events[-1][1]["status"] == "succeeded"
    running = [data for name, data in events if name == "job" and data["status"] == "running"]
    # Progress arrived while the worker ran the job, not only its end.
    assert any(0 < data["progress"]["done"] < 8_000 for data in running), names


def test_a_worker_takes_no_job_until_the_schema_is_migrated(
    shared: dict[str, str], tmp_path: Path
) -> None:
    """A release's workers may start before its migration: they wait, alive, and then start."""
    with empty_postgres_database() as url, start_worker(url, shared, tmp_path) as worker:
        deadline = time.monotonic() + 10
        while "worker_waiting_for_database" not in worker.logs():
            assert time.monotonic() < deadline, worker.logs()
            time.sleep(0.1)
        assert worker.alive()
        assert "worker_started" not in worker.logs()
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=REPO,
            env={**base_env(), "DATABASE_URL": url},
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 10
        while "worker_started" not in worker.logs():
            assert time.monotonic() < deadline, worker.logs()
            time.sleep(0.1)
