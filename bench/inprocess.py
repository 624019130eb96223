"""What observability costs in CPU time per request, measured inside one process.

bench/run.py measures requests/s through gunicorn and wrk, as a client sees them, but on a
2-core machine that shares its cores with wrk, PostgreSQL and Redis, one variant's ratio moved
by up to 0.15 between runs. This measures the other way: the three variants of bench/run.py
(observability off, on at 100% and at 10% sampling, traces exported over OTLP/HTTP to a sink
in another process) are built as apps in one process, on PostgreSQL + Redis, and driven with
ASGI calls directly, in many short cycles, the variants in a fresh random order each cycle.
What it reports is CPU time per request (``time.process_time``, which includes the span
exporter's thread) and its ratio to "off". It leaves out HTTP parsing and the load generator,
so its ratios are those of the app alone: run it beside `make bench`, not instead of it.

  python bench/inprocess.py [--cycles 40] [--requests 50] [--endpoints a,b,c,d,f]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Metrics in multiprocess mode, as under gunicorn: set before prometheus_client is imported.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="glasshouse-inprocess-")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi import FastAPI  # noqa: E402 (after the environment is set)

from bench.run import ENDPOINTS as RUN_ENDPOINTS  # noqa: E402 (the same variants and endpoints)
from bench.run import VARIANTS  # noqa: E402
from service.main import create_app  # noqa: E402
from service.observability.logging import configure_logging  # noqa: E402
from service.server import tune_garbage_collector  # noqa: E402
from service.settings import (  # noqa: E402
    AuthSettings,
    CacheSettings,
    DatabaseSettings,
    Environment,
    ObservabilitySettings,
    OtelSettings,
    RateLimitSettings,
    ServerSettings,
    Settings,
)
from tests.conftest import FAST_HASHING, REDIS_URL  # noqa: E402
from tests.processes import migrated_postgres_database, running_otlp_sink  # noqa: E402

# Here only: the cached read made with a service account's API key instead of an access token,
# to set a key's check beside a token's (docs/api-keys.md).
ENDPOINTS = RUN_ENDPOINTS | {"f": "cached read, API key"}


def _serve_sink(port: Any) -> None:
    with running_otlp_sink() as sink:
        port.value = sink.port
        while True:
            time.sleep(3600)


@contextmanager
def sink_in_its_own_process() -> Iterator[str]:
    """An OTLP sink in a process of its own (what it spends receiving spans is not the app's
    CPU time), set as the exporter's endpoint (the SDK reads it from the environment)."""
    port = multiprocessing.get_context("spawn").Value("i", 0)
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_sink, args=(port,), daemon=True
    )
    process.start()
    try:
        while not port.value:
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port.value}"
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        yield endpoint
    finally:
        process.kill()


@dataclass
class App:
    """One variant, its lifespan running, called like a server would call it."""

    app: FastAPI
    state: dict[str, Any] = field(default_factory=dict)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    key_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    item_id: int = 0
    lifespan: AbstractAsyncContextManager[Any] | None = None

    async def start(self) -> None:
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.state = await self.lifespan.__aenter__()

    async def stop(self) -> None:
        if self.lifespan is not None:
            await self.lifespan.__aexit__(None, None, None)

    async def call(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench"), *headers, (b"content-length", b"%d" % len(body))],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": dict(self.state),
        }
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            message = next(messages, None)
            if message is None:
                await asyncio.Event().wait()  # the client never goes away
            return message  # type: ignore[return-value]

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)

    async def sign_up(self) -> None:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        account = json.dumps({"email": email, "password": "benchmark-password"}).encode()
        json_body = [(b"content-type", b"application/json")]
        status, _ = await self.call("POST", "/api/v1/auth/register", json_body, account)
        assert status == 201, status
        form = f"username={email}&password=benchmark-password".encode()
        form_body = [(b"content-type", b"application/x-www-form-urlencoded")]
        _, tokens = await self.call("POST", "/api/v1/auth/token", form_body, form)
        self.headers = [(b"authorization", f"Bearer {json.loads(tokens)['access_token']}".encode())]
        item = b'{"title": "Water the ferns"}'
        status, created = await self.call("POST", "/api/v1/items", self.headers + json_body, item)
        assert status == 201, status
        self.item_id = json.loads(created)["id"]
        status, account = await self.call(
            "POST", "/api/v1/service-accounts", self.headers + json_body, b'{"name": "bench"}'
        )
        assert status == 201, status
        keys = f"/api/v1/service-accounts/{json.loads(account)['id']}/keys"
        body = b'{"name": "bench", "scopes": ["items:read"]}'
        status, key = await self.call("POST", keys, self.headers + json_body, body)
        assert status == 201, status
        self.key_headers = [(b"x-api-key", json.loads(key)["key"].encode())]

    def request(self, endpoint: str) -> tuple[str, str, list[tuple[bytes, bytes]], bytes]:
        item = f"/api/v1/items/{self.item_id}"
        if endpoint == "a":
            return "GET", item, self.headers, b""
        if endpoint == "f":
            return "GET", item, self.key_headers, b""
        if endpoint == "b":
            return "GET", item, [*self.headers, (b"cache-control", b"no-cache")], b""
        if endpoint == "c":
            body = b'{"title": "Benchmark item", "priority": 2}'
            return (
                "POST",
                "/api/v1/items",
                [*self.headers, (b"content-type", b"application/json")],
                body,
            )
        return "GET", "/api/v1/info", [], b""


def settings_for(variant: str, database_url: str, sink: str) -> Settings:
    observability: dict[str, Any] = {"log_format": "json", "metrics_port": 0}
    otel = OtelSettings(exporter_otlp_endpoint=sink)
    by_variant: dict[str, dict[str, Any]] = {
        "off": {"observability": ObservabilitySettings(enabled=False, **observability)},
        "on-100%": {
            "observability": ObservabilitySettings(trace_sample_ratio=1.0, **observability),
            "otel": otel,
        },
        "on-10%": {
            "observability": ObservabilitySettings(trace_sample_ratio=0.1, **observability),
            "otel": otel,
        },
        "standard-10%": {
            "observability": ObservabilitySettings(
                trace_sample_ratio=0.1, instrumentation="standard", **observability
            ),
            "otel": otel,
        },
        # Tracing on, no request sampled: observability's fixed cost (bench/instructions.py).
        "on-0%": {
            "observability": ObservabilitySettings(trace_sample_ratio=0.0, **observability),
            "otel": otel,
        },
    }
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        # "test" only so that create_app leaves logging as main() configured it.
        environment=Environment.test,
        database=DatabaseSettings(url=database_url),
        redis_url=REDIS_URL,
        auth=AuthSettings(**FAST_HASHING),
        rate_limit=RateLimitSettings(enabled=False),
        cache=CacheSettings(key_prefix=f"bench-inprocess-{uuid.uuid4().hex[:8]}"),
        prometheus_multiproc_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"],
        **by_variant[variant],
    )


async def measure(
    apps: dict[str, App], endpoints: list[str], cycles: int, requests: int
) -> dict[str, dict[str, list[float]]]:
    """CPU microseconds per request, one value per variant, endpoint and cycle."""
    costs: dict[str, dict[str, list[float]]] = {e: {v: [] for v in apps} for e in endpoints}
    for endpoint in endpoints:
        for app in apps.values():  # warm up: caches filled, code paths specialised
            for _ in range(50):
                await app.call(*app.request(endpoint))
        for _ in range(cycles):
            for variant in random.sample(list(apps), len(apps)):
                app = apps[variant]
                request = app.request(endpoint)
                started = time.process_time()
                for _ in range(requests):
                    status, body = await app.call(*request)
                costs[endpoint][variant].append(1e6 * (time.process_time() - started) / requests)
                assert status < 300, (status, body)
    return costs


def report(costs: dict[str, dict[str, list[float]]]) -> Iterator[str]:
    variants = " ".join(f"{v:>9}" for v in VARIANTS)
    yield f"{'endpoint':24} {variants}   {'100%/off':>8} {'10%/off':>8}"
    for endpoint, by_variant in costs.items():
        # Means, not medians: a span export lands in some cycles only, and it is a cost.
        mean = {variant: statistics.mean(values) for variant, values in by_variant.items()}
        yield (
            f"{endpoint} {ENDPOINTS[endpoint]:22} "
            + " ".join(f"{mean[v]:7.0f}us" for v in VARIANTS)
            + f"   {mean['off'] / mean['on-100%']:8.2f} {mean['off'] / mean['on-10%']:8.2f}"
        )
    yield "CPU time per request (mean of the cycles); ratios are off / on, as requests/s would be."


async def run(database_url: str, sink: str, args: argparse.Namespace) -> None:
    apps = {v: App(create_app(settings_for(v, database_url, sink))) for v in VARIANTS}
    for app in apps.values():
        await app.start()
        await app.sign_up()
    gc.collect()
    # As the worker does after startup (service/server.py).
    tune_garbage_collector(ServerSettings().gc_young_threshold)
    try:
        costs = await measure(apps, args.endpoints.split(","), args.cycles, args.requests)
    finally:
        for app in apps.values():
            await app.stop()
    for line in report(costs):
        print(line, file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--requests", type=int, default=50, help="requests per cycle")
    parser.add_argument("--endpoints", default="a,b,c,d")
    args = parser.parse_args()
    with ExitStack() as stack:
        sink = stack.enter_context(sink_in_its_own_process())
        # JSON logs, as in production, to a file nobody reads: writing them is part of the cost.
        log = stack.enter_context(tempfile.TemporaryFile("w"))
        configure_logging(
            json=True,
            stream=log,
            access_flush_seconds=ObservabilitySettings().access_log_flush_seconds,
        )
        database_url = stack.enter_context(migrated_postgres_database())
        asyncio.run(run(database_url, sink, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
