"""The dashboards and alerts against the real thing: the service under gunicorn (2 workers, its
own PostgreSQL database, Redis) and its job worker, scraped every second by a real Prometheus
(Debian's binary) configured from deploy/compose/prometheus.yml with deploy/prometheus/rules.yml
loaded (every group evaluated each second), after traffic like users make (logins good and bad, rate
limiting, items, 404s). Then every dashboard query and every alert expression is evaluated by
that Prometheus over its HTTP API.

An alert's own expression is empty while nothing is wrong, which proves little; so each alert
is listed below with the signal under its threshold, which must have data now, or with the
one thing it needs that this test does not have (kube-state-metrics)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.exceptions

from tests.conftest import REDIS_URL, _check_redis, unavailable
from tests.deploy.support import (
    COMPOSE,
    DASHBOARDS,
    EXTERNAL_SERIES,
    RATE_FUNCTIONS,
    RULES,
    alerting_rules,
    built_objects,
    find,
    load_dashboard,
    load_yaml,
    metric_names,
    metric_references,
    panel_queries,
    recorded_series,
    recording_rules,
    rule_groups,
    variable_queries,
)
from tests.processes import (
    Gunicorn,
    JobWorker,
    free_port,
    migrated_postgres_database,
    running_gunicorn,
    running_job_worker,
)

NAMESPACE = "compose"  # set by the scrape config's relabelling, as in deploy/compose
RATE_INTERVAL = "5m"  # covers the whole test, from before the traffic on
MAX_FAILURES_PER_CLIENT = 3

# What each alert watches, evaluated without its threshold: it must have data now.
ALERT_SIGNALS: dict[str, str] = {
    "GlasshouseAvailabilityBudgetBurnFast": "namespace_job:http_requests_5xx:ratio_rate5m",
    "GlasshouseAvailabilityBudgetBurnSlow": "namespace_job:http_requests_5xx:ratio_rate1d",
    "GlasshouseLatencyBudgetBurnFast": "namespace_job:http_requests_slow:ratio_rate5m",
    "GlasshouseLatencyBudgetBurnSlow": "namespace_job:http_requests_slow:ratio_rate1d",
    "GlasshouseTrafficDropped": "namespace_job:http_requests:rate5m",
    "GlasshouseTargetDown": 'up{job="glasshouse"}',
    "GlasshouseAllTargetsDown": 'up{job="glasshouse"}',
    "GlasshouseDatabasePoolSaturated": (
        'sum by (namespace, pod) (glasshouse_db_pool_connections{job="glasshouse",state="in_use"})'
        ' / sum by (namespace, pod) (glasshouse_db_pool_size{job="glasshouse"})'
    ),
    "GlasshouseDatabaseConnectionChurn": (
        "sum by (namespace, pod) "
        '(rate(glasshouse_db_connections_opened_total{job="glasshouse"}[10m]))'
    ),
    "GlasshouseCacheUnavailable": (
        'min by (namespace, pod) (glasshouse_cache_available{job="glasshouse"})'
    ),
    "GlasshouseCacheErrors": (
        'sum by (namespace, job) (rate(glasshouse_cache_requests_total{job="glasshouse",'
        'result="error"}[5m])) / sum by (namespace, job) '
        '(rate(glasshouse_cache_requests_total{job="glasshouse"}[5m]))'
    ),
    "GlasshouseJobsWaitingTooLong": (
        "max by (namespace) "
        '(max_over_time(glasshouse_jobs_oldest_waiting_seconds{job="glasshouse-worker"}[2m]))'
    ),
    "GlasshouseJobFailureRatioHigh": (
        "sum by (namespace, task) "
        '(increase(glasshouse_jobs_succeeded_total{job="glasshouse-worker"}[15m])) '
        "+ sum by (namespace, task) "
        '(increase(glasshouse_jobs_failed_total{job="glasshouse-worker"}[15m]))'
    ),
    "GlasshouseJobsNotSwept": (
        'count by (namespace) (glasshouse_jobs_queue_depth{job="glasshouse-worker"})'
    ),
    "GlasshouseStreamSlowConsumers": (
        'sum by (namespace) (rate(glasshouse_stream_duration_seconds_count{job="glasshouse"}[10m]))'
    ),
}
# Alerts on series the service does not export, with what provides them in a cluster.
ALERT_NEEDS = {
    "GlasshousePodsNotReady": "kube-state-metrics",
    "GlasshouseNoReadyPods": "kube-state-metrics",
    "GlasshouseRolloutStuck": "kube-state-metrics",
    "GlasshouseMigrationFailed": "kube-state-metrics",
}


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    try:
        asyncio.run(_check_redis())
    except (OSError, ConnectionError, redis.exceptions.RedisError) as exc:
        unavailable(f"Redis at {REDIS_URL} unreachable: {exc}")
    with migrated_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def jobs_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A queue (and sweeper lock) of this test's own, shared by the API and the worker."""
    return {
        "GLASSHOUSE_JOBS__QUEUE_NAME": f"gh-deploy-jobs-{uuid.uuid4().hex[:16]}",
        "GLASSHOUSE_JOBS__FILES_DIR": str(tmp_path_factory.mktemp("files")),
    }


@pytest.fixture(scope="module")
def service(
    database_url: str, jobs_settings: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gunicorn]:
    with running_gunicorn(
        database_url,
        tmp_path_factory.mktemp("gunicorn"),
        REDIS_URL=REDIS_URL,
        GLASSHOUSE_CACHE__KEY_PREFIX=f"gh-deploy-{uuid.uuid4().hex[:16]}",
        GLASSHOUSE_RATE_LIMIT__MAX_FAILURES_PER_CLIENT=str(MAX_FAILURES_PER_CLIENT),
        GLASSHOUSE_SERVER__DRAIN_SECONDS="0.5",  # quick teardown; drain tested elsewhere
        GLASSHOUSE_JOBS__QUEUE_NAME=jobs_settings["GLASSHOUSE_JOBS__QUEUE_NAME"],
        GLASSHOUSE_JOBS__FILES_DIR=jobs_settings["GLASSHOUSE_JOBS__FILES_DIR"],
    ) as server:
        yield server


@pytest.fixture(scope="module")
def job_worker(
    database_url: str, jobs_settings: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobWorker]:
    with running_job_worker(
        database_url, REDIS_URL, tmp_path_factory.mktemp("worker"), **jobs_settings
    ) as worker:
        yield worker


def rules_evaluated_every_second(directory: Path) -> Path:
    """rules.yml with no group interval of its own: the 30-day group's 5m would not come round
    before this test ends. The rules themselves are unchanged."""
    rules: dict[str, Any] = load_yaml(RULES)
    for group in rules["groups"]:
        group.pop("interval", None)
    path = directory / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    return path


def prometheus_config(metrics_port: int, worker_metrics_port: int, rules: Path) -> dict[str, Any]:
    """deploy/compose/prometheus.yml, scraping this test's gunicorn and worker every second."""
    config: dict[str, Any] = load_yaml(COMPOSE.parent / "prometheus.yml")
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(rules)]
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "glasshouse")
    assert job.pop("dns_sd_configs")[0]["port"] == 9100
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    worker = next(
        (job for job in config["scrape_configs"] if job["job_name"] == "glasshouse-worker"), None
    )
    assert worker is not None, "deploy/compose/prometheus.yml does not scrape the job worker"
    assert worker.pop("dns_sd_configs")[0]["port"] == 9101
    worker["static_configs"] = [{"targets": [f"127.0.0.1:{worker_metrics_port}"]}]
    # Only the service: the compose file's self-scrape would reach whatever listens on :9090.
    config["scrape_configs"] = [job, worker]
    return config


@pytest.fixture(scope="module")
def prometheus(
    service: Gunicorn, job_worker: JobWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: run `make tools` (Debian's prometheus package)")
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    rules = rules_evaluated_every_second(directory)
    config.write_text(  # JSON is YAML
        json.dumps(prometheus_config(service.metrics_port, job_worker.metrics_port, rules))
    )
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: _answers(f"{server.url}/-/ready"), 30, lambda: log_path.read_text())
        # A first scrape before any traffic, so every rate() has a starting point.
        wait_for(lambda: bool(server.query('up{job="glasshouse"} == 1')), 30, log_path.read_text)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition: Any, seconds: float, details: Any = lambda: "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"still not true after {seconds} s\n{details()}")


def expect(response: httpx.Response, status: int) -> httpx.Response:
    assert response.status_code == status, (response.request.url, response.text)
    return response


def drive_traffic(base_url: str) -> None:
    """What users do, every status class but 5xx: a sound service has none to give; one of
    them watches the events of their items on a stream for a moment."""
    email, password = f"deploy-{uuid.uuid4().hex[:8]}@example.com", "deploy-e2e-pw-1"
    with httpx.Client(base_url=base_url, timeout=10) as client:
        expect(
            client.post("/api/v1/auth/register", json={"email": email, "password": password}), 201
        )
        tokens = expect(
            client.post("/api/v1/auth/token", data={"username": email, "password": password}), 200
        ).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        with client.stream("GET", "/api/v1/events", headers=auth) as events:
            expect(events, 200)
            ids = [
                expect(
                    client.post(
                        "/api/v1/items", headers=auth, json={"title": f"Fern {i}", "priority": 2}
                    ),
                    201,
                ).json()["id"]
                for i in range(3)
            ]
            # The first event arrives; the client leaves (a stream closed, by its client).
            next(line for line in events.iter_lines() if line.startswith("event: item."))
        for _ in range(2):  # a miss, then a hit
            expect(client.get("/api/v1/items", headers=auth), 200)
            expect(client.get(f"/api/v1/items/{ids[0]}", headers=auth), 200)
        expect(client.patch(f"/api/v1/items/{ids[0]}", headers=auth, json={"status": "done"}), 200)
        expect(client.delete(f"/api/v1/items/{ids[-1]}", headers=auth), 204)
        expect(client.get("/api/v1/items/987654321", headers=auth), 404)
        for path in ("/nope", "/wp-login.php", "/api/v1/nothing-here"):
            expect(client.get(path), 404)  # handler="none"
        expect(client.get("/api/v1/items"), 401)
        refreshed = expect(
            client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
            200,
        ).json()
        expect(
            client.post(
                "/api/v1/auth/logout",
                headers={"Authorization": f"Bearer {refreshed['access_token']}"},
            ),
            204,
        )
        wrong = {"username": email, "password": "not-the-password"}
        for _ in range(MAX_FAILURES_PER_CLIENT):
            expect(client.post("/api/v1/auth/token", data=wrong), 401)
        expect(client.post("/api/v1/auth/token", data=wrong), 429)


@pytest.fixture(scope="module")
def scraped(service: Gunicorn, prometheus: Prometheus) -> Prometheus:
    """Prometheus once it has scraped the traffic and evaluated the rules over it."""
    drive_traffic(service.url)
    wait_for(
        lambda: (
            bool(prometheus.query('glasshouse_rate_limited_total{limit="login_client"} > 0'))
            and bool(prometheus.query("glasshouse_items_deleted_total > 0"))
            and bool(prometheus.query("glasshouse_stream_messages_sent_total > 0"))
            and bool(
                prometheus.query(
                    'glasshouse_stream_duration_seconds_count{reason="client_closed"} > 0'
                )
            )
            # The worker's first sweep (a sweep interval after it starts) gives the gauges.
            and bool(prometheus.query('glasshouse_jobs_queue_depth{job="glasshouse-worker"}'))
        ),
        30,
    )
    time.sleep(3)  # a few more scrapes and rule evaluations after the last request
    return prometheus


def as_promql(expr: str) -> str:
    """A Grafana query as Grafana would send it, with every pod of every namespace selected."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", ".*")
        .replace("$pod", ".*")
    )


def test_probe_paths_of_the_manifests_answer_on_the_running_service(service: Gunicorn) -> None:
    container = find(built_objects("prod"), "Deployment", "glasshouse")["spec"]["template"]["spec"][
        "containers"
    ][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        expect(httpx.get(f"{service.url}{path}", timeout=5), 200)


def test_prometheus_scrapes_the_pod_with_the_labels_the_queries_use(scraped: Prometheus) -> None:
    (target,) = scraped.query('up{job="glasshouse"}')
    assert target["value"][1] == "1"
    assert target["metric"]["namespace"] == NAMESPACE
    assert target["metric"]["pod"] == "127.0.0.1"


def test_the_rules_file_loads_and_every_rule_evaluates_cleanly(scraped: Prometheus) -> None:
    groups = scraped.api("rules")["groups"]
    # Prometheus lists a file's groups by name, not in the file's order.
    assert sorted(group["name"] for group in groups) == sorted(
        group["name"] for group in rule_groups()
    )
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(recording_rules()) + len(alerting_rules())
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert broken == {}
    # Nothing is wrong with this service, and Prometheus agrees.
    firing = [rule["name"] for rule in rules if rule.get("state") == "firing"]
    assert firing == []


def test_every_recorded_series_has_data(scraped: Prometheus) -> None:
    empty = [name for name in sorted(recorded_series()) if not scraped.query(name)]
    assert empty == []


def test_every_dashboard_query_returns_data(scraped: Prometheus) -> None:
    empty = []
    count = 0
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        for title, expr in panel_queries(dashboard):
            count += 1
            if not scraped.query(as_promql(expr)):
                empty.append(f"{path.stem} / {title}: {expr}")
        for variable, selector, label in variable_queries(dashboard):
            # label_values(selector, label), as Prometheus answers it.
            values = scraped.query(f"group by ({label}) ({as_promql(selector)})")
            if not values or not values[0]["metric"].get(label):
                empty.append(f"{path.stem} / variable {variable}: {selector}")
    assert count > 40
    assert empty == [], "\n".join(empty)


def test_every_alert_expression_evaluates_and_its_signal_has_data(scraped: Prometheus) -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in alerting_rules()}
    assert set(ALERT_SIGNALS) | set(ALERT_NEEDS) == set(alerts), "list every alert here"
    for name, expr in alerts.items():
        result = scraped.query(expr)  # valid PromQL on real data
        # Latency on a busy CI machine is not for this test to judge; cache availability has a
        # test of its own below. The rest must be quiet on a healthy service.
        if "Latency" not in name and name != "GlasshouseCacheUnavailable":
            assert result == [], f"{name} would fire on a healthy service"
    empty = [name for name, signal_expr in ALERT_SIGNALS.items() if not scraped.query(signal_expr)]
    assert empty == []
    # The signal is the alert's own expression minus its threshold: same metrics.
    for name, signal_expr in ALERT_SIGNALS.items():
        own = metric_names(alerts[name])
        assert metric_names(signal_expr) <= own | {"up"}, name
    for name, provider in ALERT_NEEDS.items():
        needed = metric_names(alerts[name])
        assert all(EXTERNAL_SERIES[metric] == provider for metric in needed), name


def test_cache_available_reads_1_while_redis_answers(scraped: Prometheus) -> None:
    # The master must not declare metrics of its own: its never-updated gauge would win.
    (sample,) = scraped.query('glasshouse_cache_available{job="glasshouse"}')
    assert sample["value"][1] == "1"


def exported_series(metrics_url: str) -> set[str]:
    text = httpx.get(metrics_url, timeout=5).text
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def used_metrics() -> set[str]:
    expressions = [rule["expr"] for rule in alerting_rules() + recording_rules()]
    expressions += [expr for path in DASHBOARDS for _, expr in panel_queries(load_dashboard(path))]
    return set().union(*(metric_names(expr) for expr in expressions))


def test_every_metric_used_is_exported_by_the_running_service(
    service: Gunicorn, job_worker: JobWorker, scraped: Prometheus
) -> None:
    exported = exported_series(service.metrics_url) | exported_series(job_worker.metrics_url)
    missing = used_metrics() - exported - recorded_series() - set(EXTERNAL_SERIES)
    assert missing == set()
    # The external ones really are not the service's: kube-state-metrics provides them.
    assert not (set(EXTERNAL_SERIES) & exported)
    assert scraped.query("up"), "Prometheus records up for every target"


def test_counters_are_only_read_through_rate_or_increase(scraped: Prometheus) -> None:
    """By the types the service itself declares in its exposition (Prometheus' metadata)."""
    metadata = scraped.api("metadata")
    monotonic_families = {
        family for family, entries in metadata.items() if entries[0]["type"] != "gauge"
    }

    def is_monotonic(name: str) -> bool:
        for suffix in ("", "_total", "_bucket", "_count", "_sum"):
            if suffix in {"", "_total"} or name.endswith(suffix):
                family = name.removesuffix(suffix) if suffix else name
                if family in monotonic_families or f"{family}_total" in monotonic_families:
                    return True
        return False

    assert is_monotonic("http_requests_total")
    assert is_monotonic("http_request_duration_seconds_bucket")
    assert not is_monotonic("glasshouse_db_pool_size")
    expressions = [rule["expr"] for rule in alerting_rules() + recording_rules()]
    expressions += [expr for path in DASHBOARDS for _, expr in panel_queries(load_dashboard(path))]
    unrated = {
        reference.name
        for expr in expressions
        for reference in metric_references(expr)
        if is_monotonic(reference.name) and reference.function not in RATE_FUNCTIONS
    }
    assert unrated == set()
