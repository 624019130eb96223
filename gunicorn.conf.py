"""Production server: `gunicorn -c gunicorn.conf.py`.

Every value comes from the service settings (GLASSHOUSE_* variables, see docs/configuration.md).
The hooks below are what several worker processes need to keep metrics and traces correct.
"""

import os
import shutil
import tempfile
from pathlib import Path

from service.observability.logging import stdlib_logging_config
from service.settings import get_settings

_settings = get_settings()
_server = _settings.server

# prometheus_client picks multiprocess mode when it is first imported, from this variable; it
# must be set before anything imports it, here in the master, so every forked worker inherits it.
_metrics_dir = Path(
    _settings.observability.metrics_dir or tempfile.mkdtemp(prefix="glasshouse-metrics-")
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)
# The app decides from this whether an in-process cache can be trusted (only in one process).
os.environ["GLASSHOUSE_WORKER_PROCESSES"] = str(_server.workers)
# The OpenTelemetry instrumentations (server and Redis spans of the standard instrumentation, SQL
# spans in both) write the stable HTTP attribute names the dashboards and trace searches use only
# when opted in; the same names in both instrumentations, whichever runs.
if not _settings.otel.semconv_stability_opt_in:
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http"
# Workers inherit the master's cached settings; re-read them so they see the directory.
get_settings.cache_clear()

wsgi_app = "service.main:create_app()"
worker_class = "service.server.DrainingUvicornWorker"
# Each worker imports the app after the fork and builds its own DB pool and TracerProvider:
# nothing holding threads or sockets is ever shared across a fork.
preload_app = False
bind = [f"{_settings.http.host}:{_settings.http.port}"]
workers = _server.workers
threads = _server.threads
timeout = _server.timeout_seconds
graceful_timeout = _server.graceful_timeout_seconds
keepalive = _server.keepalive_seconds
max_requests = _server.max_requests
max_requests_jitter = _server.max_requests_jitter
# The runtime control socket would land in ~/.gunicorn; the service does not use it.
control_socket_disable = True
# Our own canonical access line replaces gunicorn's; its error log goes through structlog.
accesslog = None
errorlog = "-"
logconfig_dict = stdlib_logging_config(
    json=_settings.json_logs, level=_settings.observability.log_level, stream="ext://sys.stdout"
)


def on_starting(server: object) -> None:
    """An empty multiprocess directory: files of an earlier run would inflate every counter."""
    if _metrics_dir.exists():
        shutil.rmtree(_metrics_dir)
    _metrics_dir.mkdir(parents=True)


def when_ready(server: object) -> None:
    """The master serves /metrics on its own port: it outlives every worker, and reads every
    worker's files, so a scrape sees the whole pod whichever worker is busy or restarting."""
    port = _settings.observability.metrics_port
    if not port or not _settings.observability.metrics:
        return
    # Not service.observability.metrics: importing it would declare every metric in the master
    # too, and the master's own (never updated) glasshouse_cache_available of 0 would win the
    # "livemin" aggregation, reading 0 while Redis answers.
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_metrics_dir))
    start_http_server(port, addr=_settings.observability.metrics_host, registry=registry)


def child_exit(server: object, worker: object) -> None:
    """A dead worker's live gauges (in-progress requests, pool connections) must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    if not _settings.observability.metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
