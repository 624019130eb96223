"""Request IDs, structured logs, metrics and traces, observed in-process: a JSON log stream the
test owns, an in-memory span exporter, and the app's own /metrics."""

import logging
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.observability.logging import (
    clear_log_context,
    configure_logging,
    log_context_setter,
    redact_secrets,
    redacted_log_context,
    reset_logging,
    write_access_line,
)
from service.settings import ObservabilitySettings, Settings
from tests.conftest import REDIS_URL, STANDARD, LogFile, make_settings
from tests.factories import API, make_account, make_item

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@asynccontextmanager
async def traced_client(
    settings: Settings, exporter: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, span_exporter=exporter)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
def observed_settings(database_url: str) -> Settings:
    return make_settings(database_url, observability=ObservabilitySettings(metrics_on_api=True))


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def client(
    observed_settings: Settings, exporter: InMemorySpanExporter, empty_database: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    async with traced_client(observed_settings, exporter) as http_client:
        yield http_client


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind.name == "SERVER"]


def trace_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


async def test_request_id_is_generated_returned_and_logged(
    client: httpx.AsyncClient, json_logs: LogFile
) -> None:
    response = await client.get(f"{API}/users/me")
    request_id = response.headers["x-request-id"]
    assert HEX32.match(request_id)
    [line] = json_logs.access_lines()
    assert line["request_id"] == request_id


async def test_probes_are_logged_only_when_they_fail(
    client: httpx.AsyncClient, json_logs: LogFile
) -> None:
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert json_logs.access_lines() == []
    assert (await client.post("/health/live")).status_code == 405
    assert [line["path"] for line in json_logs.access_lines()] == ["/health/live"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("req-42.abc:XYZ_9", True),
        ("x" * 65, False),
        ("evil\u2028id".encode(), False),
        ("a b", False),
        ('"}{"injected": 1', False),
    ],
)
async def test_inbound_request_id_is_accepted_only_when_safe(
    client: httpx.AsyncClient, json_logs: LogFile, sent: str | bytes, kept: bool
) -> None:
    response = await client.get(f"{API}/users/me", headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    assert (returned == sent) is kept
    if not kept:
        assert HEX32.match(returned)
    assert json_logs.access_lines()[0]["request_id"] == returned


async def test_every_error_carries_the_request_id(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    responses = [
        await client.get("/no/such/path"),
        await client.get(f"{API}/items/999", headers=account.headers),
        await client.post(f"{API}/items", json={"title": ""}, headers=account.headers),
        await client.get(f"{API}/users/me"),
        await client.delete("/health/live"),
    ]
    for response in responses:
        assert response.status_code >= 400
        assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_access_line_has_the_canonical_fields(
    client: httpx.AsyncClient, json_logs: LogFile, exporter: InMemorySpanExporter
) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    exporter.clear()
    response = await client.get(
        f"{API}/items/{item['id']}", headers={**account.headers, "X-Request-ID": "trace-me-1"}
    )
    line = json_logs.access_lines()[-1]
    assert line["event"] == "request"
    assert line["level"] == "info"
    assert line["method"] == "GET"
    assert line["route"] == "/api/v1/items/{item_id}"
    assert line["path"] == f"/api/v1/items/{item['id']}"
    assert line["status"] == 200
    assert line["client"] == "203.0.113.7:4321"
    assert line["user_id"] == account.id
    assert line["response_bytes"] == len(response.content)
    assert line["request_id"] == "trace-me-1"
    assert 0 < line["duration_ms"] < 5000
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", line["timestamp"])
    # The log line and the exported span name the same trace.
    [span] = server_spans(exporter)
    assert line["trace_id"] == trace_hex(span)
    assert span.attributes is not None
    assert span.attributes["http.request_id"] == "trace-me-1"
    # And the client is told which trace served it.
    version, trace_id, span_id, flags = response.headers["traceresponse"].split("-")
    assert (version, trace_id) == ("00", trace_hex(span))
    assert int(flags, 16) & 0x01  # sampled
    assert span.context is not None
    assert span_id == format(span.context.span_id, "016x")


async def test_console_access_lines_name_the_trace_too(
    observed_settings: Settings,
    exporter: InMemorySpanExporter,
    empty_database: AsyncEngine,
    tmp_path: Path,
) -> None:
    """Development's console lines: the access line is written after the span has ended, with
    its IDs handed over rather than read from the current context."""
    path = tmp_path / "console.log"
    with path.open("w") as stream:
        configure_logging(json=False, level="INFO", stream=stream, cache_loggers=False)
        try:
            async with traced_client(observed_settings, exporter) as client:
                await client.get(f"{API}/info")
        finally:
            reset_logging()
            logging.getLogger().handlers.clear()
    [span] = server_spans(exporter)
    [line] = [
        line for line in path.read_text().splitlines() if "request" in line and "/info" in line
    ]
    assert f"trace_id={trace_hex(span)}" in re.sub(r"\x1b\[[0-9;]*m", "", line)


async def test_what_a_request_binds_is_gone_when_it_ends(
    client: httpx.AsyncClient, json_logs: LogFile
) -> None:
    """The test client runs the app in the test's own context, as any caller that reuses one
    would: the user ID bound by one request must not reach the next (anonymous) one's line."""
    account = await make_account(client)
    await client.get(f"{API}/items", headers=account.headers)
    await client.get(f"{API}/info")
    signed_in, anonymous = json_logs.access_lines()[-2:]
    assert signed_in["user_id"] == account.id
    assert "user_id" not in anonymous
    assert anonymous["request_id"] != signed_in["request_id"]
    assert structlog.contextvars.get_contextvars() == {}


def test_the_request_context_helpers_bind_and_clear_what_structlog_reads() -> None:
    structlog.contextvars.clear_contextvars()
    try:
        set_request_id = log_context_setter("request_id")
        set_request_id("r-1")
        structlog.contextvars.bind_contextvars(user_id=7)
        assert structlog.contextvars.get_contextvars() == {"request_id": "r-1", "user_id": 7}
        set_request_id("r-2")
        assert structlog.contextvars.get_contextvars()["request_id"] == "r-2"
        clear_log_context()
        assert structlog.contextvars.get_contextvars() == {}
    finally:
        structlog.contextvars.clear_contextvars()


def test_timestamps_are_utc_with_microseconds_across_seconds_and_clock_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timestamper formats the date and time of day once a second: lines within, across
    and (after the clock is set back) before a cached second all read as datetime would."""
    import time

    from service.observability.logging import _UtcTimestamper

    stamp = _UtcTimestamper()
    for now in (1764748799.25, 1764748799.999999, 1764748800.0, 1764748800.5, 1764700000.125):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        expected = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert stamp(None, "", {})["timestamp"] == expected


@pytest.mark.parametrize(
    "bound",
    [
        {},
        {"request_id": "r-1", "user_id": 7},
        {"Token": 12, "ratio": 0.5, "nothing": None, "plain": "text"},
        {"api_key": "k-1", "SECRET": "s-1", "password": None},
        {"upstream": "https://svc:pw@upstream.example/v1", "note": "Bearer%20abc.def"},
        {"forwarded": {"Authorization": "Bearer t", "depth": [{"cookie": "c"}]}},
        {"ids": (1, "postgresql://u:p@db/x"), "flag": True},
    ],
)
def test_the_access_line_context_is_redacted_as_the_processor_chain_would(
    bound: dict[str, Any],
) -> None:
    """redacted_log_context() gives what the chain's merge_contextvars + redact_secrets give,
    and leaves the bound values themselves as they were (twice in a row)."""
    structlog.contextvars.clear_contextvars()
    try:
        structlog.contextvars.bind_contextvars(**bound)
        for _ in range(2):
            expected = redact_secrets(None, "", structlog.contextvars.get_contextvars())
            assert redacted_log_context() == expected
            assert structlog.contextvars.get_contextvars() == bound
    finally:
        structlog.contextvars.clear_contextvars()


async def test_domain_log_lines_carry_request_and_trace_ids(
    client: httpx.AsyncClient, json_logs: LogFile, exporter: InMemorySpanExporter
) -> None:
    response = await client.post(
        f"{API}/auth/register", json={"email": "ids@example.com", "password": "long-enough-1"}
    )
    [created] = [line for line in json_logs.lines() if line["event"] == "user_created"]
    assert created["request_id"] == response.headers["x-request-id"]
    assert created["logger"] == "service.users.service"
    assert created["trace_id"] == trace_hex(server_spans(exporter)[-1])
    assert HEX32.match(created["trace_id"])
    assert re.match(r"^[0-9a-f]{16}$", created["span_id"])


async def test_background_work_after_the_response_stays_in_the_requests_trace(
    client: httpx.AsyncClient, json_logs: LogFile, exporter: InMemorySpanExporter
) -> None:
    response = await client.post(
        f"{API}/auth/register", json={"email": "welcome@example.com", "password": "long-enough-1"}
    )
    assert response.status_code == 201
    [welcome] = [line for line in json_logs.lines() if line["event"] == "welcome_notification_sent"]
    assert welcome["user_id"] == response.json()["id"]
    assert welcome["request_id"] == response.headers["x-request-id"]
    assert welcome["trace_id"] == trace_hex(server_spans(exporter)[-1])


API_KEY_SECRET = "S3cretS3cretS3cretS3cretS3cretS3cretS3cret1"
API_KEY = f"gh_0123456789abcdef_{API_KEY_SECRET}"


async def test_secrets_never_reach_the_log(client: httpx.AsyncClient, json_logs: LogFile) -> None:
    account = await make_account(client, password="hunter2-but-longer")
    await client.post(
        f"{API}/auth/refresh",
        json={"refresh_token": account.refresh_token},
        headers=account.headers,
    )
    log = structlog.get_logger("tests.redaction")
    log.info(
        "with_secrets",
        password="p4ss",
        headers={"Authorization": "Bearer abc.def.ghi", "Cookie": "session=1", "X-API-Key": "k"},
        refresh_token="r-token",
        database="postgresql+asyncpg://app:db-secret@db:5432/app",
        nested=[{"jwt_secret": "s3cret"}],
        note="sent Bearer abc.def.ghi to the server",
        pasted_key=f"tried {API_KEY}",
    )
    logging.getLogger("sqlalchemy.pool").warning(
        "reconnecting to postgresql://app:db-secret@db/app"
    )
    # A token pasted into a URL: the access line's path is redacted too.
    # No item id, so no route: a 404, and the path still never reaches the log.
    assert (await client.get(f"{API}/items/Bearer abc.def.ghi")).status_code == 404
    assert (await client.get(f"{API}/items?key={API_KEY}")).status_code == 401
    text = json_logs.path.read_text()
    for secret in (
        "hunter2",
        account.access_token,
        account.refresh_token,
        "p4ss",
        "abc.def.ghi",
        "session=1",
        "r-token",
        "db-secret",
        "s3cret",
        API_KEY_SECRET,
    ):
        assert secret not in text
    line = next(line for line in json_logs.lines() if line["event"] == "with_secrets")
    assert line["headers"] == dict.fromkeys(("Authorization", "Cookie", "X-API-Key"), "[redacted]")
    assert line["pasted_key"] == "tried gh_0123456789abcdef_[redacted]"
    assert line["database"] == "postgresql+asyncpg://app:[redacted]@db:5432/app"
    [pasted] = [line for line in json_logs.access_lines() if "Bearer" in line["path"]]
    assert pasted["path"] == f"{API}/items/Bearer [redacted]"
    stdlib_line = next(line for line in json_logs.lines() if line["logger"] == "sqlalchemy.pool")
    assert stdlib_line["level"] == "warning"
    assert stdlib_line["event"] == "reconnecting to postgresql://app:[redacted]@db/app"


def test_the_access_line_redacts_what_the_request_bound(json_logs: LogFile) -> None:
    """The access line renders the request's log context itself (not through the processor
    chain): a key bound for the first time mid-request is still found and redacted."""
    structlog.contextvars.bind_contextvars(request_id="r-9", user_id=7)
    write_access_line({"path": "/first"}, failed=False, span_context=trace.INVALID_SPAN_CONTEXT)
    structlog.contextvars.bind_contextvars(
        api_key="k-123",
        upstream="https://svc:pw-456@upstream.example/v1",
        forwarded={"Authorization": "Bearer t-789"},
    )
    write_access_line({"path": "/second"}, failed=True, span_context=trace.INVALID_SPAN_CONTEXT)
    clear_log_context()
    first, second = json_logs.access_lines()
    assert (first["request_id"], first["user_id"], first["level"]) == ("r-9", 7, "info")
    assert "api_key" not in first
    assert (second["request_id"], second["user_id"], second["level"]) == ("r-9", 7, "error")
    assert second["api_key"] == "[redacted]"
    assert second["upstream"] == "https://svc:[redacted]@upstream.example/v1"
    assert second["forwarded"] == {"Authorization": "[redacted]"}
    for secret in ("k-123", "pw-456", "t-789"):
        assert secret not in json_logs.path.read_text()


async def test_unhandled_exception_is_logged_once_with_request_id(
    observed_settings: Settings,
    exporter: InMemorySpanExporter,
    json_logs: LogFile,
    empty_database: AsyncEngine,
) -> None:
    app = create_app(observed_settings, span_exporter=exporter)

    @app.get("/explode")
    async def explode() -> None:
        raise ZeroDivisionError("the SQL was SELECT secret")

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/explode")
    assert response.status_code == 500
    assert "SELECT" not in response.text
    request_id = response.headers["x-request-id"]
    assert response.json()["request_id"] == request_id

    errors = [line for line in json_logs.lines() if "exception" in line]
    assert len(errors) == 1
    [error] = errors
    assert error["request_id"] == request_id
    assert error["event"] == "unhandled_exception"
    assert error["exception"][0]["exc_type"] == "ZeroDivisionError"
    assert error["exception"][0]["frames"]  # a structured traceback, not a text blob
    [access] = json_logs.access_lines()
    assert access["status"] == 500
    assert access["level"] == "error"
    [span] = server_spans(exporter)
    assert span.status.status_code.name == "ERROR"
    assert [event.name for event in span.events] == ["exception"]  # recorded once
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 500
    assert span.attributes["http.request_id"] == request_id
    # The error line and the access line were written inside the span.
    assert error["trace_id"] == access["trace_id"] == trace_hex(span)


async def test_request_touching_the_database_has_db_child_spans(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    exporter.clear()
    # no-cache: the item is read from the database (the session check stays cached).
    await client.get(
        f"{API}/items/{item['id']}", headers={**account.headers, "Cache-Control": "no-cache"}
    )
    spans = exporter.get_finished_spans()
    [server] = server_spans(exporter)
    assert server.name == "GET /api/v1/items/{item_id}"
    assert server.context is not None
    db_spans = [span for span in spans if span.attributes and "db.system" in span.attributes]
    assert db_spans
    for span in db_spans:
        assert span.kind.name == "CLIENT"
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
        assert span.context is not None
        assert span.context.trace_id == server.context.trace_id
    statements = " ".join(str(span.attributes.get("db.statement", "")) for span in db_spans)  # type: ignore[union-attr]
    assert "items" in statements


async def test_cache_round_trips_are_client_spans_of_the_request(
    database_url: str, exporter: InMemorySpanExporter, empty_database: AsyncEngine
) -> None:
    redis_url = httpx.URL(REDIS_URL)
    async with traced_client(make_settings(database_url, REDIS_URL), exporter) as client:
        account = await make_account(client)
        item = await make_item(client, account)
        url = f"{API}/items/{item['id']}"
        assert (await client.get(url, headers=account.headers)).status_code == 200
        exporter.clear()
        assert (await client.get(url, headers=account.headers)).status_code == 200  # cached
    [server] = server_spans(exporter)
    assert server.context is not None
    # Two round trips: the login-session check, then the cached answer. (Only this request's:
    # an earlier write's invalidation, retried in the background when Redis was slow to take
    # it, ends in its own request's trace.)
    round_trips = [
        span
        for span in exporter.get_finished_spans()
        if span.kind.name == "CLIENT" and span.context.trace_id == server.context.trace_id
    ]
    assert len(round_trips) == 2
    for mget in round_trips:
        assert mget.parent is not None
        assert mget.parent.span_id == server.context.span_id
        assert mget.name == "MGET"
        assert mget.attributes is not None
        if STANDARD:  # opentelemetry-instrumentation-redis: the older database conventions
            attributes = dict(mget.attributes)
            assert str(attributes.pop("db.statement")).startswith("MGET ?")  # keys left out
            assert attributes.pop("db.redis.args_length")
            assert attributes == {
                "db.system": "redis",
                "db.redis.database_index": int(redis_url.path.strip("/") or 0),
                "server.address": redis_url.host,
                "server.port": redis_url.port,
                "network.transport": "tcp",
            }
        else:
            assert mget.attributes == {
                "db.system": "redis",
                "db.system.name": "redis",
                "db.namespace": redis_url.path.strip("/") or "0",
                "db.operation.name": "MGET",
                "server.address": redis_url.host,
                "server.port": redis_url.port,
            }
        assert mget.status.status_code.name == "UNSET"


async def test_a_failed_cache_round_trip_is_an_error_span(
    database_url: str, exporter: InMemorySpanExporter, empty_database: AsyncEngine
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_redis = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    async with traced_client(make_settings(database_url, dead_redis), exporter) as client:
        # The cache is down (the breaker opens at the first failure); the API works all the same.
        account = await make_account(client)
        await make_item(client, account)
    failed = [span for span in exporter.get_finished_spans() if span.kind.name == "CLIENT"]
    redis_spans = [
        span for span in failed if span.attributes and span.attributes.get("db.system") == "redis"
    ]
    assert redis_spans
    for span in redis_spans:
        assert span.status.status_code.name == "ERROR"
        assert [event.name for event in span.events] == ["exception"]


async def test_inbound_traceparent_is_continued(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await client.get(f"{API}/users/me", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    [span] = server_spans(exporter)
    assert trace_hex(span) == trace_id
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == parent_id


async def test_the_server_span_carries_the_http_semantic_conventions(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    exporter.clear()
    response = await client.get(f"{API}/items/{item['id']}", headers=account.headers)
    [span] = server_spans(exporter)
    assert span.name == "GET /api/v1/items/{item_id}"
    assert span.parent is None
    expected = {
        "http.request.method": "GET",
        "url.path": f"{API}/items/{item['id']}",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.request_id": response.headers["x-request-id"],
        "client.address": "203.0.113.7",
        "server.address": "test",  # no port: the test transport's scope has none
        "glasshouse.cache.result": "miss",  # set by the items router
        "http.route": "/api/v1/items/{item_id}",
        "http.response.status_code": 200,
    }
    if STANDARD:  # what opentelemetry-instrumentation-asgi adds or spells its own way
        expected |= {
            "server.address": "test:None",  # host and port, whatever the port
            "client.port": 4321,
            "user_agent.original": f"python-httpx/{httpx.__version__}",
        }
    assert span.attributes == expected
    assert span.status.status_code.name == "UNSET"


@pytest.mark.parametrize(
    "headers",
    [
        {"baggage": "tenant=7"},
        {"traceparent": "00-not-a-trace-01"},
        {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"},  # all-zero trace ID: invalid
    ],
)
async def test_a_request_without_a_valid_inbound_trace_is_sampled_by_ratio(
    database_url: str,
    exporter: InMemorySpanExporter,
    empty_database: AsyncEngine,
    headers: dict[str, str],
) -> None:
    """Propagation headers that carry no trace decide nothing: the root ratio does."""
    settings = make_settings(
        database_url, observability=ObservabilitySettings(trace_sample_ratio=0.0)
    )
    async with traced_client(settings, exporter) as client:
        response = await client.get(f"{API}/info", headers=headers)
    assert response.status_code == 200
    if STANDARD:  # the SDK's sampler: a trace ID all the same, marked not sampled
        flags = response.headers["traceresponse"].rsplit("-", 1)[1]
        assert not int(flags, 16) & 0x01
    else:  # the middleware's own root sampling: no trace at all
        assert "traceresponse" not in response.headers
    assert exporter.get_finished_spans() == ()


async def test_probes_and_metrics_are_not_traced(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert (await client.get(path)).status_code == 200
    assert exporter.get_finished_spans() == ()


async def test_resource_names_the_service(
    database_url: str, exporter: InMemorySpanExporter, empty_database: AsyncEngine
) -> None:
    settings = make_settings(
        database_url,
        service_name="glasshouse-test",
        pod_name="web-7d9f",
        pod_namespace="shop",
    )
    async with traced_client(settings, exporter) as client:
        await client.get(f"{API}/users/me")
    [span] = server_spans(exporter)
    attributes = dict(span.resource.attributes)
    assert attributes["service.name"] == "glasshouse-test"
    assert attributes["deployment.environment"] == "test"
    assert attributes["k8s.pod.name"] == "web-7d9f"
    assert attributes["k8s.namespace.name"] == "shop"
    assert attributes["service.version"]
    assert attributes["service.instance.id"]


def series(metrics_text: str, name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, value = line.rsplit(" ", 1)
            found[labels] = float(value)
    return found


async def test_http_metrics_use_route_templates_and_ignore_probes(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    item = await make_item(client, account)
    before = series((await client.get("/metrics")).text, "http_requests_total")
    for _ in range(3):
        await client.get(f"{API}/items/{item['id']}", headers=account.headers)
        await client.get("/health/ready")
    after = series((await client.get("/metrics")).text, "http_requests_total")
    key = 'http_requests_total{handler="/api/v1/items/{item_id}",method="GET",status="2xx"}'
    assert after[key] - before.get(key, 0) == 3
    assert not [labels for labels in after if "/health" in labels or "/metrics" in labels]
    concrete_path = f'handler="{API}/items/{item["id"]}"'
    assert not any(concrete_path in labels for labels in after)


async def test_unknown_paths_do_not_create_series(client: httpx.AsyncClient) -> None:
    await client.get("/scan/warmup")
    before = (await client.get("/metrics")).text
    for attempt in range(20):
        await client.get(f"/wp-admin/{attempt}/setup.php")
    after = (await client.get("/metrics")).text
    for name in ("http_requests_total", "http_request_duration_seconds_bucket"):
        assert series(after, name).keys() == series(before, name).keys()
    assert "wp-admin" not in after
    none_key = 'http_requests_total{handler="none",method="GET",status="4xx"}'
    assert series(after, "http_requests_total")[none_key] >= 20


async def test_domain_metrics_count_events(client: httpx.AsyncClient) -> None:
    def value(text: str, key: str) -> float:
        return series(text, key.split("{")[0]).get(key, 0.0)

    before = (await client.get("/metrics")).text
    account = await make_account(client)
    item = await make_item(client, account)
    await client.delete(f"{API}/items/{item['id']}", headers=account.headers)
    await client.post(f"{API}/auth/token", data={"username": account.email, "password": "nope"})
    await client.post(f"{API}/auth/refresh", json={"refresh_token": account.refresh_token})
    await client.post(f"{API}/auth/logout", headers=account.headers)
    after = (await client.get("/metrics")).text
    for key, delta in {
        'glasshouse_login_attempts_total{outcome="success"}': 1,
        'glasshouse_login_attempts_total{outcome="invalid_credentials"}': 1,
        "glasshouse_items_created_total": 1,
        "glasshouse_items_deleted_total": 1,
        "glasshouse_tokens_refreshed_total": 1,
        'glasshouse_sessions_revoked_total{reason="logout"}': 1,
    }.items():
        assert value(after, key) - value(before, key) == delta, key
    assert 'glasshouse_app_info{build="dev",version=' in after
    assert 'glasshouse_cache_requests_total{result="hit"}' in after


# Run in a process of its own: a global tracer provider can be set once per process.
_GLOBAL_PROVIDER_SCRIPT = """
import asyncio, httpx, sys
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from service.main import create_app
from tests.conftest import make_settings

global_spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(global_spans))
trace.set_tracer_provider(provider)  # as opentelemetry-instrument, or another library, would

async def main():
    ours = InMemorySpanExporter()
    app = create_app(make_settings("sqlite+aiosqlite://"), span_exporter=ours)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/api/v1/info")).status_code == 200
    print(len(global_spans.get_finished_spans()), len(ours.get_finished_spans()))

asyncio.run(main())
"""


def test_fastapis_own_telemetry_stays_off_when_a_global_provider_is_set() -> None:
    """FastAPI 0.165 traces every request itself once a global tracer provider exists; the
    service traces its own, so that would be a second server span per request."""
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-c", _GLOBAL_PROVIDER_SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    global_count, our_count = completed.stdout.split()[-2:]
    assert (global_count, our_count) == ("0", "1")
