"""The Grafana dashboards and provisioning: templated datasource, namespace and pod variables,
every query on real metrics with counters read through rate()/increase(), links to traces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    DASHBOARDS,
    DEPLOY,
    expression_problems,
    load_dashboard,
    load_yaml,
    metric_names,
    panel_queries,
    panels,
    variable_queries,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"


@pytest.fixture(params=DASHBOARDS, ids=[path.stem for path in DASHBOARDS])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    return load_dashboard(path)


def test_three_dashboards_with_unique_uids() -> None:
    uids = [load_dashboard(path)["uid"] for path in DASHBOARDS]
    assert sorted(uids) == ["glasshouse-overview", "glasshouse-runtime", "glasshouse-slo"]


def test_datasource_namespace_and_pod_are_variables(dashboard: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tempo"]["type"] == "datasource"
    assert variables["tempo"]["query"] == "tempo"
    for name in ("namespace", "pod"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] is True
        assert variables[name]["allValue"] == ".*"
    assert {name for name, _, _ in variable_queries(dashboard)} == {"namespace", "pod"}


def test_every_query_uses_the_datasource_variable_and_namespace(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        if panel["type"] in {"row", "text"}:
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'namespace=~"$namespace"' in target["expr"], panel["title"]


def test_queries_use_real_metrics_and_rate_every_counter(dashboard: dict[str, Any]) -> None:
    problems = {
        f"{title}: {expr}": expression_problems(expr) for title, expr in panel_queries(dashboard)
    }
    assert {query: found for query, found in problems.items() if found} == {}


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["title"], panel


def uses(dashboard_uid: str) -> set[str]:
    dashboard = next(
        load_dashboard(path) for path in DASHBOARDS if load_dashboard(path)["uid"] == dashboard_uid
    )
    return set().union(*(metric_names(expr) for _, expr in panel_queries(dashboard)))


def test_overview_shows_rate_errors_latency_by_route_and_in_flight() -> None:
    overview = load_dashboard(DEPLOY / "grafana" / "dashboards" / "glasshouse-overview.json")
    queries = [expr for _, expr in panel_queries(overview)]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            f"histogram_quantile({quantile}, sum by (le, handler)" in expr for expr in queries
        ), quantile
    assert any('status="5xx"' in expr for expr in queries)
    assert {"http_requests_total", "http_requests_inprogress"} <= uses("glasshouse-overview")


def test_slo_dashboard_shows_budgets_and_burn_rates() -> None:
    names = uses("glasshouse-slo")
    assert "namespace_job:http_requests_5xx:ratio_rate1h" in names
    assert "namespace_job:http_requests_slow:ratio_rate1h" in names


def test_runtime_dashboard_covers_the_dependencies() -> None:
    assert {
        "up",
        "glasshouse_app_info",
        "glasshouse_db_pool_connections",
        "glasshouse_db_pool_size",
        "glasshouse_cache_requests_total",
        "glasshouse_cache_available",
        "glasshouse_login_attempts_total",
        "glasshouse_rate_limited_total",
    } <= uses("glasshouse-runtime")


def test_latency_and_error_panels_link_to_traces() -> None:
    overview = load_dashboard(DEPLOY / "grafana" / "dashboards" / "glasshouse-overview.json")
    links = [
        link["url"]
        for panel in panels(overview)
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    ]
    assert len(links) >= 4
    for url in links:
        assert url.startswith("/explore?")
        assert "${tempo}" in url
        assert "${__field.labels.handler:percentencode}" in url
    assert any(link["type"] == "link" and "${tempo}" in link["url"] for link in overview["links"])


def test_provisioning_points_at_prometheus_tempo_and_the_dashboards() -> None:
    datasources = load_yaml(PROVISIONING / "datasources" / "datasources.yaml")["datasources"]
    assert {source["type"] for source in datasources} == {"prometheus", "tempo"}
    providers = load_yaml(PROVISIONING / "dashboards" / "dashboards.yaml")["providers"]
    (provider,) = providers
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
