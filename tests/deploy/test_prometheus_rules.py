"""deploy/prometheus/rules.yml: valid for promtool, unit-tested (every alert seen firing and seen
quiet), built only on metrics the service declares, each alert explained in deploy/RUNBOOK.md."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.deploy.support import (
    RULE_TESTS,
    RULES,
    RUNBOOK,
    alerting_rules,
    expression_problems,
    load_yaml,
    recording_rules,
)

RUNBOOK_PREFIX = "https://github.com/glasshouse/glasshouse/blob/main/deploy/RUNBOOK.md#"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run `make tools` (Debian's prometheus package)")
    return subprocess.run(
        ["promtool", *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(alerting_rules()) + len(recording_rules())
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alerting_rules()}
    assert alerts - firing == set(), "never tested firing"
    assert alerts - quiet == set(), "never tested quiet"


def test_rules_use_only_real_metrics_and_rate_their_counters() -> None:
    problems = {
        rule.get("alert") or rule["record"]: expression_problems(rule["expr"])
        for rule in alerting_rules() + recording_rules()
    }
    assert {name: found for name, found in problems.items() if found} == {}


def test_every_alert_is_explained_and_has_its_runbook_section() -> None:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings
    }
    for rule in alerting_rules():
        name = rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), url
        anchor = url.removeprefix(RUNBOOK_PREFIX)
        assert anchor == name.lower(), url
        assert anchor in anchors, f"deploy/RUNBOOK.md has no section '## {name}'"
    alert_sections = {heading for heading in headings if heading.startswith("Glasshouse")}
    assert alert_sections == {rule["alert"] for rule in alerting_rules()}
