"""The README's first command, as a new user runs it: `python -m service` with no servers and
no configuration serves the API on a SQLite file it migrates itself."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import running_embedded_service


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with running_embedded_service(tmp_path) as service:
        yield service


def test_embedded_default_serves_docs_and_api(
    embedded_service: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    base_url, process = embedded_service
    assert httpx.get(f"{base_url}/docs").status_code == 200
    credentials = {"email": "new@example.com", "password": "a-good-password"}
    assert httpx.post(f"{base_url}/api/v1/auth/register", json=credentials).status_code == 201
    login = httpx.post(
        f"{base_url}/api/v1/auth/token",
        data={"username": credentials["email"], "password": credentials["password"]},
    )
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    created = httpx.post(f"{base_url}/api/v1/items", json={"title": "first"}, headers=headers)
    assert created.status_code == 201
    assert (tmp_path / "glasshouse.db").exists()

    process.terminate()
    output = process.communicate(timeout=10)[0]
    assert f"listening on {base_url}" in output
