"""The README's first command, as a new user runs it: `python -m service` with no servers and
no configuration serves the API on a SQLite file it migrates itself."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("GLASSHOUSE_")}
    env.pop("DATABASE_URL", None)
    env["GLASSHOUSE_HTTP__PORT"] = str(port)
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{base_url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the embedded service did not become ready")
        yield base_url, process
    finally:
        process.terminate()
        process.wait(timeout=10)


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
