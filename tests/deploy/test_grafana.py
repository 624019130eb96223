"""The Grafana dashboards and provisioning: templated datasource, namespace and pod variables,
every query on real metrics and their real labels with counters read through rate()/increase(),
links to traces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    DASHBOARDS,
    DEPLOY,
    EXTERNAL_SERIES,
    alerting_rules,
    expression_problems,
    label_problems,
    load_dashboard,
    load_yaml,
    metric_names,
    panel_queries,
    panels,
    recording_rules,
    series_labels,
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
    # SLOs are per service, not per pod: that dashboard has no pod to choose.
    per_pod = dashboard["uid"] != "glasshouse-slo"
    expected = ("namespace", "pod") if per_pod else ("namespace",)
    for name in expected:
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] is True
        assert variables[name]["allValue"] == ".*"
    assert {name for name, _, _ in variable_queries(dashboard)} == set(expected)


def references(text: str, name: str) -> bool:
    return re.search(rf"\$(\{{{name}\b|{name}\b)", text) is not None


def test_every_variable_is_used(dashboard: dict[str, Any]) -> None:
    """A query variable by some panel's query; a datasource variable by a panel or a link."""
    queries = " ".join(expr for _, expr in panel_queries(dashboard))
    panels_and_links = json.dumps([dashboard["panels"], dashboard.get("links", [])])
    unused = [
        variable["name"]
        for variable in dashboard["templating"]["list"]
        if not references(
            panels_and_links if variable["type"] == "datasource" else queries, variable["name"]
        )
    ]
    assert unused == []


def test_references_finds_both_spellings_and_whole_names_only() -> None:
    assert references('x{pod=~"$pod"}', "pod")
    assert references("${tempo}", "tempo")
    assert not references('x{pod=~"$pods"}', "pod")


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


def test_queries_name_only_labels_their_series_carry(dashboard: dict[str, Any]) -> None:
    problems = {
        f"{title}: {expr}": label_problems(expr) for title, expr in panel_queries(dashboard)
    }
    assert {query: found for query, found in problems.items() if found} == {}


def test_rules_name_only_labels_their_series_carry() -> None:
    problems = {
        rule.get("alert") or rule["record"]: label_problems(rule["expr"])
        for rule in alerting_rules() + recording_rules()
    }
    assert {rule: found for rule, found in problems.items() if found} == {}


# The panel the issue found: the gauge has no handler label, so this drew one blank series.
OLD_IN_FLIGHT_BY_ROUTE = (
    "sum by (handler) (http_requests_inprogress"
    '{job="glasshouse", namespace=~"$namespace", pod=~"$pod"})'
)


def test_the_label_check_catches_a_grouping_label_the_series_lacks() -> None:
    assert "handler" not in series_labels()["http_requests_inprogress"]
    assert label_problems(OLD_IN_FLIGHT_BY_ROUTE) == [
        "sum by (handler): not a label of any series inside"
    ]
    # What an inner aggregation dropped is gone for the outer one.
    assert label_problems("max by (pod) (sum by (namespace) (rate(http_requests_total[5m])))") == [
        "max by (pod): not a label of any series inside"
    ]


def test_the_label_check_catches_a_matcher_and_a_join_label_the_series_lack() -> None:
    assert label_problems('sum(rate(glasshouse_cache_near_hits_total{result="hit"}[5m]))') == [
        "glasshouse_cache_near_hits_total{result=...}: "
        "glasshouse_cache_near_hits_total has no label result"
    ]
    assert label_problems(
        'http_request_duration_seconds_count{le="0.25"} / on (pod, handler) up'
    ) == [
        "http_request_duration_seconds_count{le=...}: "
        "http_request_duration_seconds_count has no label le"
    ]
    assert label_problems("glasshouse_db_pool_size / on (state) glasshouse_app_info") == [
        "on (state): no operand carries it"
    ]


def test_the_label_check_accepts_what_the_series_carry() -> None:
    assert (
        label_problems(
            "histogram_quantile(0.95, sum by (le, handler) "
            "(rate(http_request_duration_seconds_bucket[$__rate_interval])))"
        )
        == []
    )
    assert (
        label_problems("max by (namespace) (namespace_job:http_requests_5xx:ratio_rate1h) / 0.001")
        == []
    )
    assert (
        label_problems(
            'sum by (deployment) (kube_deployment_status_condition{condition="Available"})'
        )
        == []
    )


def test_every_external_series_has_a_label_set() -> None:
    assert set(EXTERNAL_SERIES) <= set(series_labels())


def test_near_cache_hits_are_not_divided_by_lookups_of_another_kind() -> None:
    """Near-cache hits count item reads and session checks; the cache's result counter only
    item reads: a ratio of the two could pass 100%."""
    for path in DASHBOARDS:
        for title, expr in panel_queries(load_dashboard(path)):
            if "glasshouse_cache_near_hits_total" in metric_names(expr):
                assert "glasshouse_cache_requests_total" not in metric_names(expr), title


SLO_STATS = (
    "Availability, 30 days",
    "Availability budget left",
    "Latency SLI, 30 days",
    "Latency budget left",
)


def test_thirty_day_figures_come_from_recording_rules_and_state_the_retention() -> None:
    """`increase(...[30d])` at every refresh is costly, and on a 10-day retention silently a
    10-day figure: the rules keep the ratio; the panels say what retention they need."""
    slo = load_dashboard(DEPLOY / "grafana" / "dashboards" / "glasshouse-slo.json")
    thirty_day = [panel for panel in panels(slo) if "30 days" in panel.get("description", "")]
    assert {panel["title"] for panel in thirty_day} >= set(SLO_STATS)
    for panel in thirty_day:
        for target in panel["targets"]:
            assert "[30d]" not in target["expr"], panel["title"]
            assert metric_names(target["expr"]) <= {
                "namespace_job:http_requests_5xx:ratio_rate30d",
                "namespace_job:http_requests_slow:ratio_rate30d",
            }, panel["title"]
        assert "at least 30 days" in panel["description"], panel["title"]
        assert "10d" in panel["description"], panel["title"]


def color_at(panel: dict[str, Any], value: float) -> str:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    color: str = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return color


def test_stats_are_red_where_zero_is_bad() -> None:
    """No pod scraped, no availability, no budget left: each reads red, not green."""
    by_title = {
        panel["title"]: panel
        for path in DASHBOARDS
        for panel in panels(load_dashboard(path))
        if panel["type"] == "stat"
    }
    for title in ("Pods scraped", *SLO_STATS):
        assert color_at(by_title[title], 0) == "red", title
    assert color_at(by_title["Pods scraped"], 1) == "green"
    assert color_at(by_title["Availability, 30 days"], 0.9995) == "green"


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


def test_runtime_dashboard_covers_the_live_streams() -> None:
    assert {
        "glasshouse_streams_open",
        "glasshouse_streams_refused_total",
        "glasshouse_stream_messages_sent_total",
        "glasshouse_stream_messages_dropped_total",
        "glasshouse_stream_duration_seconds_count",
        "glasshouse_stream_duration_seconds_bucket",
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
