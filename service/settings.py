"""The one typed Settings object: every knob the service has, read from the environment.

Variables use the ``GLASSHOUSE_`` prefix and ``__`` for nested groups, e.g.
``GLASSHOUSE_DATABASE__POOL_SIZE=10``. A ``.env`` file in the working directory is read too.
``DATABASE_URL`` is also accepted without prefix, because every platform sets it that way.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Literal, Self

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# 64 bytes: long enough for every HS* algorithm, so PyJWT never warns about key length.
DEVELOPMENT_JWT_SECRET = "development-only-jwt-secret-never-use-in-production-0123456789ab"  # noqa: S105
EMBEDDED_DATABASE_URL = "sqlite+aiosqlite:///./glasshouse.db"


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class DatabaseSettings(BaseModel):
    url: Annotated[
        str,
        Field(description="SQLAlchemy async URL. Unset: a local SQLite file (embedded default)."),
    ] = EMBEDDED_DATABASE_URL
    pool_size: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="Connections per worker, kept open. Requests beyond it wait for one "
            "(up to pool_timeout_seconds): size it to the worker's concurrency.",
        ),
    ] = 10
    max_overflow: Annotated[
        int,
        Field(
            ge=0,
            le=100,
            description="Extra connections under bursts, closed as soon as they are returned "
            "(so reopened at every burst); 0 keeps the count fixed.",
        ),
    ] = 0
    pool_timeout_seconds: Annotated[
        float, Field(gt=0, description="Wait for a free pooled connection before failing.")
    ] = 3.0
    pool_recycle_seconds: Annotated[
        int, Field(ge=-1, description="Reconnect connections older than this (-1: never).")
    ] = 1800
    pool_pre_ping: Annotated[
        bool, Field(description="Test a connection before handing it out (survives DB restarts).")
    ] = True
    pool_pre_ping_idle_seconds: Annotated[
        float,
        Field(
            ge=0,
            description="Test only connections idle at least this long (0: every checkout); "
            "a connection just used is known to work.",
        ),
    ] = 1.0
    connect_timeout_seconds: Annotated[
        float, Field(gt=0, description="Connect timeout to PostgreSQL (bounds an outage's 503s).")
    ] = 3.0
    command_timeout_seconds: Annotated[
        float, Field(gt=0, description="Client-side limit on one statement (a stalled server).")
    ] = 10.0
    startup_wait_seconds: Annotated[
        float, Field(ge=0, description="At startup, retry the database this long, then exit.")
    ] = 10.0
    statement_timeout_ms: Annotated[
        int, Field(ge=0, description="PostgreSQL statement_timeout for every session (0: none).")
    ] = 10_000
    pgbouncer_transaction_mode: Annotated[
        bool,
        Field(
            description="The URL is PgBouncer in transaction mode: no reused prepared "
            "statements, every read in a transaction, and statement_timeout_ms is not sent "
            "(PgBouncer cannot carry it: set it in PgBouncer or on the role, docs/operations.md).",
        ),
    ] = False
    echo: Annotated[bool, Field(description="Log every SQL statement (debugging only).")] = False

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class AuthSettings(BaseModel):
    jwt_secret: Annotated[
        SecretStr,
        Field(
            description="HMAC key for access tokens; production needs a random 32+ bytes (HS256)."
        ),
    ] = SecretStr(DEVELOPMENT_JWT_SECRET)
    jwt_algorithm: Annotated[
        str, Field(pattern=r"^HS(256|384|512)$", description="HMAC algorithm pinned on decode.")
    ] = "HS256"
    jwt_issuer: Annotated[str, Field(description="`iss` claim written and required.")] = (
        "glasshouse"
    )
    access_token_ttl_seconds: Annotated[
        int, Field(ge=30, le=86_400, description="Lifetime of an access token.")
    ] = 900
    refresh_token_ttl_seconds: Annotated[
        int, Field(ge=60, description="Lifetime of a refresh token (each use rotates it).")
    ] = 14 * 86_400
    argon2_time_cost: Annotated[int, Field(ge=1, description="argon2id iterations.")] = 3
    argon2_memory_cost_kib: Annotated[int, Field(ge=8, description="argon2id memory in KiB.")] = (
        65_536
    )
    argon2_parallelism: Annotated[int, Field(ge=1, description="argon2id lanes.")] = 4
    max_concurrent_password_checks: Annotated[
        int,
        Field(
            ge=1,
            description="Password hashes and checks one worker runs at once; more are answered "
            "503 with Retry-After at once (each holds argon2's memory and a core).",
        ),
    ] = 2
    stream_ticket_ttl_seconds: Annotated[
        int,
        Field(ge=1, le=300, description="Lifetime of a single-use ticket for an event stream."),
    ] = 30
    bootstrap_admin_email: Annotated[
        str | None, Field(description="Create (or promote) this admin at startup if set.")
    ] = None
    bootstrap_admin_password: Annotated[
        SecretStr | None, Field(description="Password for a bootstrapped admin that is created.")
    ] = None


class ApiKeySettings(BaseModel):
    """Service accounts and their API keys (docs/api-keys.md)."""

    max_service_accounts_per_user: Annotated[
        int, Field(ge=1, description="Service accounts one user may own.")
    ] = 20
    max_keys_per_service_account: Annotated[
        int,
        Field(ge=1, description="Keys one service account may hold, revoked ones not counted."),
    ] = 10
    rotation_grace_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=30 * 86_400,
            description="How long a rotated key keeps working by default (a rotation may ask "
            "for less).",
        ),
    ] = 86_400
    last_used_resolution_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="A key's last-used time is written at most this often per worker, not "
            "on every request.",
        ),
    ] = 60.0
    max_failures_per_address: Annotated[
        int,
        Field(
            ge=1,
            description="Failed API-key checks from one client address within the rate "
            "limit's window; past it, 429. Keyed by address only, so nobody can lock a key out.",
        ),
    ] = 50


class JobsSettings(BaseModel):
    """Background jobs on a taskiq queue over Redis; in-process without Redis (docs/jobs.md)."""

    broker: Annotated[
        Literal["redis", "in_process"] | None,
        Field(
            description="redis: a Redis stream, run by worker processes (python -m "
            "service.jobs). in_process: inside the API's own processes. Unset: redis when "
            "redis_url is set."
        ),
    ] = None
    queue_name: Annotated[str, Field(description="Redis stream the jobs travel on.")] = (
        "glasshouse:jobs"
    )
    max_attempts: Annotated[
        int, Field(ge=1, le=20, description="Attempts per job before it is marked failed.")
    ] = 3
    retry_delay_seconds: Annotated[
        float,
        Field(gt=0, description="Wait before the first retry; doubled for each attempt after."),
    ] = 2.0
    retry_max_delay_seconds: Annotated[
        float, Field(gt=0, description="Cap on the wait between attempts.")
    ] = 60.0
    time_limit_seconds: Annotated[
        float, Field(gt=0, description="One attempt of a job running longer fails (and retries).")
    ] = 600.0

    lease_seconds: Annotated[
        float,
        Field(
            ge=3,
            description="A running job's lease, renewed by its worker a third of the way in: a "
            "dead worker's job is requeued once the lease lapses.",
        ),
    ] = 20.0
    sweep_interval_seconds: Annotated[
        float,
        Field(gt=0, description="How often the sweeper requeues lapsed and due jobs."),
    ] = 5.0
    leader_lock_seconds: Annotated[
        float,
        Field(
            ge=2,
            description="The sweeper's lock in Redis: one worker sweeps and exports the queue's "
            "gauges; another takes over this long after it dies.",
        ),
    ] = 15.0
    concurrency: Annotated[
        int, Field(ge=1, description="Jobs one worker process runs at once.")
    ] = 4
    shutdown_wait_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="On SIGTERM, time for running jobs to finish; unfinished ones are "
            "requeued for another worker.",
        ),
    ] = 20.0
    worker_metrics_port: Annotated[
        int,
        Field(ge=0, le=65_535, description="The worker's /metrics and /livez (0: no listener)."),
    ] = 9101
    files_dir: Annotated[
        str,
        Field(
            description="Where exports and uploads are stored: a directory every API and "
            "worker pod mounts (ReadWriteMany)."
        ),
    ] = "./var/files"
    file_ttl_seconds: Annotated[
        int, Field(ge=60, description="An export's file is deleted this long after it is made.")
    ] = 86_400
    max_upload_bytes: Annotated[
        int, Field(ge=1, description="Largest import file accepted (413 past it).")
    ] = 50 * 1024 * 1024
    import_batch_size: Annotated[
        int,
        Field(ge=1, le=10_000, description="Imported rows committed together with the checkpoint."),
    ] = 500
    events_heartbeat_seconds: Annotated[
        float, Field(gt=0, description="Comment lines on an idle event stream, for proxies.")
    ] = 15.0

    @property
    def redelivery_seconds(self) -> float:
        """How long a message taken by a worker that died stays pending before the stream gives
        it to another, and how long a queued job waits before the sweeper sends it again (its
        message lost with a Redis restart). Past any attempt's time limit: never a live one."""
        return max(2 * self.time_limit_seconds, 600.0)


class RealtimeSettings(BaseModel):
    """Live item events over WebSocket and Server-Sent Events (docs/realtime.md)."""

    max_streams_per_user: Annotated[
        int, Field(ge=1, description="Open streams one user may hold on one worker (then 429).")
    ] = 5
    max_streams_per_worker: Annotated[
        int, Field(ge=1, description="Open streams per worker process (then 503 / close 1013).")
    ] = 2000
    queue_size: Annotated[
        int,
        Field(
            ge=10,
            description="Messages waiting for one slow client; when full the stream is closed "
            "(slow_consumer) rather than buffered without limit.",
        ),
    ] = 1000
    replay_limit: Annotated[
        int,
        Field(
            ge=1,
            description="Most events one resume replays; further behind, the client gets a "
            "reset and reloads.",
        ),
    ] = 500
    retention_hours: Annotated[
        float, Field(gt=0, description="How long events are kept for resuming streams.")
    ] = 24.0
    catch_up_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="How often each worker compares its streams with the event counters: "
            "the longest delay of an event whose message was lost.",
        ),
    ] = 5.0
    heartbeat_seconds: Annotated[
        float, Field(gt=0, description="WebSocket pings and SSE comment lines on idle streams.")
    ] = 15.0
    auth_timeout_seconds: Annotated[
        float,
        Field(gt=0, description="A WebSocket without credentials must send them within this."),
    ] = 5.0
    send_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="A message the client's connection has not taken within this ends the "
            "stream (slow_consumer).",
        ),
    ] = 10.0
    max_stream_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="Longest life of a stream authenticated without an expiry (ticket, API "
            "key); token streams end when the token expires. Clients reconnect.",
        ),
    ] = 3600.0
    max_message_bytes: Annotated[
        int, Field(ge=128, description="Largest WebSocket message a client may send (then 1009).")
    ] = 4096
    shutdown_wait_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="At shutdown, how long streams get to send their last message and close "
            "(within the server's graceful timeout).",
        ),
    ] = 3.0
    reconnect_hint_seconds: Annotated[
        float, Field(gt=0, description="The SSE retry: a client waits this before reconnecting.")
    ] = 1.0


class HttpSettings(BaseModel):
    host: Annotated[str, Field(description="Address `python -m service` binds.")] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65_535, description="Port `python -m service` binds.")] = (
        8000
    )
    max_body_bytes: Annotated[
        int, Field(ge=1024, description="Larger request bodies are refused with 413.")
    ] = 1_048_576
    max_header_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description="Longest request line plus header lines of one request; longer ones "
            "are refused with 431 before the app runs.",
        ),
    ] = 32_768
    cors_origins: Annotated[
        list[str], Field(description="Browser origins allowed by CORS (JSON list).")
    ] = []
    api_docs: Annotated[
        bool | None,
        Field(description="Serve /docs, /redoc and /openapi.json. Unset: on except in production."),
    ] = None
    forwarded_allow_ips: Annotated[
        str,
        Field(
            description="Proxies whose X-Forwarded-For and X-Forwarded-Proto are trusted (comma "
            "list of addresses or networks, or * when only the ingress can reach the pods); "
            "client addresses feed the login rate limit.",
        ),
    ] = "127.0.0.1,::1"


class CacheSettings(BaseModel):
    enabled: Annotated[bool, Field(description="Cache item reads and login-session checks.")] = True
    ttl_seconds: Annotated[int, Field(ge=1, description="Lifetime of a cached item answer.")] = 60
    auth_ttl_seconds: Annotated[
        int, Field(ge=1, description="Lifetime of a cached login-session check.")
    ] = 30
    key_prefix: Annotated[
        str, Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$", description="Prefix of every Redis key.")
    ] = "glasshouse"
    operation_timeout_seconds: Annotated[
        float, Field(gt=0, description="Longest wait for one Redis call before serving without.")
    ] = 0.1
    connect_timeout_seconds: Annotated[float, Field(gt=0, description="Redis connect timeout.")] = (
        0.25
    )
    breaker_failures: Annotated[
        int, Field(ge=1, description="Consecutive Redis failures that open the circuit breaker.")
    ] = 3
    breaker_open_seconds: Annotated[
        float, Field(gt=0, description="Time Redis is left alone before one probe call.")
    ] = 5.0
    near_cache: Annotated[
        bool,
        Field(
            description="Opt-in: keep copies of cached answers in each worker, which Redis "
            "keeps coherent (client-side caching; Redis only). Copies can outlive a write by "
            "the delay of Redis's invalidation message (docs/caching.md)."
        ),
    ] = False
    near_cache_max_entries: Annotated[
        int, Field(ge=1, description="Copies kept per worker (the oldest go first).")
    ] = 10_000
    near_cache_max_age_seconds: Annotated[
        float, Field(gt=0, description="Longest a worker keeps one copy.")
    ] = 10.0
    near_cache_heartbeat_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="PING interval of the invalidation connection; copies are "
            "dropped when a PING is unanswered this long (a stalled path to Redis stops "
            "them within two intervals).",
        ),
    ] = 0.4


class RateLimitSettings(BaseModel):
    """Failed logins are limited per (account, client address), per address and, far higher,
    per account: a guesser is stopped without being able to lock the owner out."""

    enabled: Annotated[
        bool,
        Field(description="Limit failed logins (across workers with Redis, per worker without)."),
    ] = True
    window_seconds: Annotated[
        int, Field(ge=1, description="Window in which failed logins are counted.")
    ] = 900
    count_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="Longest wait for Redis to count a login attempt; past it, the worker "
            "counts it alone (each worker then allows the whole limit).",
        ),
    ] = 0.5
    max_failures_per_client: Annotated[
        int,
        Field(ge=1, description="Failed logins for one email from one client address."),
    ] = 10
    max_failures_per_account: Annotated[
        int,
        Field(
            ge=1,
            description="Failed logins for one email from all addresses together: a ceiling "
            "against guessing from many addresses.",
        ),
    ] = 100
    max_failures_per_address: Annotated[
        int, Field(ge=1, description="Failed logins from one client address within the window.")
    ] = 50


class HealthSettings(BaseModel):
    check_timeout_seconds: Annotated[
        float, Field(gt=0, description="Timeout of each readiness/startup dependency check.")
    ] = 1.0
    readiness_requires_database: Annotated[
        bool,
        Field(
            description="PostgreSQL down makes the pod not ready (off: ready, degraded). Every "
            "pod shares it, so on it would take every pod out of the load balancer at once."
        ),
    ] = False
    readiness_requires_redis: Annotated[
        bool, Field(description="Redis down makes the pod not ready (off: ready, degraded).")
    ] = False


class ServerSettings(BaseModel):
    """gunicorn (production server) settings; it binds to http.host:http.port."""

    workers: Annotated[
        int, Field(ge=1, le=64, description="Worker processes (async: about one per core).")
    ] = 2
    threads: Annotated[
        int, Field(ge=1, description="Threads per worker (gthread only; uvicorn ignores it).")
    ] = 1
    timeout_seconds: Annotated[
        int, Field(ge=1, description="A worker silent for this long is killed and replaced.")
    ] = 30
    graceful_timeout_seconds: Annotated[
        int, Field(ge=1, description="On SIGTERM, time for in-flight requests to finish.")
    ] = 25
    keepalive_seconds: Annotated[
        int, Field(ge=0, description="Idle keep-alive; above the load balancer's idle timeout.")
    ] = 75
    max_requests: Annotated[
        int, Field(ge=0, description="Recycle a worker after this many requests (0: never).")
    ] = 10_000
    max_requests_jitter: Annotated[
        int, Field(ge=0, description="Random extra requests, so workers do not recycle at once.")
    ] = 1_000
    drain_seconds: Annotated[
        float,
        Field(
            ge=0,
            description="After SIGTERM, keep serving this long with readiness 503, so load "
            "balancers stop sending before the worker stops accepting.",
        ),
    ] = 5.0
    gc_young_threshold: Annotated[
        int,
        Field(
            ge=1,
            description="Allocations between young garbage collections in a worker (CPython's "
            "default: 700); the startup heap is frozen either way.",
        ),
    ] = 20_000


class ObservabilitySettings(BaseModel):
    enabled: Annotated[
        bool,
        Field(
            description="Master switch: false turns off request IDs, access logs, metrics and "
            "tracing at once (to measure what they cost)."
        ),
    ] = True
    instrumentation: Annotated[
        Literal["lean", "standard"],
        Field(
            description="Who records the HTTP metrics, server spans and Redis spans: lean (the "
            "service's own request middleware and cache hook) or standard "
            "(prometheus-fastapi-instrumentator, opentelemetry-instrumentation-fastapi and "
            "-redis). The same metric names, span names and log fields either way.",
        ),
    ] = "lean"
    log_format: Annotated[
        Literal["json", "console"] | None,
        Field(description="Log rendering. Unset: console in development, JSON otherwise."),
    ] = None
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], Field(description="Lowest level logged.")
    ] = "INFO"
    access_log: Annotated[bool, Field(description="One canonical log line per request.")] = True
    access_log_flush_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=60,
            description="How long JSON access lines may wait in the output buffer (0: written "
            "at once); any other log line and shutdown flush them too.",
        ),
    ] = 1.0
    metrics: Annotated[bool, Field(description="Record Prometheus metrics.")] = True
    metrics_flush_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=60,
            description="How often, at most, a worker samples its database pool and near-cache "
            "gauges while requests come in (0: on every request).",
        ),
    ] = 1.0
    metrics_host: Annotated[str, Field(description="Address of the separate metrics listener.")] = (
        "127.0.0.1"
    )
    metrics_port: Annotated[
        int,
        Field(
            ge=0,
            le=65_535,
            description="Port of the separate /metrics listener (0: none). Under gunicorn the "
            "master serves it, aggregating every worker.",
        ),
    ] = 9100
    metrics_on_api: Annotated[
        bool, Field(description="Also serve /metrics on the API port (off: not public).")
    ] = False
    metrics_dir: Annotated[
        str | None,
        Field(
            description="gunicorn's Prometheus multiprocess directory, emptied at start. "
            "Unset: a new temporary directory."
        ),
    ] = None
    tracing: Annotated[
        bool | None,
        Field(description="Export traces. Unset: on when an OTLP endpoint is configured."),
    ] = None
    trace_sample_ratio: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="Share of requests traced when no inbound trace decides (parent-based "
            "otherwise); used when OTEL_TRACES_SAMPLER is unset.",
        ),
    ] = 1.0
    trace_export_timeout_seconds: Annotated[
        float, Field(gt=0, description="OTLP export timeout per batch.")
    ] = 5.0
    trace_shutdown_timeout_seconds: Annotated[
        float, Field(gt=0, description="Longest wait to flush spans at shutdown.")
    ] = 5.0


class OtelSettings(BaseSettings):
    """The standard OpenTelemetry variables the service itself looks at. The SDK and the OTLP
    exporter read the rest (headers, timeouts, compression) on their own."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore", frozen=True)

    exporter_otlp_endpoint: Annotated[
        str | None, Field(description="OTLP/HTTP collector base URL; setting it turns tracing on.")
    ] = None
    exporter_otlp_traces_endpoint: Annotated[
        str | None, Field(description="OTLP/HTTP traces URL (overrides the base URL).")
    ] = None
    traces_sampler: Annotated[
        str | None,
        Field(description="Standard sampler name, e.g. parentbased_traceidratio."),
    ] = None
    traces_sampler_arg: Annotated[
        str | None, Field(description="The sampler's argument, e.g. 0.1.")
    ] = None
    service_name: Annotated[str | None, Field(description="Overrides service.name in traces.")] = (
        None
    )
    semconv_stability_opt_in: Annotated[
        str | None,
        Field(
            description="http: the OpenTelemetry instrumentations use the stable HTTP attribute "
            "names (http.request.method, url.path, server.address...); gunicorn.conf.py sets it "
            "when unset.",
        ),
    ] = None
    sdk_disabled: Annotated[bool, Field(description="true: no tracing at all.")] = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GLASSHOUSE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    environment: Annotated[Environment, Field(description="development, test or production.")] = (
        Environment.development
    )
    service_name: Annotated[str, Field(description="Name used in logs, metrics and traces.")] = (
        "glasshouse"
    )
    database_url: Annotated[
        str | None,
        Field(
            validation_alias=AliasChoices("DATABASE_URL", "GLASSHOUSE_DATABASE_URL"),
            description="Shortcut for database.url, as platforms set it.",
        ),
    ] = None
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    api_keys: ApiKeySettings = ApiKeySettings()
    jobs: JobsSettings = JobsSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    http: HttpSettings = HttpSettings()
    redis_url: Annotated[
        str | None,
        Field(
            validation_alias=AliasChoices("REDIS_URL", "GLASSHOUSE_REDIS_URL"),
            description="Redis for caching and rate limits. Unset: in-process cache (one "
            "process only).",
        ),
    ] = None
    cache: CacheSettings = CacheSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    health: HealthSettings = HealthSettings()
    server: ServerSettings = ServerSettings()
    worker_processes: Annotated[
        int,
        Field(
            ge=1,
            description="Processes serving the app; set by gunicorn.conf.py. Above 1, the "
            "in-process cache is off (it could not be invalidated across workers).",
        ),
    ] = 1
    observability: ObservabilitySettings = ObservabilitySettings()
    otel: Annotated[OtelSettings, Field(default_factory=OtelSettings)]
    pod_name: Annotated[
        str | None,
        Field(
            validation_alias=AliasChoices("POD_NAME", "GLASSHOUSE_POD_NAME"),
            description="Kubernetes pod name (downward API), added to traces.",
        ),
    ] = None
    pod_namespace: Annotated[
        str | None,
        Field(
            validation_alias=AliasChoices("POD_NAMESPACE", "GLASSHOUSE_POD_NAMESPACE"),
            description="Kubernetes namespace (downward API), added to traces.",
        ),
    ] = None
    prometheus_multiproc_dir: Annotated[
        str | None,
        Field(
            validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR"),
            description="Set by gunicorn.conf.py: metrics are aggregated across workers.",
        ),
    ] = None
    auto_migrate: Annotated[
        bool | None,
        Field(description="Apply migrations at startup. Unset: only on the embedded SQLite."),
    ] = None

    @model_validator(mode="after")
    def _apply_database_url_and_refuse_placeholder_secrets(self) -> Self:
        if self.database_url:
            url = _async_driver_url(self.database_url)
            object.__setattr__(self, "database", self.database.model_copy(update={"url": url}))
        if self.server.drain_seconds >= self.server.graceful_timeout_seconds:
            raise ValueError(
                "GLASSHOUSE_SERVER__DRAIN_SECONDS must be shorter than "
                "GLASSHOUSE_SERVER__GRACEFUL_TIMEOUT_SECONDS, or in-flight requests are killed"
            )
        if self.environment is Environment.production:
            secret = self.auth.jwt_secret.get_secret_value()
            # RFC 7518: an HMAC key at least as long as the hash output (HS256: 32 bytes).
            min_length = int(self.auth.jwt_algorithm.removeprefix("HS")) // 8
            if secret == DEVELOPMENT_JWT_SECRET or len(secret.encode()) < min_length:
                raise ValueError(
                    "GLASSHOUSE_AUTH__JWT_SECRET must be set to a random value of at least "
                    f"{min_length} bytes in production (generate one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
        return self

    @property
    def json_logs(self) -> bool:
        if self.observability.log_format is not None:
            return self.observability.log_format == "json"
        return self.environment is not Environment.development

    @property
    def tracing_enabled(self) -> bool:
        if self.observability.tracing is not None:
            return self.observability.tracing
        if self.otel.sdk_disabled:
            return False
        return bool(self.otel.exporter_otlp_endpoint or self.otel.exporter_otlp_traces_endpoint)

    @property
    def jobs_in_process(self) -> bool:
        if self.jobs.broker is not None:
            return self.jobs.broker == "in_process" or not self.redis_url
        return not self.redis_url

    @property
    def api_docs_enabled(self) -> bool:
        if self.http.api_docs is not None:
            return self.http.api_docs
        return self.environment is not Environment.production

    @property
    def should_auto_migrate(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.database.is_sqlite


def _async_driver_url(url: str) -> str:
    """Accept the plain URLs platforms hand out and pick the async driver for them."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url.removeprefix(plain)
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
