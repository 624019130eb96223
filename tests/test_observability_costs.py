"""What keeps observability cheap must not change what it reports: HTTP metrics add up to what
was served, pool gauges are read when they are flushed, root sampling keeps the configured
share of traces (and respects an upstream decision), and the access line honours the log
level."""

import asyncio
import json
import logging
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT as NO_SPAN
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.observability import tracing
from service.observability.http_metrics import HttpMetrics
from service.observability.logging import (
    configure_logging,
    flush_logs,
    reset_logging,
    write_access_line,
)
from service.settings import ObservabilitySettings, OtelSettings, Settings
from tests.conftest import STANDARD, make_settings, started
from tests.factories import API, make_account, make_item


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_http_metrics_add_up_to_what_was_served() -> None:
    route = f"/test/{uuid.uuid4().hex}"  # series of this test only
    recorder = HttpMetrics(flush_seconds=60)
    in_progress = sample("http_requests_inprogress", method="GET")
    for seconds, status in ((0.003, 200), (0.02, 200), (20.0, 503)):
        recorder.started("GET")
        recorder.finished(
            method="GET",
            route=route,
            status=status,
            seconds=seconds,
            request_bytes=10,
            response_bytes=100,
        )
    recorder.started("GET")  # still in flight

    assert sample("http_requests_total", handler=route, method="GET", status="2xx") == 2
    assert sample("http_requests_total", handler=route, method="GET", status="5xx") == 1
    duration = "http_request_duration_seconds_bucket"
    assert sample(duration, handler=route, method="GET", le="0.005") == 1
    assert sample(duration, handler=route, method="GET", le="0.025") == 2
    assert sample(duration, handler=route, method="GET", le="10.0") == 2
    assert sample(duration, handler=route, method="GET", le="+Inf") == 3
    assert sample(
        "http_request_duration_seconds_sum", handler=route, method="GET"
    ) == pytest.approx(20.023)
    assert sample("http_request_size_bytes_count", handler=route) == 3
    assert sample("http_request_size_bytes_sum", handler=route) == 30
    assert sample("http_response_size_bytes_sum", handler=route) == 300
    assert sample("http_requests_inprogress", method="GET") == in_progress + 1
    recorder.finished("GET", route, 200, 0.01, 0, 0)
    assert sample("http_requests_inprogress", method="GET") == in_progress
    recorder.flush()  # samples gauges only: writes no request twice
    assert sample("http_requests_total", handler=route, method="GET", status="2xx") == 3


async def test_gauges_are_sampled_by_themselves_while_requests_come_in() -> None:
    recorder = HttpMetrics(flush_seconds=0.05)
    samples: list[None] = []
    recorder.sample_on_flush(lambda: samples.append(None))
    recorder.started("GET")
    assert samples == []
    await asyncio.sleep(0.3)
    assert len(samples) == 1
    recorder.finished("GET", "/test/sampled", 200, 0.01, 0, 2)
    await asyncio.sleep(0.3)
    assert len(samples) == 2
    await asyncio.sleep(0.2)  # no requests: no more samples
    assert len(samples) == 2


async def traced_requests(
    ratio: float, empty_database: AsyncEngine, database_url: str, requests: list[dict[str, str]]
) -> InMemorySpanExporter:
    """Sends one cache-bypassing item read per entry of ``requests`` (its extra headers)."""
    exporter = InMemorySpanExporter()
    settings = make_settings(
        database_url, observability=ObservabilitySettings(trace_sample_ratio=ratio)
    )
    app = create_app(settings, span_exporter=exporter)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            account = await make_account(client)
            item = await make_item(client, account)
            exporter.clear()
            for extra in requests:
                headers = {**account.headers, "Cache-Control": "no-cache", **extra}
                response = await client.get(f"{API}/items/{item['id']}", headers=headers)
                assert response.status_code == 200
    return exporter


@asynccontextmanager
async def started_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncEngine]]:
    app = create_app(settings)
    async with started(app) as (_, state):
        yield app, state["engine"]


async def test_pool_gauges_are_sampled_when_metrics_are_flushed(
    database_url: str, empty_database: AsyncEngine
) -> None:
    settings = make_settings(database_url)
    async with started_app(settings) as (app, engine):
        http_metrics: HttpMetrics = app.state.http_metrics
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            http_metrics.flush()
            while_held = sample("glasshouse_db_pool_connections", state="in_use")
        http_metrics.flush()
        after_release = sample("glasshouse_db_pool_connections", state="in_use")
    if settings.database.is_sqlite:
        assert while_held == after_release  # no server connections to count: not sampled
    else:
        assert (while_held, after_release) == (1, 0)
        assert sample("glasshouse_db_pool_size") == (
            settings.database.pool_size + settings.database.max_overflow
        )


async def test_new_database_connections_are_counted_and_reused_ones_are_not(
    database_url: str, empty_database: AsyncEngine
) -> None:
    settings = make_settings(database_url)
    async with started_app(settings) as (_, engine):
        before = sample("glasshouse_db_connections_opened_total")
        for _ in range(3):  # one connection, checked out three times
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        after_reuse = sample("glasshouse_db_connections_opened_total")
        idle = engine.sync_engine.pool.checkedin()  # type: ignore[attr-defined]
        async with AsyncExitStack() as stack:
            for _ in range(idle + 1):  # every idle connection, and one more
                connection = await stack.enter_async_context(engine.connect())
                await connection.execute(text("SELECT 1"))
        after_one_more = sample("glasshouse_db_connections_opened_total")
    if settings.database.is_sqlite:  # a file, not a server: not counted
        assert after_one_more == before
    else:
        assert after_reuse - before <= 1  # none, or the first (the lifespan may have opened it)
        assert after_one_more - after_reuse == 1


async def test_unsampled_requests_make_no_spans_at_all(
    empty_database: AsyncEngine, database_url: str
) -> None:
    exporter = await traced_requests(0.0, empty_database, database_url, [{}] * 5)
    # Not even the database's child spans: the request has no trace to belong to.
    assert exporter.get_finished_spans() == ()


async def test_an_upstream_sampling_decision_wins_over_the_ratio(
    empty_database: AsyncEngine, database_url: str
) -> None:
    sampled = {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
    not_sampled = {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"}
    exporter = await traced_requests(0.0, empty_database, database_url, [sampled, not_sampled])
    spans = exporter.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in spans if span.context} == {
        sampled["traceparent"].split("-")[1]
    }
    assert any(span.attributes and "db.system" in span.attributes for span in spans)


async def test_the_sample_ratio_is_the_share_of_requests_traced(
    empty_database: AsyncEngine, database_url: str
) -> None:
    exporter = await traced_requests(0.5, empty_database, database_url, [{}] * 200)
    traced = [span for span in exporter.get_finished_spans() if span.kind.name == "SERVER"]
    # Binomial(200, 0.5): outside 70..130 about once in 10^5 runs.
    assert 70 <= len(traced) <= 130


async def test_access_line_follows_the_log_level(
    empty_database: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "service.log"
    settings = make_settings(database_url)
    with path.open("w") as stream:
        configure_logging(json=True, level="WARNING", stream=stream, cache_loggers=False)
        try:
            app = create_app(settings)
            async with LifespanManager(app) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    assert (await client.get(f"{API}/info")).status_code == 200
        finally:
            reset_logging()
            logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert not [line for line in lines if line.get("logger") == "glasshouse.access"]


async def test_access_lines_wait_in_the_buffer_but_never_out_of_order(tmp_path: Path) -> None:
    path = tmp_path / "service.log"

    def access(request_path: str) -> None:
        write_access_line({"path": request_path, "status": 200}, failed=False, span_context=NO_SPAN)

    def logged() -> list[str]:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [line.get("path") or line["event"] for line in lines]

    with path.open("w") as stream:
        configure_logging(json=True, stream=stream, cache_loggers=False, access_flush_seconds=0.2)
        try:
            access("/first")
            assert logged() == []  # buffered
            await asyncio.sleep(0.4)
            assert logged() == ["/first"]  # flushed by the timer
            access("/second")
            structlog.get_logger("tests").info("domain_event")  # flushes what waits before it
            assert logged() == ["/first", "/second", "domain_event"]
            access("/last")
            flush_logs()  # as the lifespan does at shutdown
            assert logged() == ["/first", "/second", "domain_event", "/last"]
        finally:
            reset_logging()
            logging.getLogger().handlers.clear()


async def test_buffered_access_lines_hold_little_more_than_their_text(tmp_path: Path) -> None:
    """Lines wait in the buffer for up to a second, thousands of them under load. orjson's
    OPT_APPEND_NEWLINE returned each line in a 4 KiB allocation (about 320 bytes otherwise)."""
    with (tmp_path / "service.log").open("w") as stream:
        configure_logging(json=True, stream=stream, cache_loggers=False, access_flush_seconds=60)
        try:
            tracemalloc.start()
            try:
                for number in range(1000):
                    write_access_line(
                        {"path": f"/items/{number}", "status": 200},
                        failed=False,
                        span_context=NO_SPAN,
                    )
                held, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert (tmp_path / "service.log").read_text() == ""  # all of them still waiting
            flush_logs()
        finally:
            reset_logging()
            logging.getLogger().handlers.clear()
    assert held / 1000 < 1024
    assert len((tmp_path / "service.log").read_text().splitlines()) == 1000


@pytest.mark.parametrize(
    ("sampler", "argument", "root_ratio", "sdk_decides"),
    [
        (None, None, 0.25, False),  # ours: GLASSHOUSE_OBSERVABILITY__TRACE_SAMPLE_RATIO
        ("parentbased_traceidratio", "0.1", 0.1, False),  # the documented production setting
        ("parentbased_traceidratio", None, 1.0, False),
        ("always_off", None, 1.0, True),  # any other sampler: the SDK's, unchanged
        ("parentbased_traceidratio", "lots", 1.0, True),
    ],
)
def test_root_sampling_applies_to_parent_based_ratio_samplers_only(
    sampler: str | None,
    argument: str | None,
    root_ratio: float,
    sdk_decides: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if sampler:  # what the SDK itself reads when it decides
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument or "")
    settings = make_settings(
        "sqlite+aiosqlite://",
        observability=ObservabilitySettings(trace_sample_ratio=0.25),
        otel=OtelSettings(traces_sampler=sampler, traces_sampler_arg=argument),
    )
    assert tracing.root_sample_ratio(settings) == root_ratio
    provider = tracing.create_tracer_provider(settings, exporter=InMemorySpanExporter())
    assert provider is not None
    description = provider.sampler.get_description()
    if not STANDARD:
        # Ours roots every trace it is handed (the middleware did the sampling); the SDK's not.
        assert description.startswith("ParentBased{root:AlwaysOnSampler") != sdk_decides
    elif not sdk_decides:  # the standard instrumentation: the SDK's ratio sampler, given the ratio
        assert description.startswith(f"ParentBased{{root:TraceIdRatioBased{{{root_ratio}}}")
