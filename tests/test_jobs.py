"""Background jobs as a client sees them, with jobs run inside the app: exports download what
the list holds, imports store each valid row once and report the others, and the queue retries,
gives up, and requeues a job whose worker died. The worker process is tested in
test_jobs_e2e.py."""

import asyncio
import contextlib
import csv
import io
import json
import uuid
from datetime import timedelta
from typing import Any, cast

import anyio
import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from service.db.base import utc_now
from service.items.models import Item
from service.jobs import service as jobs_service
from service.jobs.models import Job
from service.jobs.service import NewJob
from service.jobs.sweeper import LeaderLock
from service.settings import JobsSettings, Settings
from service.users.models import Role
from tests.conftest import RunningApp, SetRole, make_settings, running_app
from tests.factories import (
    API,
    Account,
    assert_problem,
    finished_job,
    make_account,
    make_item,
    wait_for_job,
)


def csv_upload(text: str, name: str = "items.csv", media_type: str = "text/csv") -> Any:
    return {"file": (name, text.encode(), media_type)}


def downloaded_rows(body: bytes, file_format: str) -> list[dict[str, Any]]:
    if file_format == "json":
        rows: list[dict[str, Any]] = json.loads(body)
        return rows
    return list(csv.DictReader(io.StringIO(body.decode())))


async def listed_items(client: httpx.AsyncClient, account: Account, **query: Any) -> list[Any]:
    response = await client.get(
        f"{API}/items", params={"limit": 100, **query}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def item_count(engine: AsyncEngine, owner_id: int) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(Item).where(Item.owner_id == owner_id)
        )
    return int(count or 0)


@pytest.mark.parametrize("file_format", ["csv", "json"])
async def test_an_export_downloads_what_the_list_shows(
    client: httpx.AsyncClient, file_format: str
) -> None:
    user = await make_account(client)
    for number in range(30):
        await make_item(client, user, title=f"Fern {number}", priority=1 + number % 5)
    other = await make_account(client)
    await make_item(client, other, title="Not yours")

    started = await client.post(
        f"{API}/items/exports",
        json={"format": file_format, "priority": 2, "sort": "title"},
        headers=user.headers,
    )
    assert started.status_code == 202, started.text
    assert started.headers["location"].endswith(f"/api/v1/jobs/{started.json()['id']}")
    job = await wait_for_job(client, user, started.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"done": 6, "total": 6}
    assert job["result"]["rows"] == 6

    download = await client.get(job["download_url"], headers=user.headers)
    assert download.status_code == 200
    assert download.headers["content-disposition"] == (
        f'attachment; filename="items-{job["id"]}.{file_format}"'
    )
    assert download.headers["etag"]
    rows = downloaded_rows(download.content, file_format)
    expected = await listed_items(client, user, priority=2, sort="title")
    assert [str(row["id"]) for row in rows] == [str(item["id"]) for item in expected]
    assert [row["title"] for row in rows] == [item["title"] for item in expected]

    # A download cut short resumes where it stopped.
    part = await client.get(job["download_url"], headers={**user.headers, "Range": "bytes=0-9"})
    assert part.status_code == 206
    assert part.content == download.content[:10]


async def test_csv_cells_a_spreadsheet_would_run_are_escaped_and_import_back_as_written(
    client: httpx.AsyncClient, empty_database: AsyncEngine
) -> None:
    user = await make_account(client)
    titles = ['=HYPERLINK("http://evil")', "+1+1", "-2", "@SUM(A1)", "'quoted", "plain"]
    for title in titles:
        await make_item(client, user, title=title)
    job = await finished_job(client, user, "/items/exports", json={"format": "csv"})
    body = (await client.get(job["download_url"], headers=user.headers)).content.decode()
    cells = [row["title"] for row in csv.DictReader(io.StringIO(body))]
    assert sorted(cells) == sorted(
        ['\'=HYPERLINK("http://evil")', "'+1+1", "'-2", "'@SUM(A1)", "''quoted", "plain"]
    )

    # The exported file imported by someone else gives back the titles exactly.
    importer = await make_account(client)
    imported = await finished_job(
        client, importer, "/items/imports", files=csv_upload(body, "export.csv")
    )
    assert imported["status"] == "succeeded", imported
    assert imported["result"]["stored"] == len(titles)
    assert sorted(item["title"] for item in await listed_items(client, importer)) == sorted(titles)


async def test_an_admin_may_export_one_owners_items(
    client: httpx.AsyncClient, set_role: SetRole
) -> None:
    owner = await make_account(client)
    await make_item(client, owner, title="Owner's")
    admin = await make_account(client)
    await set_role(admin.id, Role.admin)
    await make_item(client, admin, title="Admin's")
    job = await finished_job(
        client, admin, "/items/exports", json={"format": "json", "owner_id": owner.id}
    )
    rows = downloaded_rows(
        (await client.get(job["download_url"], headers=admin.headers)).content, "json"
    )
    assert [row["title"] for row in rows] == ["Owner's"]


async def test_another_users_job_and_file_are_a_404(client: httpx.AsyncClient) -> None:
    owner = await make_account(client)
    await make_item(client, owner)
    job = await finished_job(client, owner, "/items/exports", json={})
    stranger = await make_account(client)
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/file"):
        assert_problem(await client.get(f"{API}{path}", headers=stranger.headers), 404, "not_found")
    assert_problem(
        await client.get(f"{API}/jobs/999999999", headers=owner.headers), 404, "not_found"
    )


async def test_an_idempotency_key_answers_with_the_first_job(client: httpx.AsyncClient) -> None:
    user = await make_account(client)
    headers = {**user.headers, "Idempotency-Key": f"export-{uuid.uuid4()}"}
    first = await client.post(f"{API}/items/exports", json={}, headers=headers)
    second = await client.post(f"{API}/items/exports", json={}, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    # Another user's same key is their own.
    other = await make_account(client)
    theirs = await client.post(
        f"{API}/items/exports", json={}, headers={**headers, **other.headers}
    )
    assert theirs.status_code == 202
    assert theirs.json()["id"] != first.json()["id"]


async def test_an_expired_file_is_gone_and_deleted(
    client: httpx.AsyncClient, app: RunningApp, empty_database: AsyncEngine
) -> None:
    user = await make_account(client)
    await make_item(client, user)
    job = await finished_job(client, user, "/items/exports", json={})
    async with empty_database.begin() as connection:
        key = await connection.scalar(select(Job.file_key).where(Job.id == job["id"]))
        await connection.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(file_expires_at=utc_now() - timedelta(seconds=1))
        )
    assert key is not None
    path = anyio.Path(app.state["settings"].jobs.files_dir, key)
    assert await path.is_file()
    assert_problem(await client.get(job["download_url"], headers=user.headers), 410, "gone")
    assert (await client.get(f"{API}/jobs/{job['id']}", headers=user.headers)).json()[
        "download_url"
    ] is None
    # The next sweep deletes it.
    sweeper = app.state["jobs"].sweeper
    assert sweeper is not None
    await sweeper.sweep()
    assert not await path.exists()


async def test_an_import_stores_valid_rows_once_and_reports_the_others(
    client: httpx.AsyncClient, empty_database: AsyncEngine
) -> None:
    user = await make_account(client)
    text = (
        "title,description,status,priority\n"
        "Repot the fern,,todo,2\n"
        ",no title,,\n"
        "Too eager,,todo,9\n"
        "Wrong status,,someday,1\n"
        '"Quoted, with a comma","two\nlines",done,\n'
    )
    started = await client.post(
        f"{API}/items/imports", files=csv_upload(text), headers=user.headers
    )
    assert started.status_code == 202, started.text
    job = await wait_for_job(client, user, started.json()["id"])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert (result["rows"], result["stored"], result["invalid"]) == (5, 2, 3)
    assert [(error["row"], error["field"]) for error in result["errors"]] == [
        (2, "title"),
        (3, "priority"),
        (4, "status"),
    ]
    items = {item["title"]: item for item in await listed_items(client, user)}
    assert set(items) == {"Repot the fern", "Quoted, with a comma"}
    assert items["Quoted, with a comma"]["description"] == "two\nlines"
    assert items["Repot the fern"]["priority"] == 2

    # The same file again is the same import: nothing is stored twice.
    again = await client.post(f"{API}/items/imports", files=csv_upload(text), headers=user.headers)
    assert again.status_code == 200
    assert again.json()["id"] == job["id"]
    assert await item_count(empty_database, user.id) == 2

    # Another user's identical file is their own import.
    other = await make_account(client)
    theirs = await finished_job(client, other, "/items/imports", files=csv_upload(text))
    assert theirs["id"] != job["id"]
    assert theirs["result"]["stored"] == 2


async def test_a_json_import_reads_an_array_of_items(client: httpx.AsyncClient) -> None:
    user = await make_account(client)
    body = json.dumps(
        [{"title": "From JSON", "priority": 1}, {"title": "x" * 201}, "not an object"]
    )
    job = await finished_job(
        client,
        user,
        "/items/imports",
        files={"file": ("items.json", body.encode(), "application/octet-stream")},
    )
    assert job["status"] == "succeeded", job
    assert job["result"]["stored"] == 1
    assert [(error["row"], error["field"]) for error in job["result"]["errors"]] == [
        (2, "title"),
        (3, None),
    ]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("items.csv", b"name,priority\nfern,1\n", "no header row with a title column"),
        ("items.csv", b"title\n\xff\xfe broken\n", "not UTF-8"),
        ("items.json", b'{"title": "not in an array"}', "must be an array"),
        ("items.json", b'[{"title": "cut off"', "malformed"),
    ],
)
async def test_a_malformed_file_fails_its_job_with_a_reason(
    client: httpx.AsyncClient, name: str, content: bytes, reason: str
) -> None:
    user = await make_account(client)
    job = await finished_job(
        client, user, "/items/imports", files={"file": (name, content, "application/octet-stream")}
    )
    assert job["status"] == "failed"
    assert reason in job["error"]
    assert job["attempts"] == 1  # a retry would not fix the file


async def test_uploads_of_the_wrong_kind_or_size_are_refused(settings: Settings) -> None:
    limited = settings.model_copy(
        update={"jobs": settings.jobs.model_copy(update={"max_upload_bytes": 1000})}
    )
    async with running_app(limited) as app:
        client = app.client
        user = await make_account(client)
        url = f"{API}/items/imports"
        assert_problem(
            await client.post(url, files=csv_upload("title\n" + "x" * 2000), headers=user.headers),
            413,
            "payload_too_large",
        )

        # Without a Content-Length (chunked), the streamed bytes are counted.
        async def chunks() -> Any:
            boundary = b"--b0undary"
            yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.csv"'
            yield b"\r\nContent-Type: text/csv\r\n\r\ntitle\n"
            for _ in range(40):
                yield b"y" * 100 + b"\n"
            yield b"\r\n" + boundary + b"--\r\n"

        chunked = await client.post(
            url,
            content=chunks(),
            headers={**user.headers, "Content-Type": "multipart/form-data; boundary=b0undary"},
        )
        assert_problem(chunked, 413, "payload_too_large")
        assert_problem(
            await client.post(
                url, files=csv_upload("x", "a.txt", "text/plain"), headers=user.headers
            ),
            415,
            "unsupported_media_type",
        )
        assert_problem(
            await client.post(
                url, content=b"title\nx\n", headers={**user.headers, "Content-Type": "text/csv"}
            ),
            415,
            "unsupported_media_type",
        )
        assert_problem(
            await client.post(
                url,
                data={"other": "field"},
                files={"not_file": ("a.csv", b"x")},
                headers=user.headers,
            ),
            400,
            "malformed_upload",
        )
        # Nothing was left behind in storage.
        uploads = anyio.Path(limited.jobs.files_dir, "uploads")
        assert not [path async for path in uploads.rglob("*") if await path.is_file()]


def jobs_settings(settings: Settings, **values: Any) -> Settings:
    return settings.model_copy(update={"jobs": settings.jobs.model_copy(update=values)})


async def test_a_job_that_fails_twice_is_retried_with_backoff_and_then_succeeds(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    quick = jobs_settings(settings, retry_delay_seconds=0.2, sweep_interval_seconds=0.1)
    # The exports directory cannot be made while a file holds its name: storage trouble.
    blocker = anyio.Path(quick.jobs.files_dir, "exports")
    await blocker.write_text("in the way")
    async with running_app(quick) as app:
        client = app.client
        user = await make_account(client)
        await make_item(client, user)
        started = await client.post(f"{API}/items/exports", json={}, headers=user.headers)
        job_id = started.json()["id"]
        # Two failed attempts, each queued again for after its backoff.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            job = (await client.get(f"{API}/jobs/{job_id}", headers=user.headers)).json()
            assert job["status"] in ("queued", "running"), job
            if job["status"] == "queued" and job["attempts"] == 2 and job["error"]:
                break
            assert asyncio.get_running_loop().time() < deadline, job
            await asyncio.sleep(0.02)
        assert "FileExistsError" in job["error"] or "NotADirectory" in job["error"], job
        await blocker.unlink()
        job = await wait_for_job(client, user, job_id)
        assert (job["status"], job["attempts"], job["error"]) == ("succeeded", 3, None)


async def test_a_job_that_always_fails_ends_failed_with_its_error(settings: Settings) -> None:
    quick = jobs_settings(
        settings, retry_delay_seconds=0.05, sweep_interval_seconds=0.05, max_attempts=3
    )
    await anyio.Path(quick.jobs.files_dir, "exports").write_text("in the way")
    async with running_app(quick) as app:
        client = app.client
        user = await make_account(client)
        job = await finished_job(client, user, "/items/exports", json={})
        assert (job["status"], job["attempts"]) == ("failed", 3)
        assert "exports" in job["error"]
        assert job["download_url"] is None


async def test_an_attempt_past_the_time_limit_fails(settings: Settings) -> None:
    limited = jobs_settings(settings, time_limit_seconds=0.000_001, max_attempts=1)
    async with running_app(limited) as app:
        user = await make_account(app.client)
        job = await finished_job(app.client, user, "/items/exports", json={})
        assert job["status"] == "failed"
        assert "limit" in job["error"]


async def test_a_job_whose_worker_died_is_run_again_once_its_lease_lapses(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    quick = jobs_settings(settings, lease_seconds=3, sweep_interval_seconds=0.2)
    async with running_app(quick) as app:
        client = app.client
        user = await make_account(client)
        await make_item(client, user)
        sessionmaker = async_sessionmaker(empty_database, expire_on_commit=False)
        # A worker claims the job, then dies: it never renews the lease nor finishes.
        async with sessionmaker() as session:
            job, _ = await jobs_service.create_job(
                session=session,
                new=NewJob(
                    owner_id=user.id,
                    kind="items.export",
                    params={"request": {}, "as_admin": False},
                ),
            )
            claimed = await jobs_service.claim(session=session, job_id=job.id, settings=quick.jobs)
        assert claimed is not None
        assert claimed.attempts == 1
        finished = await wait_for_job(client, user, job.id, timeout_seconds=30)
        assert (finished["status"], finished["attempts"]) == ("succeeded", 2)


async def test_a_worker_whose_lease_was_taken_changes_nothing(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    sessionmaker = async_sessionmaker(empty_database, expire_on_commit=False)
    async with running_app(settings) as app:
        user = await make_account(app.client)
    async with sessionmaker() as session:
        job, _ = await jobs_service.create_job(
            session=session,
            new=NewJob(owner_id=user.id, kind="items.export", params={}),
        )
        first = await jobs_service.claim(session=session, job_id=job.id, settings=settings.jobs)
        assert first is not None
        # A second message for the same job is not a second run.
        assert (
            await jobs_service.claim(session=session, job_id=job.id, settings=settings.jobs) is None
        )
        await session.execute(
            update(Job).where(Job.id == job.id).values(run_after=utc_now() - timedelta(seconds=1))
        )
        await session.commit()
        failed, requeued = await jobs_service.finish_lapsed(session=session, settings=settings.jobs)
        assert (failed, requeued) == ([], [job.id])
        second = await jobs_service.claim(session=session, job_id=job.id, settings=settings.jobs)
        assert second is not None
        assert second.attempts == 2
        # The first attempt's worker wakes up: its writes are refused.
        assert not await jobs_service.renew_lease(
            session=session, job_id=job.id, attempt=1, settings=settings.jobs
        )
        assert (
            await jobs_service.succeed(
                session=session,
                job_id=job.id,
                attempt=1,
                result={},
                file_key=None,
                file_expires_at=None,
            )
            is None
        )


class CancelSwallowingLock:
    """The sweeper's lock, as a client library that meets the task's cancellation and returns
    anyway behaves (redis-py's pub/sub read was seen to keep going once cancelled); once."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def hold(self) -> bool:
        if not self.asked.is_set():
            self.asked.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
        return False

    async def close(self) -> None:
        pass


async def test_the_apps_sweeper_ends_at_shutdown_even_when_its_cancellation_is_lost(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    quick = jobs_settings(settings, sweep_interval_seconds=0.05)
    async with running_app(quick) as app:
        jobs = app.state["jobs"]
        assert jobs.sweeper is not None
        [sweeping] = jobs.background
        if jobs.sweeper.lock is not None:
            await jobs.sweeper.lock.close()
        lock = CancelSwallowingLock()
        jobs.sweeper.lock = cast(LeaderLock, lock)
        await asyncio.wait_for(lock.asked.wait(), timeout=5)
    # The app has shut down (Jobs.close) while the sweeper was inside the lock's call.
    try:
        assert sweeping.done(), "the sweeper outlived its app"
    finally:
        sweeping.cancel()


def test_retry_delays_double_up_to_the_cap() -> None:
    settings = JobsSettings(retry_delay_seconds=2, retry_max_delay_seconds=10)
    assert [jobs_service.retry_delay(n, settings) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]


async def test_a_job_on_the_embedded_default_runs_without_redis(
    backend: Any, empty_database: AsyncEngine
) -> None:
    async with running_app(make_settings(backend.database_url, None)) as app:
        user = await make_account(app.client)
        await make_item(app.client, user)
        job = await finished_job(app.client, user, "/items/exports", json={"format": "json"})
        assert job["status"] == "succeeded"


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each event in a text/event-stream body; comments skipped."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and ":" in line[1:]
        )
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


async def test_a_jobs_event_stream_follows_it_to_its_end(settings: Settings) -> None:
    quick = jobs_settings(settings, import_batch_size=100)
    async with running_app(quick) as app:
        client = app.client
        user = await make_account(client)
        rows = "title\n" + "".join(f"Streamed {n}\n" for n in range(2000))
        started = await client.post(
            f"{API}/items/imports", files=csv_upload(rows), headers=user.headers
        )
        job_id = started.json()["id"]
        response = await client.get(f"{API}/jobs/{job_id}/events", headers=user.headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        events = sse_events(response.text)
        names = [name for name, _ in events]
        assert names[-1] == "end"
        assert set(names[:-1]) <= {"job"}
        final = events[-1][1]
        assert (final["id"], final["status"], final["result"]["stored"]) == (
            job_id,
            "succeeded",
            2000,
        )
        progress = [data["progress"]["done"] for _, data in events]
        assert progress == sorted(progress)


async def test_a_stream_ticket_opens_one_stream_once_for_its_session_only(
    client: httpx.AsyncClient,
) -> None:
    user = await make_account(client)
    await make_item(client, user)
    job = await finished_job(client, user, "/items/exports", json={})
    events = f"{API}/jobs/{job['id']}/events"

    async def new_ticket(account: Account) -> str:
        response = await client.post(f"{API}/auth/stream-tickets", headers=account.headers)
        assert response.status_code == 201, response.text
        assert response.json()["expires_in"] == 30
        assert response.headers["cache-control"] == "no-store"
        ticket: str = response.json()["ticket"]
        return ticket

    ticket = await new_ticket(user)
    opened = await client.get(events, params={"ticket": ticket})
    assert opened.status_code == 200
    assert sse_events(opened.text)[-1][0] == "end"
    assert_problem(await client.get(events, params={"ticket": ticket}), 401, "invalid_token")
    assert_problem(
        await client.get(events, params={"ticket": await new_ticket(user)}, headers=user.headers),
        401,
        "ambiguous_credentials",
    )
    stranger = await make_account(client)
    assert_problem(
        await client.get(events, params={"ticket": await new_ticket(stranger)}), 404, "not_found"
    )
    # A ticket taken before a logout does not outlive the session.
    ticket = await new_ticket(user)
    assert (await client.post(f"{API}/auth/logout", headers=user.headers)).status_code == 204
    assert_problem(await client.get(events, params={"ticket": ticket}), 401, "invalid_token")


async def test_a_json_export_imports_back_as_the_same_items(client: httpx.AsyncClient) -> None:
    user = await make_account(client)
    await make_item(client, user, title="With a description", description="Notes", priority=1)
    await make_item(client, user, title="Without one", status="done")
    job = await finished_job(client, user, "/items/exports", json={"format": "json"})
    body = (await client.get(job["download_url"], headers=user.headers)).content
    importer = await make_account(client)
    imported = await finished_job(
        client,
        importer,
        "/items/imports",
        files={"file": ("export.json", body, "application/json")},
    )
    assert (imported["result"]["stored"], imported["result"]["invalid"]) == (2, 0)

    def fields(items: list[Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (item["title"], item["description"], item["status"], item["priority"]) for item in items
        )

    assert fields(await listed_items(client, importer)) == fields(await listed_items(client, user))
