"""Debian's chromium for the browser tests: headless, with no route out of the machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Loopback is always direct in Chromium; everything else goes to this port, where nothing listens.
UNREACHABLE_PROXY = "http://127.0.0.1:9"


def chromium_command(profile: Path, *arguments: str) -> list[str]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: run `make tools` (Debian's chromium package)")
    return [
        chromium,
        "--headless=new",
        "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        f"--user-data-dir={profile}",
        f"--proxy-server={UNREACHABLE_PROXY}",
        *arguments,
    ]
