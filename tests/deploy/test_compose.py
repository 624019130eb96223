"""deploy/compose: there is no Docker engine here, so the stack cannot be started; instead its
files are read and cross-checked: every service is there, every variable is a real setting,
ports, hosts and mounted files line up between the service, its job worker, Prometheus,
Grafana, the collector and Tempo, and nothing is published beyond 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.settings import HttpSettings, JobsSettings, ObservabilitySettings
from tests.deploy.support import COMPOSE, DEPLOY, REPO, RUNTIME, load_yaml, setting_names

SERVICES = {"app", "migrate", "postgres", "redis", "prometheus", "grafana", "otel-collector"}
SERVICES |= {"tempo", "worker"}
GLASSHOUSE = ("app", "worker", "migrate")  # built from the repository's Dockerfile


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE)
    return document


def app_env(compose: dict[str, Any]) -> dict[str, str]:
    """The app's environment: the image's, then compose's."""
    return {**RUNTIME.env(), **compose["services"]["app"]["environment"]}


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to the compose file) of each bind mount."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = (COMPOSE.parent / source).resolve()
    return found


def test_every_part_of_the_stack_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    for name in GLASSHOUSE:
        service = compose["services"][name]
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
    assert compose["services"]["migrate"]["command"] == ["alembic", "upgrade", "head"]
    depends = compose["services"]["app"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert compose["services"]["migrate"]["depends_on"]["postgres"]["condition"] == (
        "service_healthy"
    )


def test_the_worker_runs_the_app_image_with_the_apps_settings(compose: dict[str, Any]) -> None:
    """Same image, environment and dependencies as the app; the jobs need it once REDIS_URL is
    set; stopping leaves time for the shutdown wait and the handback to the queue."""
    app, worker = compose["services"]["app"], compose["services"]["worker"]
    assert worker["command"] == ["python", "-m", "service.jobs"]
    for key in ("build", "image", "environment", "depends_on", "tmpfs", "security_opt"):
        assert worker[key] == app[key], key
    assert app_env(compose)["REDIS_URL"], "without Redis the app runs the jobs itself"
    env = app_env(compose)
    wait = float(
        env.get("GLASSHOUSE_JOBS__SHUTDOWN_WAIT_SECONDS", JobsSettings().shutdown_wait_seconds)
    )
    assert int(worker["stop_grace_period"].removesuffix("s")) >= wait + 5 + 10
    # The image's HEALTHCHECK asks the API's port: the worker's asks its own /livez.
    port = int(env.get("GLASSHOUSE_JOBS__WORKER_METRICS_PORT", JobsSettings().worker_metrics_port))
    assert f"http://127.0.0.1:{port}/livez" in " ".join(worker["healthcheck"]["test"])
    assert f"127.0.0.1:{port}:{port}" in worker["ports"]


def test_the_app_and_the_worker_share_the_files_volume(compose: dict[str, Any]) -> None:
    files_dir = app_env(compose)["GLASSHOUSE_JOBS__FILES_DIR"]
    for name in ("app", "worker"):
        named = [v for v in compose["services"][name]["volumes"] if not v.startswith(".")]
        assert named == [f"files:{files_dir}"], name
    # Writable by the service's uid on a read-only root filesystem.
    options = compose["volumes"]["files"]["driver_opts"]
    assert options["type"] == "tmpfs"
    assert "uid=10001" in options["o"].split(",")


def test_every_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    for name in GLASSHOUSE:
        names = set(compose["services"][name]["environment"])
        assert names - setting_names() == set(), name


def test_urls_point_at_the_stack(compose: dict[str, Any]) -> None:
    env = app_env(compose)
    services = compose["services"]
    database = urlsplit(env["DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert urlsplit(env["REDIS_URL"]).hostname == "redis"
    assert len(env["GLASSHOUSE_AUTH__JWT_SECRET"].split(":-", 1)[-1]) >= 32
    otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    collector = load_yaml(mounts(services["otel-collector"])["/etc/otelcol/config.yaml"])
    http_endpoint = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert otlp.hostname == "otel-collector"
    assert otlp.port == int(http_endpoint.rsplit(":", 1)[1])
    # The collector sends to Tempo's OTLP/gRPC receiver.
    tempo = load_yaml(mounts(services["tempo"])["/etc/tempo/tempo.yaml"])
    tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    exporter = collector["exporters"]["otlp/tempo"]["endpoint"]
    assert exporter == f"tempo:{tempo_grpc.rsplit(':', 1)[1]}"
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/tempo"]


def test_ports_are_the_services_and_published_on_loopback_only(compose: dict[str, Any]) -> None:
    env = app_env(compose)
    http_port = int(env.get("GLASSHOUSE_HTTP__PORT", HttpSettings().port))
    metrics_port = int(
        env.get("GLASSHOUSE_OBSERVABILITY__METRICS_PORT", ObservabilitySettings().metrics_port)
    )
    published = compose["services"]["app"]["ports"]
    assert f"127.0.0.1:{http_port}:{http_port}" in published
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    prometheus = load_yaml(
        mounts(compose["services"]["prometheus"])["/etc/prometheus/prometheus.yml"]
    )
    job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "glasshouse")
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["app"]
    assert discovery["port"] == metrics_port


def test_prometheus_loads_the_one_rules_file(compose: dict[str, Any]) -> None:
    service_mounts = mounts(compose["services"]["prometheus"])
    prometheus = load_yaml(service_mounts["/etc/prometheus/prometheus.yml"])
    (rule_file,) = prometheus["rule_files"]
    assert service_mounts[rule_file] == DEPLOY / "prometheus" / "rules.yml"
    # The alerts and dashboards select on namespace and pod: the scrape sets both.
    job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "glasshouse")
    targets = {rule["target_label"] for rule in job["relabel_configs"]}
    assert {"namespace", "pod"} <= targets


def test_grafana_gets_the_provisioning_and_the_dashboards(compose: dict[str, Any]) -> None:
    service_mounts = mounts(compose["services"]["grafana"])
    provisioning = service_mounts["/etc/grafana/provisioning"]
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    providers = load_yaml(provisioning / "dashboards" / "dashboards.yaml")["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert service_mounts[dashboards_path] == DEPLOY / "grafana" / "dashboards"
    sources = load_yaml(provisioning / "datasources" / "datasources.yaml")["datasources"]
    urls = {source["type"]: urlsplit(source["url"]) for source in sources}
    services = compose["services"]
    assert urls["prometheus"].hostname == "prometheus"
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    assert urls["prometheus"].port == 9090
    tempo = load_yaml(mounts(services["tempo"])["/etc/tempo/tempo.yaml"])
    assert urls["tempo"].hostname == "tempo"
    assert urls["tempo"].port == tempo["server"]["http_listen_port"]


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
