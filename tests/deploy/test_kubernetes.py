"""The Kubernetes manifests: kustomize builds them, strict schemas accept them, and what they
say agrees with the code: probe paths are routes, ports are where gunicorn and the job worker
bind, every variable is a real setting, the grace periods cover the drain and the job handback,
the API and the worker share the files volume."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from service.observability.jobs import LoopHeartbeat, start_worker_listener
from service.settings import HttpSettings, JobsSettings, ObservabilitySettings
from tests.conftest import make_settings
from tests.deploy.support import (
    ALL_INTERFACES,
    CUSTOM_KINDS,
    DASHBOARDS,
    KUBERNETES_VALIDATE,
    KUBERNETES_VERSION,
    OVERLAYS,
    REPO,
    TMP,
    built_objects,
    config_map_data,
    find,
    kustomize_build_text,
    rule_groups,
    setting_names,
    yaml_documents,
)
from tests.tools import run_tool

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}
SECRET_TEMPLATE = REPO / "deploy" / "k8s" / "secret.example.yaml"
DEBUG_POD = REPO / "deploy" / "k8s" / "debug" / "pod.yaml"
PROBES = {"startupProbe": "/health/startup", "readinessProbe": "/health/ready"}
PROBES["livenessProbe"] = "/health/live"
API = "glasshouse"
WORKER = "glasshouse-worker"
DEPLOYMENTS = (API, WORKER)
FILES_CLAIM = "glasshouse-files"
# After the shutdown wait, the worker hands unfinished jobs back to the queue within this.
JOB_HANDBACK_SECONDS = 5


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"])
        for obj in objects
        if obj["kind"] in WORKLOAD_KINDS
    ]


def glasshouse_containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Containers running the service's image (the API and the migration Job)."""
    deployment_image = api_container(objects)["image"]
    return [
        container
        for _, spec in pod_specs(objects)
        for container in spec["containers"]
        if container["image"] == deployment_image
    ]


def api_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return deployment_container(objects, API)


def worker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return deployment_container(objects, WORKER)


def deployment_container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    deployment = find(objects, "Deployment", name)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def effective_settings_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The service's environment in this overlay: ConfigMap, then a Secret with test values."""
    env = config_map_data(objects, "glasshouse-config")
    env.update(
        DATABASE_URL="postgresql://glasshouse:pw@postgres:5432/glasshouse",
        REDIS_URL="redis://redis:6379/0",
        GLASSHOUSE_AUTH__JWT_SECRET="k8s-manifest-test-secret-" + "x" * 40,
    )
    return env


@pytest.fixture(scope="module", params=list(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def objects(overlay: str) -> list[dict[str, Any]]:
    return built_objects(overlay)


def test_kustomize_builds_every_overlay(objects: list[dict[str, Any]], overlay: str) -> None:
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "Job"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert "PersistentVolumeClaim" in kinds
    for name in DEPLOYMENTS:
        find(objects, "Deployment", name)
        find(objects, "PodDisruptionBudget", name)
        find(objects, "NetworkPolicy", name)
    expected_namespace = {"base": "glasshouse", "dev": "glasshouse-dev", "prod": "glasshouse"}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == expected_namespace[overlay], obj["metadata"]
    if overlay == "prod":
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    if overlay == "dev":
        assert {"postgres", "redis"} <= {
            obj["metadata"]["name"] for obj in objects if obj["kind"] == "Deployment"
        }


def _validate(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return run_tool(
        KUBERNETES_VALIDATE,
        "kubernetes-validate",
        "--strict",
        "--kubernetes-version",
        KUBERNETES_VERSION,
        *map(str, paths),
        timeout=300,
    )


def test_every_object_passes_strict_kubernetes_schemas(tmp_path: Path) -> None:
    """All overlays in one run; the Prometheus Operator's custom resources are left out on
    purpose (no schema in kubernetes-validate) and checked by the tests below."""
    paths = []
    for name in OVERLAYS:
        standard = [obj for obj in built_objects(name) if obj["kind"] not in CUSTOM_KINDS]
        path = tmp_path / f"{name}.json"
        # One JSON document per line is YAML too.
        path.write_text("\n---\n".join(json.dumps(obj) for obj in standard) + "\n")
        paths.append(path)
    result = _validate([*paths, DEBUG_POD])  # the runbook's debugging pod too
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Couldn't find schema" not in output, output
    validated = len(re.findall(r"passed for resource", output))
    expected = 1 + sum(
        1 for name in OVERLAYS for obj in built_objects(name) if obj["kind"] not in CUSTOM_KINDS
    )
    assert validated == expected, output


def test_strict_schema_validation_catches_a_misspelled_field(tmp_path: Path) -> None:
    """The validator really is strict: a typo a human would make is refused."""
    deployment = copy.deepcopy(find(built_objects("base"), "Deployment", "glasshouse"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(deployment))
    result = _validate([path])
    assert result.returncode != 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_service_monitor_selects_the_metrics_port_of_the_service(name: str) -> None:
    """One ServiceMonitor per Deployment, each selecting its own Service only. Each gives its
    targets the job label the alerts and dashboards select on: its Service's name,
    job="glasshouse" for the API and job="glasshouse-worker" for the job workers."""
    objects = built_objects("prod")
    monitor = find(objects, "ServiceMonitor", name)
    service = find(objects, "Service", name)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    labels = service["metadata"]["labels"]
    job = labels[spec["jobLabel"]] if "jobLabel" in spec else service["metadata"]["name"]
    assert job == name
    container = deployment_container(objects, name)
    assert (container["name"] == "worker") == (name == WORKER)
    selected = [
        obj["metadata"]["name"]
        for obj in objects
        if obj["kind"] == "Service"
        and spec["selector"]["matchLabels"].items() <= obj["metadata"]["labels"].items()
    ]
    assert selected == [name]
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    port_names = {port["name"] for port in service["spec"]["ports"]}
    endpoint_keys = {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= endpoint_keys, endpoint
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint[key]), endpoint
        # The Service's port leads to the container's metrics port.
        (port,) = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
        assert port["targetPort"] == "metrics"


def test_prometheus_rule_is_rules_yml() -> None:
    """One source for the alerts: the PrometheusRule carries exactly the groups of rules.yml,
    and the generator says it is current."""
    rule = find(built_objects("prod"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["spec"] == {"groups": rule_groups()}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for item in group["rules"]:
            assert ("record" in item) != ("alert" in item), item
            assert set(item) <= {"record", "alert", "expr", "for", "labels", "annotations"}
            assert isinstance(item["expr"], str)
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in item.get(key, {}).values()), item
    check = subprocess.run(
        [sys.executable, "deploy/prometheus/render_prometheusrule.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_dashboards_are_config_maps_for_the_grafana_sidecar() -> None:
    objects = built_objects("prod")
    dashboards = {
        key: value
        for obj in objects
        if obj["kind"] == "ConfigMap" and obj["metadata"].get("labels", {}).get("grafana_dashboard")
        for key, value in obj["data"].items()
    }
    for obj in objects:
        if obj["kind"] == "ConfigMap" and "grafana_dashboard" in obj["metadata"].get("labels", {}):
            assert obj["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards == {path.name: path.read_text() for path in DASHBOARDS}


def test_probes_are_routes_of_the_app_on_the_http_port(objects: list[dict[str, Any]]) -> None:
    paths = create_app_openapi_paths()
    container = api_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe, expected in PROBES.items():
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == expected
        assert "get" in paths[http_get["path"]], f"{probe}: no GET {http_get['path']}"
        assert http_get["port"] == "http"
    env = effective_settings_env(objects)
    assert ports["http"] == int(env.get("GLASSHOUSE_HTTP__PORT", HttpSettings().port))
    assert ports["metrics"] == int(
        env.get("GLASSHOUSE_OBSERVABILITY__METRICS_PORT", ObservabilitySettings().metrics_port)
    )


def create_app_openapi_paths() -> dict[str, Any]:
    from service.main import create_app

    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"))
    paths: dict[str, Any] = app.openapi()["paths"]
    return paths


def test_the_worker_runs_the_service_image_like_the_api(objects: list[dict[str, Any]]) -> None:
    """Same image, settings, Secret and hardening as the API; only the command differs."""
    api_pod = find(objects, "Deployment", API)["spec"]["template"]["spec"]
    worker_pod = find(objects, "Deployment", WORKER)["spec"]["template"]["spec"]
    api, worker = api_container(objects), worker_container(objects)
    assert worker["command"] == ["python", "-m", "service.jobs"]
    for key in ("image", "imagePullPolicy", "envFrom", "env", "securityContext"):
        assert worker[key] == api[key], key
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken"):
        assert worker_pod[key] == api_pod[key], key
    assert worker_pod["enableServiceLinks"] is False


def test_worker_probes_and_port_are_its_listener(objects: list[dict[str, Any]]) -> None:
    """The worker's /livez and /metrics on the port and interface its settings give, probed
    there; the listener really answers the probe paths."""
    env = effective_settings_env(objects)
    container = worker_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    default_port = JobsSettings().worker_metrics_port
    assert ports == {"metrics": int(env.get("GLASSHOUSE_JOBS__WORKER_METRICS_PORT", default_port))}
    metrics_host = env.get("GLASSHOUSE_OBSERVABILITY__METRICS_HOST")
    assert metrics_host == ALL_INTERFACES, "the kubelet and Prometheus come from outside the pod"
    probe_paths = set()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http_get = container[probe]["httpGet"]
        assert http_get["port"] == "metrics", probe
        probe_paths.add(http_get["path"])
    assert probe_paths == {"/livez"}
    # The liveness probe never restarts a worker whose startup is merely slow.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    server = start_worker_listener("127.0.0.1", 0, LoopHeartbeat(stale_after_seconds=30))
    try:
        for path in [*probe_paths, "/metrics"]:
            url = f"http://127.0.0.1:{server.server_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200, path
    finally:
        server.shutdown()
        server.server_close()


def test_worker_grace_period_covers_the_job_handback(objects: list[dict[str, Any]]) -> None:
    """SIGTERM: running jobs get the shutdown wait, then unfinished ones go back to the queue;
    the kubelet's SIGKILL comes after both, with margin."""
    env = effective_settings_env(objects)
    wait = float(
        env.get("GLASSHOUSE_JOBS__SHUTDOWN_WAIT_SECONDS", JobsSettings().shutdown_wait_seconds)
    )
    spec = find(objects, "Deployment", WORKER)["spec"]["template"]["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= wait + JOB_HANDBACK_SECONDS + 10, (grace, wait)


def test_the_api_and_the_worker_share_the_files_volume(
    objects: list[dict[str, Any]], overlay: str
) -> None:
    """Uploads written by an API pod are read by any worker, exports written by a worker are
    served by any API pod: one ReadWriteMany claim, writable, where FILES_DIR points."""
    claim = find(objects, "PersistentVolumeClaim", FILES_CLAIM)
    # The dev overlay is a one-node cluster, where ReadWriteOnce is shared by every pod.
    expected_mode = "ReadWriteOnce" if overlay == "dev" else "ReadWriteMany"
    assert claim["spec"]["accessModes"] == [expected_mode]
    files_dir = effective_settings_env(objects)["GLASSHOUSE_JOBS__FILES_DIR"]
    for name in DEPLOYMENTS:
        spec = find(objects, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {
            volume["name"]
            for volume in spec["volumes"]
            if volume.get("persistentVolumeClaim", {}).get("claimName") == FILES_CLAIM
        }
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] in volumes]
        assert mount["mountPath"] == files_dir, name
        assert not mount.get("readOnly", False), name
        assert "subPath" not in mount, name
        # fsGroup makes the volume writable for the service's group on drivers that honour it.
        assert spec["securityContext"]["fsGroup"] == 10001, name
    job = find(objects, "Job", "glasshouse-migrate")["spec"]["template"]["spec"]
    assert not [v for v in job["volumes"] if "persistentVolumeClaim" in v]


def test_gunicorn_binds_where_the_manifests_point(objects: list[dict[str, Any]]) -> None:
    """gunicorn.conf.py itself, read with the overlay's environment: the bind and the metrics
    listener are the container ports, on every interface; the settings validate."""
    env = {**_plain_env(), **effective_settings_env(objects)}
    probe = (
        "import json, runpy\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "s = conf['_settings']\n"
        "print(json.dumps({'bind': conf['bind'], 'workers': conf['workers'],\n"
        "  'graceful_timeout': conf['graceful_timeout'],\n"
        "  'metrics': [s.observability.metrics_host, s.observability.metrics_port],\n"
        "  'metrics_dir': s.observability.metrics_dir, 'drain': s.server.drain_seconds,\n"
        "  'stream_wait': s.realtime.shutdown_wait_seconds}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout.strip().splitlines()[-1])
    container = api_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert conf["bind"] == [f"{ALL_INTERFACES}:{ports['http']}"]
    assert conf["metrics"] == [ALL_INTERFACES, ports["metrics"]]
    # The multiprocess directory sits inside a writable volume, strictly below its mount
    # point: gunicorn deletes and re-creates the directory at start.
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    metrics_dir = Path(conf["metrics_dir"])
    assert any(Path(mount) in metrics_dir.parents for mount in mounts), (metrics_dir, mounts)
    # The pod outlives the drain and the graceful timeout, with margin.
    grace = find(objects, "Deployment", "glasshouse")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert conf["drain"] < conf["graceful_timeout"]
    # After the drain, the event streams are closed (1001) and waited for before uvicorn's own
    # shutdown: both inside the graceful timeout, with room for the requests in flight.
    assert conf["drain"] + conf["stream_wait"] < conf["graceful_timeout"], conf
    assert grace >= conf["graceful_timeout"] + 10, (grace, conf)
    assert grace >= conf["drain"] + conf["graceful_timeout"], (grace, conf)


def _plain_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GLASSHOUSE_", "OTEL_", "PROMETHEUS_"))
        and name not in {"DATABASE_URL", "REDIS_URL", "POD_NAME", "POD_NAMESPACE"}
    }


def test_every_variable_is_a_real_setting(objects: list[dict[str, Any]], overlay: str) -> None:
    valid = setting_names()
    names: set[str] = set(config_map_data(objects, "glasshouse-config"))
    for container in glasshouse_containers(objects):
        names |= {variable["name"] for variable in container.get("env", [])}
        for source in container.get("envFrom", []):
            assert set(source) <= {"configMapRef", "secretRef"}, source
    if overlay == "dev":
        names |= set(config_map_data(objects, "glasshouse-secrets"))
    assert names - valid == set(), f"not settings of the service: {sorted(names - valid)}"


def test_secret_template_has_only_settings_and_no_usable_values() -> None:
    (secret,) = yaml_documents(SECRET_TEMPLATE.read_text())
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "glasshouse-secrets"
    keys = set(secret["stringData"])
    assert keys == {"DATABASE_URL", "REDIS_URL", "GLASSHOUSE_AUTH__JWT_SECRET"}
    assert keys <= setting_names()
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())
    # The placeholder JWT secret is refused in production, so it cannot be deployed by mistake.
    env = {**_plain_env(), **secret["stringData"], "GLASSHOUSE_ENVIRONMENT": "production"}
    result = subprocess.run(
        [sys.executable, "-c", "from service.settings import Settings; Settings(_env_file=None)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "GLASSHOUSE_AUTH__JWT_SECRET" in result.stderr
    # Every overlay's service reads exactly this Secret.
    for name in OVERLAYS:
        for container in glasshouse_containers(built_objects(name)):
            refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
            assert [ref.startswith("glasshouse-secrets") for ref in refs] == [True]
    # No overlay but dev ships a Secret object.
    for name in ("base", "prod"):
        assert not [obj for obj in built_objects(name) if obj["kind"] == "Secret"]


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_downward_api_gives_the_pod_name_and_namespace(
    objects: list[dict[str, Any]], name: str
) -> None:
    env = {variable["name"]: variable for variable in deployment_container(objects, name)["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_every_pod_is_locked_down(objects: list[dict[str, Any]]) -> None:
    for name, spec in pod_specs(objects):
        assert_locked_down(name, spec)


def test_the_runbooks_debugging_pod_is_locked_down_like_the_service() -> None:
    """The restricted Pod Security level rejects a plain `kubectl run`; this one it admits."""
    (pod,) = yaml_documents(DEBUG_POD.read_text())
    assert pod["kind"] == "Pod"
    assert pod["spec"]["activeDeadlineSeconds"] <= 3600
    assert_locked_down("Pod/glasshouse-debug", pod["spec"])
    containers = {container["name"]: container for container in pod["spec"]["containers"]}
    for name in ("psql", "redis"):  # they reach what the service reaches
        (source,) = containers[name]["envFrom"]
        assert source["secretRef"]["name"] == "glasshouse-secrets"


def test_a_stuck_rollout_and_a_failed_migration_can_be_seen(objects: list[dict[str, Any]]) -> None:
    """New pods wait in their startup probe for the migration Job: the window outlasts the Job's
    deadline, the rollout's deadline outlasts the window (then Progressing turns False, which
    GlasshouseRolloutStuck reads), and a failed Job stays long enough to read its logs."""
    deployment = find(objects, "Deployment", "glasshouse")
    job = find(objects, "Job", "glasshouse-migrate")
    startup = api_container(objects)["startupProbe"]
    startup_window = startup["periodSeconds"] * startup["failureThreshold"]
    assert startup_window >= job["spec"]["activeDeadlineSeconds"]
    assert deployment["spec"]["progressDeadlineSeconds"] > startup_window
    assert job["spec"]["ttlSecondsAfterFinished"] >= 24 * 3600


# PostgreSQL's default max_connections, less superuser_reserved_connections (3): what
# deploy/README.md ("Database connections") tells users their server must allow.
POSTGRES_MAX_CONNECTIONS = 100
POSTGRES_RESERVED_CONNECTIONS = 3


def test_database_connections_stay_under_max_connections(
    objects: list[dict[str, Any]], overlay: str
) -> None:
    """Every pod the HPA may run, the rollout's surge pods on top, each gunicorn worker's pool
    at its ceiling, the job workers (one process per pod, plus a stopping one beside its
    replacement during a rollout) and the migration Job: together under max_connections."""
    settings = make_settings("postgresql+asyncpg://x@localhost/x")  # the defaults
    env = config_map_data(objects, "glasshouse-config")
    workers = int(env.get("GLASSHOUSE_SERVER__WORKERS", settings.server.workers))
    pool_size = int(env.get("GLASSHOUSE_DATABASE__POOL_SIZE", settings.database.pool_size))
    overflow = int(env.get("GLASSHOUSE_DATABASE__MAX_OVERFLOW", settings.database.max_overflow))
    assert overflow == 0, "overflow connections are closed and reopened at every burst"
    max_replicas = find(objects, "HorizontalPodAutoscaler", "glasshouse")["spec"]["maxReplicas"]
    surge = find(objects, "Deployment", "glasshouse")["spec"]["strategy"]["rollingUpdate"]
    surge_pods = math.ceil(max_replicas * int(str(surge["maxSurge"]).rstrip("%")) / 100)
    assert str(surge["maxSurge"]).endswith("%")
    migration_job = 1  # alembic upgrade head: one connection
    job_workers = find(objects, "Deployment", WORKER)["spec"]
    assert job_workers["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    job_worker_pods = job_workers["replicas"] + 1
    demand = (max_replicas + surge_pods) * workers * (pool_size + overflow) + migration_job
    demand += job_worker_pods * (pool_size + overflow)
    assert demand <= POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED_CONNECTIONS, demand
    readme = (REPO / "deploy" / "README.md").read_text()
    assert f"`max_connections` {POSTGRES_MAX_CONNECTIONS}" in readme


def assert_locked_down(name: str, spec: dict[str, Any]) -> None:
    assert spec["automountServiceAccountToken"] is False, name
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True, name
    assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in context["capabilities"], name
        assert context.get("privileged", False) is False, name
        user = context.get("runAsUser", pod.get("runAsUser"))
        assert isinstance(user, int), name
        assert user >= 10000, name
        assert container["resources"]["requests"], name
        assert container["resources"]["limits"]["memory"], name
    # /tmp is a volume wherever the root filesystem is read-only.
    for container in spec["containers"]:
        mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
        assert TMP in mounts or container["name"] == "redis", name
    # Writable volumes are scratch space, secrets, or the shared files volume.
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            assert set(volume) & {"emptyDir", "secret"} or claim == FILES_CLAIM, (name, mount)


def test_the_migration_job_runs_alembic_with_the_service_image(
    objects: list[dict[str, Any]],
) -> None:
    job = find(objects, "Job", "glasshouse-migrate")
    deployment = find(objects, "Deployment", "glasshouse")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    api = api_container(objects)
    assert container["command"] == ["alembic", "upgrade", "head"]
    assert container["image"] == api["image"]
    assert container["envFrom"] == api["envFrom"]
    assert container["securityContext"] == api["securityContext"]
    job_pod = job["spec"]["template"]["spec"]
    api_pod = deployment["spec"]["template"]["spec"]
    assert job_pod["securityContext"] == api_pod["securityContext"]
    assert job_pod["restartPolicy"] == "Never"
    # Migration pods are neither API nor worker pods: no Service, PDB or HPA counts them.
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    for name in DEPLOYMENTS:
        selector = find(objects, "Deployment", name)["spec"]["selector"]["matchLabels"]
        assert not selector.items() <= job_labels.items(), name


def test_selectors_and_ports_line_up(objects: list[dict[str, Any]]) -> None:
    deployment = find(objects, "Deployment", "glasshouse")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = api_container(objects)
    port_names = {port["name"] for port in container["ports"]}
    assert port_names == {"http", "metrics"}

    service = find(objects, "Service", "glasshouse")
    assert service["spec"]["selector"] == selector
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert service_ports["http"]["port"] == 80
    assert service_ports["http"]["targetPort"] == "http"
    assert service_ports["metrics"]["targetPort"] == "metrics"

    hpa = find(objects, "HorizontalPodAutoscaler", "glasshouse")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "glasshouse",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = find(objects, "PodDisruptionBudget", "glasshouse")
    assert pdb["spec"]["selector"]["matchLabels"] == selector

    policy = find(objects, "NetworkPolicy", "glasshouse")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    ingress_ports = {
        port["port"] for rule in policy["spec"]["ingress"] for port in rule.get("ports", [])
    }
    assert ingress_ports == {"http", "metrics"}
    metrics_rule = next(
        rule
        for rule in policy["spec"]["ingress"]
        if any(port["port"] == "metrics" for port in rule["ports"])
    )
    assert metrics_rule["from"], "metrics must not be open to everyone"
    egress_ports = {
        port["port"] for rule in policy["spec"]["egress"] for port in rule.get("ports", [])
    }
    assert {53, 5432, 6379, 4318} <= egress_ports
    # Every workload has a NetworkPolicy selecting it.
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert any(
                p["spec"]["podSelector"]["matchLabels"].items() <= labels.items() for p in policies
            ), obj["metadata"]["name"]


def test_the_worker_has_its_own_selectors_and_policy(objects: list[dict[str, Any]]) -> None:
    """Worker pods are counted by their own PDB and Service only, never by the API's Service,
    PDB, HPA or NetworkPolicy; nothing but Prometheus may reach them, on the metrics port."""
    deployment = find(objects, "Deployment", WORKER)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["replicas"] >= 1
    assert not [
        hpa
        for hpa in objects
        if hpa["kind"] == "HorizontalPodAutoscaler"
        and hpa["spec"]["scaleTargetRef"]["name"] == WORKER
    ], "the worker's replicas are set, not autoscaled"
    api_selectors = [
        find(objects, "Service", API)["spec"]["selector"],
        find(objects, "PodDisruptionBudget", API)["spec"]["selector"]["matchLabels"],
        find(objects, "NetworkPolicy", API)["spec"]["podSelector"]["matchLabels"],
        find(objects, "Deployment", API)["spec"]["selector"]["matchLabels"],
    ]
    for api_selector in api_selectors:
        assert not api_selector.items() <= pod_labels.items(), api_selector

    pdb = find(objects, "PodDisruptionBudget", WORKER)
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1

    service = find(objects, "Service", WORKER)
    assert service["spec"]["selector"] == selector
    assert service["spec"]["clusterIP"] == "None", "nothing calls the worker: headless"
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["metrics"]

    policy = find(objects, "NetworkPolicy", WORKER)
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    api_policy = find(objects, "NetworkPolicy", API)
    monitoring = next(rule for rule in api_policy["spec"]["ingress"] if rule.get("from"))
    assert policy["spec"]["ingress"] == [monitoring], "only Prometheus, on the metrics port"
    assert policy["spec"]["egress"] == api_policy["spec"]["egress"]


def test_prod_samples_traces_as_documented() -> None:
    config = config_map_data(built_objects("prod"), "glasshouse-config")
    assert config["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert config["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")
    assert config["GLASSHOUSE_ENVIRONMENT"] == "production"


def test_namespaces_enforce_the_restricted_pod_security_standard() -> None:
    for name in ("dev", "prod"):
        namespace = find(built_objects(name), "Namespace")
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_builds_are_deterministic() -> None:
    """kustomize's generated names (content hashes) are stable: applying twice changes nothing."""
    kustomize_build_text.cache_clear()
    first = kustomize_build_text("prod")
    kustomize_build_text.cache_clear()
    assert kustomize_build_text("prod") == first
