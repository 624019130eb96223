"""Wraps deploy/prometheus/rules.yml, the single source of the alerts, into the PrometheusRule
that the Kubernetes monitoring component applies. Run it after every change to rules.yml:

    python3 deploy/prometheus/render_prometheusrule.py          # rewrite the PrometheusRule
    python3 deploy/prometheus/render_prometheusrule.py --check  # exit 1 if it is out of date

tests/deploy run the check and compare the two files' groups, rule by rule. Only the standard
library: the rules file is indented under `spec:` as text, so it stays byte for byte the same.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
TARGET = HERE.parent / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/rules.yml by deploy/prometheus/render_prometheusrule.py.
# Do not edit: change rules.yml, then run that script (tests/deploy fail until you do).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: glasshouse
  labels:
    app.kubernetes.io/name: glasshouse
    # kube-prometheus-stack selects rules by its Helm release's label (unless its
    # ruleSelectorNilUsesHelmValues is false): use your release's name.
    release: kube-prometheus-stack
spec:
"""


def render() -> str:
    lines = RULES.read_text().splitlines()
    # The file's leading comment is about the file itself; the groups are what is wrapped.
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    rendered = render()
    if argv[1:2] == ["--check"]:
        if not TARGET.exists() or TARGET.read_text() != rendered:
            print(f"{TARGET} is out of date: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
