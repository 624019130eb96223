"""Tools the tests run in environments of their own (`uv tool run`, pinned), never inside the
app's environment: schemathesis and checkov, for one, would downgrade the app's packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def uv_command() -> list[str]:
    """uv itself: `uv run` says where it is in $UV; otherwise the one on PATH or in Python."""
    if os.environ.get("UV"):
        return [os.environ["UV"]]
    if found := shutil.which("uv"):
        return [found]
    for python in ("python3", sys.executable):
        probe = subprocess.run([python, "-m", "uv", "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [python, "-m", "uv"]
    raise RuntimeError("uv not found: run the tests through `make test`")


def tool_command(package: str, executable: str) -> list[str]:
    """A command line running ``executable`` from the pinned ``package`` (e.g. "locust==2.x")."""
    return [*uv_command(), "tool", "run", "--quiet", "--from", package, executable]


def run_tool(
    package: str, executable: str, *args: str, timeout: float = 600, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*tool_command(package, executable), *args],
        cwd=kwargs.pop("cwd", REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
