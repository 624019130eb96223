"""A real browser opens /docs with no route out of the machine: Debian's chromium, headless,
with every non-loopback request sent to a proxy that does not exist. Swagger UI must render the
operations and the Authorize button, and every request the page made must be same-origin."""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import chromium_command
from tests.processes import running_embedded_service

BROWSER_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m service` on its embedded SQLite default: API docs on, as in development."""
    with running_embedded_service(tmp_path_factory.mktemp("service")) as (url, _):
        yield url


def render(url: str, directory: Path) -> tuple[str, list[dict[str, str]], str]:
    """The DOM after the page's scripts ran, the requests Chromium logged, and its console."""
    net_log = directory / "net-log.json"
    result = subprocess.run(
        chromium_command(
            directory / "profile",
            f"--log-net-log={net_log}",
            "--enable-logging=stderr",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ),
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, started_requests(net_log), result.stderr


def started_requests(net_log: Path) -> list[dict[str, str]]:
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]
        for event in log["events"]
        if event["type"] == start_job and "url" in event.get("params", {})
    ]


def page_urls(requests: list[dict[str, str]], origin: str) -> set[str]:
    """What the page loaded, wherever from: the page itself (the main frame) and every request
    it initiated. Chromium's own background requests (component updates, accounts, autofill
    hints) have no initiator, and fail at the proxy."""
    return {
        request["url"]
        for request in requests
        if request["initiator"] == origin or request["request_type"] == "main frame"
    }


def test_swagger_ui_renders_offline_from_the_service_alone(
    service_url: str, tmp_path: Path
) -> None:
    dom, requests, console = render(f"{service_url}/docs", tmp_path)

    assert 'data-path="/api/v1/items"' in dom
    assert 'data-path="/api/v1/auth/token"' in dom
    assert dom.count('class="opblock ') >= 10
    assert '<button class="btn authorize' in dom
    assert "Content Security Policy" not in console

    loaded = page_urls(requests, service_url)
    assert {
        f"{service_url}/docs",
        f"{service_url}/docs/static/swagger-ui-bundle.js",
        f"{service_url}/docs/static/swagger-ui-init.js",
        f"{service_url}/docs/static/swagger-ui.css",
        f"{service_url}/openapi.json",
    } <= loaded
    assert all(url.startswith(f"{service_url}/") for url in loaded), loaded


def test_redoc_renders_offline_from_the_service_alone(service_url: str, tmp_path: Path) -> None:
    dom, requests, _ = render(f"{service_url}/redoc", tmp_path)

    assert 'id="operation/create_item_api_v1_items_post"' in dom
    assert 'id="operation/token_api_v1_auth_token_post"' in dom
    loaded = page_urls(requests, service_url)
    assert {f"{service_url}/redoc", f"{service_url}/docs/static/redoc.standalone.js"} <= loaded
    assert all(url.startswith(f"{service_url}/") for url in loaded), loaded
