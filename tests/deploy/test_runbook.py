"""deploy/RUNBOOK.md: every alert's section gives commands and ready PromQL; the PromQL parses
(promtool) and reads real metrics by labels they carry; the commands work as written in the
namespaces the manifests make (restricted Pod Security, logs across pods)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.deploy.support import (
    REPO,
    RUNBOOK,
    alerting_rules,
    expression_problems,
    label_problems,
)

FENCE = re.compile(r"^[ \t]*```(\w+)\n(.*?)^[ \t]*```", re.M | re.S)


def sections() -> dict[str, str]:
    """Heading -> body of each `## ` section."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def blocks(text: str, language: str) -> list[str]:
    return [textwrap.dedent(body) for lang, body in FENCE.findall(text) if lang == language]


def promql_expressions(text: str) -> list[str]:
    """Each expression of each promql block: it starts at column 0, continues indented."""
    expressions: list[str] = []
    for block in blocks(text, "promql"):
        for line in block.splitlines():
            if line.startswith((" ", "\t")):
                expressions[-1] += "\n" + line
            elif line.strip():
                expressions.append(line)
    return expressions


def shell_commands() -> list[str]:
    """Every command of every sh block (continuation lines joined) and every inline kubectl."""
    text = RUNBOOK.read_text()
    commands = []
    for block in blocks(text, "sh"):
        joined = re.sub(r"\\\n\s*", "", block)
        commands += [line.split("#")[0].strip() for line in joined.splitlines()]
    commands += re.findall(r"`(kubectl [^`]+)`", text)
    return [command for command in commands if command]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run `make tools` (Debian's prometheus package)")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_every_alert_section_gives_commands_and_promql() -> None:
    found = sections()
    for rule in alerting_rules():
        body = found[rule["alert"]]
        assert promql_expressions(body), f"{rule['alert']}: no PromQL to paste"
        assert "kubectl " in body, f"{rule['alert']}: no command"


def test_the_promql_parses_and_reads_real_metrics(tmp_path: Path) -> None:
    expressions = promql_expressions(RUNBOOK.read_text())
    assert len(expressions) > 20
    problems = {expr: expression_problems(expr) + label_problems(expr) for expr in expressions}
    assert {expr: found for expr, found in problems.items() if found} == {}
    # Prometheus' own parser: every expression as a recording rule.
    rules = [{"record": f"runbook:query{i}", "expr": expr} for i, expr in enumerate(expressions)]
    path = tmp_path / "runbook-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "runbook", "rules": rules}]}))  # JSON is YAML
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_logs_are_read_across_pods_with_their_names() -> None:
    logs = [command for command in shell_commands() if " logs " in command]
    assert logs
    for command in logs:
        # `logs deploy/x` reads one pod; `-l` without --tail keeps 10 lines per pod.
        assert "deploy/" not in command, command
        if " -l " in command:
            assert "--prefix" in command, command
            assert "--tail=" in command, command


def test_debugging_uses_the_pod_the_restricted_namespace_admits() -> None:
    commands = shell_commands()
    assert not [command for command in commands if "kubectl" in command and " run " in command]
    applied = [command for command in commands if " apply -f " in command]
    assert applied == ["kubectl -n glasshouse apply -f deploy/k8s/debug/pod.yaml"]
    assert (REPO / "deploy" / "k8s" / "debug" / "pod.yaml").is_file()
    for command in commands:
        if command.startswith("kubectl"):
            assert command.startswith("kubectl -n glasshouse "), command


def test_the_documented_ingress_sli_rule_parses(tmp_path: Path) -> None:
    text = (REPO / "deploy" / "README.md").read_text()
    section = text.split("### Taking the SLI from the ingress", 1)[1].split("\n### ", 1)[0]
    (rule_yaml,) = blocks(section, "yaml")
    path = tmp_path / "ingress-rules.yml"
    path.write_text(
        "groups:\n  - name: ingress\n    rules:\n" + textwrap.indent(rule_yaml, "      ")
    )
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rules found" in result.stdout
