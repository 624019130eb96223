"""checkov (pinned, in its own environment) on what would really be applied, the kustomize
builds of base, dev and prod, and on the Dockerfile: no failed check unless it is waived, with
its reason, in deploy/checkov-waivers.yaml, and no waiver that no longer matches a finding."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    CHECKOV,
    DEPLOY,
    DOCKERFILE,
    OVERLAYS,
    kustomize_build_text,
    load_yaml,
)
from tests.tools import run_tool

WAIVERS = DEPLOY / "checkov-waivers.yaml"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("checkov")
    files = []
    for name in OVERLAYS:
        path = directory / f"{name}.yaml"
        path.write_text(kustomize_build_text(name))
        files += ["--file", str(path)]
    dockerfile = directory / "Dockerfile"
    dockerfile.write_text(DOCKERFILE.read_text())
    result = run_tool(
        CHECKOV,
        "checkov",
        "--skip-download",  # the built-in checks only, nothing fetched
        "--framework",
        "kubernetes",
        "dockerfile",
        *files,
        "--file",
        str(dockerfile),
        "--output",
        "json",
        cwd=directory,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"},
        timeout=600,
    )
    # Exit 1 means "failed checks"; anything else is checkov itself failing.
    assert result.returncode in {0, 1}, result.stderr
    output = json.loads(result.stdout)
    found: list[dict[str, Any]] = output if isinstance(output, list) else [output]
    return found


def waivers() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = load_yaml(WAIVERS)["waivers"]
    return entries


def waiver_for(check_id: str, resource: str) -> dict[str, Any] | None:
    for waiver in waivers():
        if waiver["check"] == check_id and any(
            fnmatch.fnmatchcase(resource, pattern) for pattern in waiver["resources"]
        ):
            return waiver
    return None


def test_checkov_scanned_everything(reports: list[dict[str, Any]]) -> None:
    by_type = {report["check_type"]: report for report in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["passed"] > 0, report["summary"]
    scanned = {
        Path(check["file_path"]).name for check in by_type["kubernetes"]["results"]["passed_checks"]
    }
    assert scanned == {f"{name}.yaml" for name in OVERLAYS}


def test_no_failed_check_without_a_waiver(reports: list[dict[str, Any]]) -> None:
    unwaived = [
        f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
        for report in reports
        for check in report["results"]["failed_checks"]
        if waiver_for(check["check_id"], check["resource"]) is None
    ]
    assert unwaived == [], "\n".join(unwaived)


def test_every_waiver_is_needed_and_explained(reports: list[dict[str, Any]]) -> None:
    failed = [
        (check["check_id"], check["resource"])
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    for waiver in waivers():
        assert len(waiver["reason"].split()) >= 15, f"{waiver['check']}: explain the waiver"
        for pattern in waiver["resources"]:
            assert any(
                check_id == waiver["check"] and fnmatch.fnmatchcase(resource, pattern)
                for check_id, resource in failed
            ), f"stale waiver {waiver['check']} {pattern}: nothing fails it any more"
