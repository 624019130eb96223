"""The service's own metrics: HTTP, cache, database pool, build. Each domain declares its
business metrics beside it (``service/<domain>/metrics.py``).

Names follow Prometheus conventions (``_total``, ``_seconds``, ``_bytes``); labels are bounded:
route templates (never raw paths or IDs), methods, status classes, fixed outcome sets. Under
gunicorn the values live in the multiprocess directory (PROMETHEUS_MULTIPROC_DIR), so any
reader aggregates every worker.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, multiprocess

# A few ms (cached reads) up to 10 s (the slowest request we do not time out first).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- HTTP (recorded by request_context.py through http_metrics.py) ----------------------------
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by route template, method and status class.",
    ["handler", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request start to response end, by route template and method.",
    ["handler", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUEST_SIZE = Summary(
    "http_request_size_bytes", "Request body size (Content-Length).", ["handler"]
)
HTTP_RESPONSE_SIZE = Summary(
    "http_response_size_bytes", "Response body size (Content-Length).", ["handler"]
)
HTTP_IN_PROGRESS = Gauge(
    "http_requests_inprogress",
    "Requests being served right now (by method: the route is known only once matched).",
    ["method"],
    multiprocess_mode="livesum",
)

# --- Resources --------------------------------------------------------------------------------
DB_POOL_CONNECTIONS = Gauge(
    "glasshouse_db_pool_connections",
    "Database connections checked out of the pool (in_use) and beyond pool_size (overflow).",
    ["state"],
    multiprocess_mode="livesum",
)
DB_CONNECTIONS_OPENED = Counter(
    "glasshouse_db_connections_opened_total",
    "New connections to the database. Steady growth under load means the pool closes and "
    "reopens connections (max_overflow above 0, or pool_size below the worker's concurrency).",
)
DB_POOL_SIZE = Gauge(
    "glasshouse_db_pool_size",
    "Configured pool_size + max_overflow per worker (the saturation ceiling).",
    multiprocess_mode="livesum",
)
CACHE_RESULTS = ("hit", "miss", "error")
CACHE_REQUESTS = Counter("glasshouse_cache_requests_total", "Cache lookups by result.", ["result"])
CACHE_AVAILABLE = Gauge(
    "glasshouse_cache_available",
    "1 while the cache answers; 0 while a worker's circuit breaker skips it (lowest worker).",
    multiprocess_mode="livemin",
)
CACHE_INVALIDATIONS_DEFERRED = Counter(
    "glasshouse_cache_invalidations_deferred_total",
    "Version bumps after a write that Redis did not take at once (retried in the background; "
    "until one lands, other workers may serve the answer it replaced).",
)
# Tallied by the near cache (service/cache/near.py) and added at each metrics flush.
CACHE_NEAR_HITS = Counter(
    "glasshouse_cache_near_hits_total",
    "Cache lookups answered from a worker's own copies, without a Redis round trip.",
)
CACHE_NEAR_INVALIDATIONS = Counter(
    "glasshouse_cache_near_invalidations_total",
    "Invalidation messages from Redis read by the near cache.",
)
CACHE_NEAR_RESETS = Counter(
    "glasshouse_cache_near_resets_total",
    "Times a worker dropped all its copies: its invalidation connection was lost or silent.",
)
CACHE_NEAR_ENTRIES = Gauge(
    "glasshouse_cache_near_entries", "Copies held by the near cache.", multiprocess_mode="livesum"
)
FORWARDED_FOR_REJECTED = Counter(
    "glasshouse_forwarded_for_rejected_total",
    "X-Forwarded-For values from trusted proxies that were not an IP address (ignored).",
)
APP_INFO = Gauge(
    "glasshouse_app_info",
    "Always 1; labels carry the running version and build.",
    ["version", "build"],
    multiprocess_mode="livemax",
)


def initialize_series(*, version: str, build: str) -> None:
    """Creates every fixed label combination at 0, so dashboards and alerts see a series (and
    a rate of 0) before the first event, instead of no data."""
    for result in CACHE_RESULTS:
        CACHE_REQUESTS.labels(result=result)
    for state in ("in_use", "overflow"):
        DB_POOL_CONNECTIONS.labels(state=state)
    APP_INFO.labels(version=version, build=build).set(1)
    CACHE_AVAILABLE.set(1)


def exposition_registry(multiprocess_dir: str | None) -> CollectorRegistry:
    """What a scrape reads: all workers' files in multiprocess mode, else this process."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY
