"""Real processes for end-to-end tests: gunicorn running the service, an OTLP/HTTP trace sink,
a PostgreSQL database of their own. Everything listens on 127.0.0.1 and is torn down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import coverage
import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import (
    TEST_INSTRUMENTATION,
    _create_postgres_database,
    _drop_postgres_database,
)

REPO = Path(__file__).resolve().parents[1]
TEST_JWT_SECRET = "end-to-end-test-secret-" + "x" * 48


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ExportedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class OtlpSink:
    """Accepts OTLP/HTTP protobuf trace exports, like a collector would, and keeps the spans.

    Requests are kept as they arrive and decoded when asked for: under the benchmark's load the
    sink shares the machine with the service it measures, and decoding every span as it came in
    cost more CPU than the service spent creating it."""

    port: int = 0
    _bodies: list[bytes] = field(default_factory=list)
    _spans: list[ExportedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, body: bytes) -> None:
        with self._lock:
            self._bodies.append(body)

    def snapshot(self) -> list[ExportedSpan]:
        with self._lock:
            bodies, self._bodies = self._bodies, []
            for body in bodies:
                self._spans.extend(_decoded(body))
            return list(self._spans)


def _decoded(body: bytes) -> Iterator[ExportedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ExportedSpan(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    kind=span.kind,
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    resource=resource,
                )


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class _QuietOnHangUp(ThreadingHTTPServer):
    """An exporter that goes away mid-answer (a worker stopped with a connection kept open)
    is no error of the sink's: it is not printed as one."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def running_otlp_sink() -> Iterator[OtlpSink]:
    sink = OtlpSink()

    class Handler(BaseHTTPRequestHandler):
        # Connections kept open between exports, as a collector keeps them: with HTTP/1.0 the
        # exporter opened and closed a TCP connection for every batch, which the benchmarks
        # then counted as a cost of tracing (about 1% of the worker's CPU at 100% sampling).
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path == "/v1/traces":
                sink.record(body)
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: Any) -> None:
            pass

    server = _QuietOnHangUp(("127.0.0.1", 0), Handler)
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


async def sessions_established(connection: asyncpg.Connection, database: str) -> int:
    """PostgreSQL's own count of every session ever established to ``database``
    (pg_stat_database.sessions). Reading it opens none: ``connection`` is already open."""
    # Within a transaction the statistics snapshot would otherwise stay the same.
    await connection.execute("SELECT pg_stat_clear_snapshot()")
    count = await connection.fetchval(
        "SELECT sessions FROM pg_stat_database WHERE datname = $1", database
    )
    return int(count or 0)


@contextmanager
def empty_postgres_database() -> Iterator[str]:
    """A PostgreSQL database of its own with no tables (nothing migrated)."""
    url = asyncio.run(_create_postgres_database())
    try:
        yield url
    finally:
        asyncio.run(_drop_postgres_database(url))


@contextmanager
def migrated_postgres_database(*, repo: Path = REPO) -> Iterator[str]:
    """A PostgreSQL database of its own, migrated with the documented command (by the
    migrations of ``repo``: another checkout's, e.g. a benchmark's baseline)."""
    url = asyncio.run(_create_postgres_database())
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=repo,
            env={**base_env(), "DATABASE_URL": url},
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield url
    finally:
        asyncio.run(_drop_postgres_database(url))


def base_env() -> dict[str, str]:
    """The parent's environment without any service setting the developer may have set."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GLASSHOUSE_", "OTEL_", "PROMETHEUS_"))
        and name not in {"DATABASE_URL", "POD_NAME", "POD_NAMESPACE"}
    }


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    def wait_for_workers(self, count: int, timeout: float = 30) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == count and self._all_ready():
                return pids
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not get {count} ready workers:\n{self.logs()}")

    def _all_ready(self) -> bool:
        started = self.logs().count("Application startup complete")
        return started >= len(self.worker_pids()) and self._answers()

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def new_account_headers(self) -> dict[str, str]:
        """Registers a fresh user and logs in: the Authorization header to use."""
        email = f"e2e-{uuid.uuid4().hex[:8]}@example.com"
        credentials = {"email": email, "password": "end-to-end-pw"}
        assert httpx.post(f"{self.url}/api/v1/auth/register", json=credentials).status_code == 201
        tokens = httpx.post(
            f"{self.url}/api/v1/auth/token",
            data={"username": email, "password": credentials["password"]},
        ).json()
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        import json

        lines = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@contextmanager
def running_gunicorn(
    database_url: str,
    tmp_path: Path,
    *,
    workers: int = 2,
    app: str | None = None,
    repo: Path = REPO,
    **settings: str,
) -> Iterator[Gunicorn]:
    """gunicorn as production runs it (``app`` replaces the service, e.g. for a baseline;
    ``repo`` is the checkout whose service and gunicorn.conf.py run, e.g. a git worktree)."""
    port, metrics_port = free_port(), free_port()
    env = {
        **base_env(),
        "DATABASE_URL": database_url,
        "GLASSHOUSE_ENVIRONMENT": "production",
        "GLASSHOUSE_AUTH__JWT_SECRET": TEST_JWT_SECRET,
        "GLASSHOUSE_AUTH__ARGON2_TIME_COST": "1",
        "GLASSHOUSE_AUTH__ARGON2_MEMORY_COST_KIB": "64",
        "GLASSHOUSE_AUTH__ARGON2_PARALLELISM": "1",
        "GLASSHOUSE_HTTP__HOST": "127.0.0.1",
        "GLASSHOUSE_HTTP__PORT": str(port),
        "GLASSHOUSE_OBSERVABILITY__METRICS_PORT": str(metrics_port),
        "GLASSHOUSE_OBSERVABILITY__METRICS_DIR": str(tmp_path / "metrics"),
        "GLASSHOUSE_SERVER__WORKERS": str(workers),
        "GLASSHOUSE_SERVER__MAX_REQUESTS": "0",
        "GLASSHOUSE_OBSERVABILITY__INSTRUMENTATION": TEST_INSTRUMENTATION,
        **settings,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *([app] if app else [])],
            cwd=repo,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        server = Gunicorn(process, port, metrics_port, log_path)
        try:
            server.wait_for_workers(workers)
            yield server
        finally:
            if process.poll() is None:
                workers_left = server.worker_pids()
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
                for pid in workers_left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


EMBEDDED_STARTUP_SECONDS = 20


@contextmanager
def running_embedded_service(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`python -m service` as the README runs it: no servers, no configuration (the embedded
    SQLite default in ``workdir``), until it answers ready. Its URL and process."""
    port = free_port()
    env = {**base_env(), "GLASSHOUSE_HTTP__PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + EMBEDDED_STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("the embedded service did not become ready")
        yield url, process
    finally:
        process.terminate()
        process.communicate(timeout=10)


@dataclass
class JobWorker:
    """``python -m service.jobs``: taskiq's worker (a parent and its one worker process)."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/livez", timeout=2).is_success
        except httpx.TransportError:
            return False

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]

    def kill(self) -> None:
        """SIGKILL to the parent and its worker at once, as when a node dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """``sig`` to the parent, as Kubernetes sends it; the parent passes it on."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def _measured_like_this_process() -> dict[str, str]:
    """Under coverage, a child started with this environment is measured too, with the
    project's configuration, into a data file of its own that the test run combines."""
    if coverage.Coverage.current() is None:
        return {}
    return {"COVERAGE_PROCESS_START": str(REPO / "pyproject.toml")}


@contextmanager
def running_job_worker(
    database_url: str, redis_url: str, tmp_path: Path, **settings: str
) -> Iterator[JobWorker]:
    """The job worker as the README starts it, until its liveness check answers."""
    metrics_port = free_port()
    env = {
        **base_env(),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "GLASSHOUSE_ENVIRONMENT": "production",
        "GLASSHOUSE_AUTH__JWT_SECRET": TEST_JWT_SECRET,
        "GLASSHOUSE_JOBS__WORKER_METRICS_PORT": str(metrics_port),
        "GLASSHOUSE_OBSERVABILITY__METRICS_HOST": "127.0.0.1",
        **_measured_like_this_process(),
        **settings,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.jobs"],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches parent and worker
        )
        worker = JobWorker(process, metrics_port, log_path)
        try:
            deadline = time.monotonic() + 30
            while not worker.alive():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the job worker did not start:\n{worker.logs()}")
                time.sleep(0.1)
            yield worker
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
