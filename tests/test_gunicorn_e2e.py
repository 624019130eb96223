"""The production command, end to end: gunicorn with 2 uvicorn workers on PostgreSQL, traces
exported over OTLP/HTTP to a sink this test runs, logs read from the process's stdout."""

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import STANDARD
from tests.processes import (
    Gunicorn,
    OtlpSink,
    free_port,
    migrated_postgres_database,
    running_gunicorn,
    running_otlp_sink,
)

REQUESTS = 40
ITEMS_KEY = 'http_requests_total{handler="/api/v1/items",method="GET",status="2xx"}'


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with running_otlp_sink() as otlp_sink:
        yield otlp_sink


@pytest.fixture
def service(database_url: str, sink: OtlpSink, tmp_path: Path) -> Iterator[Gunicorn]:
    with running_gunicorn(
        database_url,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",
        GLASSHOUSE_OBSERVABILITY__METRICS_ON_API="true",
    ) as server:
        yield server


def metric(text: str, key: str) -> float:
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def settled_metric(url: str, key: str, expected: float, timeout: float = 5) -> float:
    """The value once every worker's update has reached the multiprocess files."""
    deadline = time.monotonic() + timeout
    while (value := metric(httpx.get(url).text, key)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def series_names(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


def send_requests(service: Gunicorn, headers: dict[str, str], count: int) -> list[httpx.Response]:
    # A new connection per request, so the kernel spreads them over both workers.
    return [httpx.get(f"{service.url}/api/v1/items", headers=headers) for _ in range(count)]


def test_metrics_are_whole_whichever_worker_answers(service: Gunicorn) -> None:
    headers = service.new_account_headers()
    responses = send_requests(service, headers, REQUESTS)
    assert all(response.status_code == 200 for response in responses)
    assert all(re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]) for r in responses)
    assert len({response.headers["x-request-id"] for response in responses}) == REQUESTS

    # The master's listener and every worker's /metrics agree on the whole pod's total, once
    # the workers have flushed (within a second).
    assert settled_metric(service.metrics_url, ITEMS_KEY, REQUESTS) == REQUESTS
    for _ in range(10):
        assert metric(httpx.get(f"{service.url}/metrics").text, ITEMS_KEY) == REQUESTS


def test_scans_of_unknown_paths_add_no_series(service: Gunicorn) -> None:
    unknown = 'http_requests_total{handler="none",method="GET",status="4xx"}'
    httpx.get(f"{service.url}/warm/up")
    assert settled_metric(service.metrics_url, unknown, 1) == 1
    before = series_names(httpx.get(service.metrics_url).text)
    for attempt in range(25):
        assert httpx.get(f"{service.url}/{uuid.uuid4().hex}/{attempt}").status_code == 404
    assert settled_metric(service.metrics_url, unknown, 26) == 26
    after = series_names(httpx.get(service.metrics_url).text)
    assert after == before


def test_killed_worker_is_replaced_and_counters_never_go_back(service: Gunicorn) -> None:
    headers = service.new_account_headers()
    send_requests(service, headers, 10)
    workers = service.worker_pids()
    before = settled_metric(service.metrics_url, ITEMS_KEY, 10)
    assert before == 10

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = service.worker_pids()
        if len(current) == 2 and victim not in current:
            break
        # Whatever the moment, the total never drops below what was counted.
        assert metric(httpx.get(service.metrics_url).text, ITEMS_KEY) >= before
        time.sleep(0.1)
    else:
        pytest.fail(f"gunicorn did not replace worker {victim}: {service.logs()}")
    service.wait_for_workers(2)
    assert metric(httpx.get(service.metrics_url).text, ITEMS_KEY) == before
    send_requests(service, headers, 5)
    assert settled_metric(service.metrics_url, ITEMS_KEY, before + 5) == before + 5


def test_sigterm_flushes_every_span_and_logs_name_their_trace(
    service: Gunicorn, sink: OtlpSink
) -> None:
    headers = service.new_account_headers()
    responses = send_requests(service, headers, REQUESTS)
    request_ids = {response.headers["x-request-id"] for response in responses}
    trace_ids = {response.headers["traceresponse"].split("-")[1] for response in responses}
    assert len(trace_ids) == REQUESTS

    assert service.stop(signal.SIGTERM) == 0

    spans = sink.snapshot()
    server_spans = {s.trace_id: s for s in spans if s.name == "GET /api/v1/items"}
    assert trace_ids <= server_spans.keys(), "spans lost at shutdown"
    for trace_id in trace_ids:
        server = server_spans[trace_id]
        db_children = [
            s for s in spans if s.trace_id == trace_id and s.parent_span_id == server.span_id
        ]
        assert db_children, "a request that reads the database has DB child spans"
        assert server.attributes["http.request_id"] in request_ids
        # The stable HTTP attribute names, whichever instrumentation made the span.
        assert server.attributes["http.request.method"] == "GET"
        assert server.attributes["http.route"] == server.attributes["url.path"] == "/api/v1/items"
        assert server.attributes["http.response.status_code"] == 200
        # The workers ran the instrumentation the tests asked for (only the library's spans
        # name the user agent).
        assert ("user_agent.original" in server.attributes) is STANDARD
        assert server.resource["service.name"] == "glasshouse"
        assert server.resource["deployment.environment"] == "production"

    access = {
        line["request_id"]: line
        for line in service.log_lines()
        if line.get("logger") == "glasshouse.access" and line.get("route") == "/api/v1/items"
    }
    assert request_ids <= access.keys()
    for request_id in request_ids:
        line = access[request_id]
        assert line["trace_id"] in trace_ids
        assert server_spans[line["trace_id"]].attributes["http.request_id"] == request_id
        assert server_spans[line["trace_id"]].span_id == line["span_id"]
    # Every line the process wrote, gunicorn's and uvicorn's included, is JSON.
    non_json = [line for line in service.logs().splitlines() if not line.startswith("{")]
    assert non_json == []


def test_sigterm_does_not_hang_when_the_collector_is_down(
    database_url: str, tmp_path: Path
) -> None:
    nobody_listens = f"http://127.0.0.1:{free_port()}"
    with running_gunicorn(
        database_url,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=nobody_listens,
        GLASSHOUSE_OBSERVABILITY__TRACE_EXPORT_TIMEOUT_SECONDS="1",
        GLASSHOUSE_OBSERVABILITY__TRACE_SHUTDOWN_TIMEOUT_SECONDS="2",
        GLASSHOUSE_SERVER__DRAIN_SECONDS="0",
    ) as service:
        headers = service.new_account_headers()
        assert all(r.status_code == 200 for r in send_requests(service, headers, 20))
        started = time.monotonic()
        assert service.stop(signal.SIGTERM) == 0
        stopped_in = time.monotonic() - started
    # Bounded by the flush timeout (2 s) plus the export in progress (1 s), not by retries.
    assert stopped_in < 8, f"shutdown took {stopped_in:.1f} s"
