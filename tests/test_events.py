"""Live item events over WebSocket and SSE, one app on a real uvicorn server, on PostgreSQL
with Redis and on the embedded SQLite default."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.base import utc_now
from service.events.fanout import RedisFanOut
from service.events.models import ItemEvent
from service.events.schemas import ItemEventKind
from service.events.service import record_item_event
from service.lifespan import AppState
from service.main import create_app
from service.settings import RealtimeSettings, Settings
from service.users.models import Role
from tests.conftest import Backend, LogFile, make_settings, started
from tests.factories import API, Account, assert_problem, make_account, make_api_key, make_item
from tests.faults import ProxyMode, running_proxy, running_redis
from tests.streams import serving, sse, websocket


@dataclass
class Live:
    url: str
    client: httpx.AsyncClient
    state: AppState


@contextlib.asynccontextmanager
async def live_app(settings: Settings) -> AsyncIterator[Live]:
    async with (
        started(create_app(settings)) as (served, state),
        serving(served, settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield Live(url, client, state)


def realtime_settings(base: Settings, **realtime: Any) -> Settings:
    return make_settings(
        base.database.url,
        base.redis_url,
        realtime=RealtimeSettings(**{"catch_up_seconds": 0.5, **realtime}),
    )


@pytest.fixture
async def live(settings: Settings, empty_database: AsyncEngine) -> AsyncIterator[Live]:
    async with live_app(realtime_settings(settings)) as running:
        yield running


async def change_item(live: Live, account: Account) -> list[tuple[str, int]]:
    """Creates, updates and deletes an item: the three events, as (type, item id)."""
    item = await make_item(live.client, account, title="Prune the roses")
    path = f"{API}/items/{item['id']}"
    response = await live.client.patch(path, json={"status": "doing"}, headers=account.headers)
    assert response.status_code == 200, response.text
    assert (await live.client.delete(path, headers=account.headers)).status_code == 204
    return [(kind, item["id"]) for kind in ("item.created", "item.updated", "item.deleted")]


async def test_sse_delivers_your_item_events_in_order_and_nobody_elses(live: Live) -> None:
    owner, stranger = await make_account(live.client), await make_account(live.client)
    async with sse(live.url, owner.headers) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        await make_item(live.client, stranger)  # not the owner's: never on this stream
        expected = await change_item(live, owner)
        events = [await stream.next() for _ in expected]
    assert [(e["event"], e["data"]["item_id"]) for e in events] == expected
    assert [e["id"] for e in events] == ["1", "2", "3"]
    created, updated, deleted = (e["data"] for e in events)
    assert created["item"]["title"] == "Prune the roses"
    assert created["owner_id"] == owner.id
    assert updated["item"]["status"] == "doing"
    assert updated["item"]["updated_at"] >= created["item"]["updated_at"]
    assert deleted["item"] is None
    assert deleted["type"] == "item.deleted"


async def test_a_websocket_authenticates_in_its_protocol_header_and_gets_the_events(
    live: Live,
) -> None:
    owner = await make_account(live.client)
    async with websocket(live.url, owner.access_token) as socket:
        assert socket.connection.subprotocol == "glasshouse.events.v1"
        assert (await socket.next())["type"] == "stream.ready"
        expected = await change_item(live, owner)
        events = [await socket.next() for _ in expected]
    assert [(e["type"], e["item_id"]) for e in events] == expected
    assert [e["id"] for e in events] == [1, 2, 3]


async def test_a_websocket_may_authenticate_with_its_first_message_instead(live: Live) -> None:
    owner = await make_account(live.client)
    async with websocket(live.url) as socket:
        await socket.connection.send(f'{{"type": "auth", "token": "{owner.access_token}"}}')
        assert (await socket.next())["type"] == "stream.ready"
        await make_item(live.client, owner)
        assert (await socket.next())["type"] == "item.created"


async def test_a_websocket_without_credentials_is_closed_after_the_deadline(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    async with live_app(realtime_settings(settings, auth_timeout_seconds=0.5)) as live:
        owner = await make_account(live.client)
        # A token in the query string is not a credential: it would end up in access logs.
        async with websocket(live.url, token=None, token_=owner.access_token) as socket:
            started_at = time.monotonic()
            assert await socket.close_code() == (4401, "auth_timeout")
            assert time.monotonic() - started_at < 3
        async with websocket(live.url, "not-a-token") as socket:
            assert await socket.close_code() == (4401, "invalid_token")
        async with websocket(live.url) as socket:
            await socket.connection.send('{"type": "subscribe"}')
            assert await socket.close_code() == (4401, "auth_required")


async def test_resuming_replays_what_was_missed_and_a_reset_when_too_far_behind(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    async with live_app(realtime_settings(settings, replay_limit=5)) as live:
        owner = await make_account(live.client)
        for number in range(3):
            await make_item(live.client, owner, title=f"Item {number}")
        async with sse(live.url, {**owner.headers, "Last-Event-ID": "1"}) as stream:
            assert [(await stream.next())["id"] for _ in range(2)] == ["2", "3"]
        async with websocket(live.url, owner.access_token, last_event_id=2) as socket:
            assert (await socket.next())["type"] == "stream.ready"
            assert (await socket.next())["id"] == 3
        for number in range(6):
            await make_item(live.client, owner, title=f"More {number}")
        async with sse(live.url, {**owner.headers, "Last-Event-ID": "0"}) as stream:
            reset = await stream.next()
            assert (reset["event"], reset["id"], reset["data"]) == (
                "stream.reset",
                "9",
                {"type": "stream.reset", "id": 9},
            )
            await make_item(live.client, owner)
            assert (await stream.next())["id"] == "10"


async def test_an_event_whose_message_was_never_published_still_arrives(live: Live) -> None:
    """A process that crashed between its commit and its publish: the event is in the log,
    and the streams' counter check finds it (catch_up_seconds, 0.5 s here)."""
    owner = await make_account(live.client)
    async with sse(live.url, owner.headers) as stream:
        await asyncio.sleep(0.2)  # the stream has read the owner's counter
        async with live.state["sessionmaker"]() as session:
            await record_item_event(
                session=session,
                kind=ItemEventKind.deleted,
                owner_id=owner.id,
                item_id=12345,
                item=None,
            )
            await session.commit()
        started_at = time.monotonic()
        event = await stream.next(within=5)
        assert (event["id"], event["data"]["item_id"]) == ("1", 12345)
        assert time.monotonic() - started_at < 2


async def test_writes_at_once_are_numbered_once_each_from_the_first(live: Live) -> None:
    """A new user's first writes race to create the counter; later ones queue on its row."""
    owner = await make_account(live.client)
    items = await asyncio.gather(*(make_item(live.client, owner) for _ in range(12)))
    # Once the counter exists (on PostgreSQL, numbered in the event's own statement).
    items += await asyncio.gather(*(make_item(live.client, owner) for _ in range(12)))
    async with live.state["sessionmaker"]() as session:
        logged = (
            await session.execute(
                select(ItemEvent.seq, ItemEvent.item_id).where(ItemEvent.owner_id == owner.id)
            )
        ).all()
    assert sorted(seq for seq, _ in logged) == list(range(1, 25))
    assert sorted(item_id for _, item_id in logged) == sorted(item["id"] for item in items)


async def test_on_postgresql_an_item_write_numbers_and_stores_its_event_in_one_statement(
    live: Live,
) -> None:
    """Every statement is a round trip and a pass through SQLAlchemy in each item write."""
    engine = live.state["engine"]
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no data-modifying CTE")
    account = await make_account(live.client)
    await make_item(live.client, account)  # the first event creates the counter
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])  # (connection, cursor, statement, ...)

    sqlalchemy_event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        await make_item(live.client, account, title="Second")
    finally:
        sqlalchemy_event.remove(engine.sync_engine, "before_cursor_execute", record)
    writes = [s for s in statements if "item_events" in s or "event_sequences" in s]
    assert len(writes) == 1, statements
    assert "UPDATE event_sequences" in writes[0]
    assert "INSERT INTO item_events" in writes[0]
    async with live.state["sessionmaker"]() as session:
        seqs = await session.scalars(
            select(ItemEvent.seq).where(ItemEvent.owner_id == account.id).order_by(ItemEvent.seq)
        )
        assert list(seqs) == [1, 2]


@pytest.mark.parametrize("revoke", ["logout", "password_change", "deactivation", "deletion"])
async def test_a_revoked_session_closes_its_streams_at_once(
    live: Live, revoke: str, set_role: Any
) -> None:
    owner = await make_account(live.client)
    admin = await make_account(live.client)
    await set_role(admin.id, Role.admin)
    async with (
        websocket(live.url, owner.access_token) as socket,
        sse(live.url, owner.headers) as stream,
    ):
        assert (await socket.next())["type"] == "stream.ready"
        await asyncio.sleep(0.2)
        started_at = time.monotonic()
        if revoke == "logout":
            response = await live.client.post(
                f"{API}/auth/logout",
                json={"refresh_token": owner.refresh_token},
                headers=owner.headers,
            )
        elif revoke == "password_change":
            response = await live.client.post(
                f"{API}/users/me/password",
                json={"current_password": owner.password, "new_password": "another-horse-42"},
                headers=owner.headers,
            )
        elif revoke == "deactivation":
            response = await live.client.patch(
                f"{API}/users/{owner.id}", json={"is_active": False}, headers=admin.headers
            )
        else:
            response = await live.client.delete(f"{API}/users/me", headers=owner.headers)
        assert response.is_success, response.text
        assert await socket.close_code() == (4401, "credentials_revoked")
        closing = await stream.next()
        assert closing["event"] == "stream.closing"
        assert closing["data"]["reason"] == "credentials_revoked"
        assert time.monotonic() - started_at < 5
    async with sse(live.url, owner.headers) as refused:
        assert refused.response.status_code == 401
    async with websocket(live.url, owner.access_token) as refused_socket:
        assert (await refused_socket.close_code())[0] == 4401


async def test_limits_per_user_and_per_worker_refuse_clearly(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    limits = {"max_streams_per_user": 2, "max_streams_per_worker": 3}
    async with live_app(realtime_settings(settings, **limits)) as live:
        owner, other = await make_account(live.client), await make_account(live.client)
        async with sse(live.url, owner.headers), websocket(live.url, owner.access_token) as ws:
            assert (await ws.next())["type"] == "stream.ready"
            async with sse(live.url, owner.headers) as refused:
                assert refused.response.status_code == 429
                await refused.response.aread()
                assert_problem(refused.response, 429, "too_many_requests")
            async with websocket(live.url, owner.access_token) as refused_ws:
                assert await refused_ws.close_code() == (4429, "too_many_streams")
            async with sse(live.url, other.headers) as third:
                assert third.response.status_code == 200
                async with sse(live.url, other.headers) as full:
                    assert full.response.status_code == 503
                    await full.response.aread()
                    assert_problem(full.response, 503, "server_busy")


async def test_admins_may_watch_everyone_and_users_may_not(live: Live, set_role: Any) -> None:
    admin, user = await make_account(live.client), await make_account(live.client)
    await set_role(admin.id, Role.admin)
    async with sse(live.url, user.headers, all="true") as refused:
        assert refused.response.status_code == 403
    async with websocket(live.url, user.access_token, all="true") as refused_ws:
        assert await refused_ws.close_code() == (4403, "forbidden")
    async with sse(live.url, admin.headers, all="true") as stream:
        await make_item(live.client, user, title="Seen by the admin")
        event = await stream.next()
    assert event["data"]["owner_id"] == user.id
    assert event["id"] is None  # live only: nothing to resume from


async def test_shutdown_ends_every_stream_with_going_away(live: Live) -> None:
    owner = await make_account(live.client)
    async with (
        websocket(live.url, owner.access_token) as socket,
        sse(live.url, owner.headers) as stream,
    ):
        assert (await socket.next())["type"] == "stream.ready"
        await asyncio.sleep(0.2)
        await live.state["live_events"].end_streams()
        assert await socket.close_code() == (1001, "server_shutdown")
        closing = await stream.next()
        assert closing["data"]["reason"] == "server_shutdown"
        assert stream.retry_ms == 1000
    assert live.state["live_events"].hub.open_streams == 0


async def test_bad_stream_input_gets_a_4xx(live: Live) -> None:
    owner = await make_account(live.client)
    async with sse(live.url, {**owner.headers, "Last-Event-ID": "-1"}) as stream:
        assert stream.response.status_code == 422
    async with websocket(live.url, owner.access_token) as socket:
        assert (await socket.next())["type"] == "stream.ready"
        await socket.connection.send("x" * 10_000)
        assert (await socket.close_code())[0] == 1009


async def test_a_websocket_is_one_span_and_one_access_line_however_many_messages(
    settings: Settings, empty_database: AsyncEngine, json_logs: LogFile
) -> None:
    exporter = InMemorySpanExporter()
    app = create_app(realtime_settings(settings), span_exporter=exporter)
    async with (
        started(app) as (served, _),
        serving(served, settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        owner = await make_account(client)
        async with websocket(url, owner.access_token) as socket:
            assert (await socket.next())["type"] == "stream.ready"
            for number in range(3):
                await make_item(client, owner, title=f"Item {number}")
            assert [(await socket.next())["id"] for _ in range(3)] == [1, 2, 3]
            exporter.clear()
        await asyncio.sleep(0.3)  # the server sees the close
    names = {s.name for s in exporter.get_finished_spans()}
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("/api/v1/ws")]
    assert len(spans) == 1, names
    assert spans[0].kind.name == "SERVER"
    line = next(line for line in json_logs.access_lines() if line["method"] == "WS")
    assert (line["route"], line["status"], line["user_id"]) == ("/api/v1/ws", 101, owner.id)
    assert line["close_code"] is None  # the client closed it
    assert line["trace_id"] == format(spans[0].context.trace_id, "032x")


async def test_events_past_the_retention_window_are_swept_and_a_resume_gets_a_reset(
    live: Live, empty_database: AsyncEngine
) -> None:
    owner = await make_account(live.client)
    for number in range(3):
        await make_item(live.client, owner, title=f"Item {number}")
    async with empty_database.begin() as connection:
        await connection.execute(
            update(ItemEvent)
            .where(ItemEvent.seq < 3)
            .values(created_at=utc_now() - timedelta(hours=25))
        )
    sweeper = live.state["jobs"].sweeper
    assert sweeper is not None
    await sweeper.sweep()
    async with empty_database.connect() as connection:
        kept = (await connection.execute(select(ItemEvent.seq))).scalars().all()
    assert kept == [3]
    async with sse(live.url, {**owner.headers, "Last-Event-ID": "0"}) as stream:
        reset = await stream.next()
    assert (reset["event"], reset["id"]) == ("stream.reset", "3")


async def test_without_redis_streams_say_so_still_deliver_and_resubscribe(
    backend: Backend, empty_database: AsyncEngine, tmp_path: Path
) -> None:
    """Redis stopped under open streams: a stream.delayed notice, writes still succeed and
    their events still arrive (from the event log, within catch_up_seconds); with Redis back,
    delivery is live again."""
    if backend.redis_url is None:
        pytest.skip("the embedded default has no Redis to lose")
    with running_redis(tmp_path) as redis_server:
        settings = realtime_settings(
            make_settings(backend.database_url, redis_server.url), catch_up_seconds=2.0
        )
        async with live_app(settings) as live:
            owner = await make_account(live.client)
            fan_out = live.state["live_events"].publisher
            assert isinstance(fan_out, RedisFanOut)
            async with websocket(live.url, owner.access_token) as socket:
                assert (await socket.next())["type"] == "stream.ready"
                await make_item(live.client, owner, title="Before")
                assert (await socket.next())["id"] == 1
                await asyncio.to_thread(redis_server.stop)
                assert (await socket.next())["type"] == "stream.delayed"
                await make_item(live.client, owner, title="During")
                during = await socket.next(within=5)
                assert (during["id"], during["item"]["title"]) == (2, "During")
                await asyncio.to_thread(redis_server.start)
                async with asyncio.timeout(10):
                    await fan_out.subscribed.wait()
                started_at = time.monotonic()
                await make_item(live.client, owner, title="After")
                after = await socket.next(within=5)
                assert (after["id"], after["item"]["title"]) == (3, "After")
                assert time.monotonic() - started_at < 1  # live, not the 2 s catch-up


async def test_an_imports_items_reach_the_stream_from_the_event_log(live: Live) -> None:
    owner = await make_account(live.client)
    rows = "title,priority\nFirst,1\nSecond,2\nThird,3\n"
    async with sse(live.url, owner.headers) as stream:
        response = await live.client.post(
            f"{API}/items/imports",
            files={"file": ("items.csv", rows.encode(), "text/csv")},
            headers=owner.headers,
        )
        assert response.status_code == 202, response.text
        events = [await stream.next() for _ in range(3)]
    assert [e["data"]["item"]["title"] for e in events] == ["First", "Second", "Third"]
    assert [e["id"] for e in events] == ["1", "2", "3"]
    assert {e["event"] for e in events} == {"item.created"}


async def test_an_api_key_streams_until_it_is_revoked_and_a_ticket_opens_one_stream(
    live: Live,
) -> None:
    owner = await make_account(live.client)
    key = await make_api_key(live.client, owner)
    async with sse(live.url, key.headers) as by_key:
        ticket = (
            await live.client.post(f"{API}/auth/stream-tickets", headers=owner.headers)
        ).json()["ticket"]
        async with sse(live.url, ticket=ticket) as by_ticket:
            await make_item(live.client, owner)
            assert (await by_ticket.next())["event"] == "item.created"
            assert (await by_key.next())["event"] == "item.created"
        async with sse(live.url, ticket=ticket) as reused:
            assert reused.response.status_code == 401  # single use
        async with websocket(live.url) as socket:
            await socket.connection.send(f'{{"type": "auth", "api_key": "{key.key}"}}')
            assert (await socket.next())["type"] == "stream.ready"
            revoked = await live.client.delete(
                f"{API}/service-accounts/{key.service_account_id}/keys/{key.id}",
                headers=owner.headers,
            )
            assert revoked.status_code == 204, revoked.text
            assert await socket.close_code() == (4401, "credentials_revoked")
        closing = await by_key.next()
        assert closing["data"]["reason"] == "credentials_revoked"
    key_without_scope = await make_api_key(live.client, owner, "profile:read")
    async with sse(live.url, key_without_scope.headers) as refused:
        assert refused.response.status_code == 403


async def test_a_websocket_while_the_database_is_away_is_told_to_come_back_later(
    backend: Backend, empty_database: AsyncEngine
) -> None:
    if backend.redis_url is None:
        pytest.skip("the embedded default's database is a file")
    with running_proxy(5432) as proxy:
        url = make_url(backend.database_url).set(port=proxy.port).render_as_string(False)
        async with live_app(realtime_settings(make_settings(url, backend.redis_url))) as live:
            owner = await make_account(live.client)  # its token not yet checked, nor cached
            await asyncio.to_thread(proxy.set_mode, ProxyMode.refuse)
            async with websocket(live.url, owner.access_token) as socket:
                assert await socket.close_code() == (1013, "database_unavailable")
            await asyncio.to_thread(proxy.set_mode, ProxyMode.forward)
