"""The live page (/live) in a real browser: Debian's chromium, headless, with no route out of the
machine, driven over the Chrome DevTools Protocol. Through the page's own forms it signs in and
adds an item; items changed elsewhere (the API, from the test) arrive as events and update the
list; after a network loss it reconnects with last_event_id and shows what it missed."""

import contextlib
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.browser import chromium_command
from tests.processes import running_embedded_service

BROWSER_START_SECONDS = 30
WAIT_SECONDS = 20
PASSWORD = "correct-horse-42"


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m service` on its embedded SQLite default: the live page on, as in development."""
    with running_embedded_service(tmp_path_factory.mktemp("service")) as (url, _):
        yield url


class Relay:
    """A TCP relay between the browser and the service that the test can cut, as a network loss
    would: its open connections drop and new ones are refused until it is restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.listener.close()
        self.cut()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay(service_url: str) -> Iterator[Relay]:
    relay = Relay(int(service_url.rsplit(":", 1)[1]))
    yield relay
    relay.close()


@pytest.fixture
def api(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{service_url}/api/v1", timeout=WAIT_SECONDS) as client:
        yield client


class DevTools:
    """One page of the browser, over the DevTools Protocol: commands, and the events that
    arrive in between (console, exceptions, requests), kept for the assertions."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self.connection.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.connection.recv(timeout=WAIT_SECONDS))
            if message.get("id") != self.last_id:
                self.events.append(message)
                continue
            assert "error" not in message, message
            result: dict[str, Any] = message["result"]
            return result

    def evaluate(self, expression: str) -> Any:
        answer = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    def wait_until(self, expression: str) -> Any:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.1)
        status = self.evaluate("document.getElementById('status')?.textContent")
        raise AssertionError(f"still false: {expression} (page status: {status!r})")

    def received(self, method: str) -> list[dict[str, Any]]:
        return [event["params"] for event in self.events if event.get("method") == method]


@contextmanager
def browser_page(directory: Path) -> Iterator[DevTools]:
    profile = directory / "profile"
    process = subprocess.Popen(
        chromium_command(
            profile,
            "--remote-debugging-port=0",  # Chromium picks one and writes it in the profile
            "about:blank",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + BROWSER_START_SECONDS
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium opened no DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(target for target in targets if target["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as connection:
            yield DevTools(connection)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def item_rows(title: str) -> str:
    """A JavaScript expression: how many rows of the item list show ``title``."""
    return (
        "[...document.querySelectorAll('#items li')]"
        f".filter((row) => row.textContent.includes({json.dumps(title)})).length"
    )


def logged(event_type: str, text: str) -> str:
    """A JavaScript expression: the event log's entry of that type that mentions ``text``."""
    return (
        f"[...document.querySelectorAll('#events li[data-type={json.dumps(event_type)}]')]"
        f".map((entry) => entry.textContent).find((entry) => entry.includes({json.dumps(text)}))"
    )


def submit(form_id: str, **fields: str) -> str:
    """A JavaScript expression: fill the page's form and submit it, as a user would."""
    form = f"document.getElementById({json.dumps(form_id)})"
    fill = "".join(
        f"form.elements[{json.dumps(name)}].value = {json.dumps(value)};"
        for name, value in fields.items()
    )
    return f"(() => {{ const form = {form}; {fill} form.requestSubmit(); }})()"


def test_the_live_page_shows_item_events_as_they_arrive(
    api: httpx.Client, relay: Relay, tmp_path: Path
) -> None:
    email = f"live-{uuid.uuid4().hex[:12]}@example.com"
    assert api.post("/auth/register", json={"email": email, "password": PASSWORD}).is_success
    login = api.post("/auth/token", data={"username": email, "password": PASSWORD}).json()
    api.headers["Authorization"] = f"Bearer {login['access_token']}"
    assert api.post("/items", json={"title": "Written before the page opened"}).is_success

    with browser_page(tmp_path) as page:
        for domain in ("Runtime", "Log", "Network", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=f"{relay.url}/live")
        page.wait_until("document.readyState === 'complete'")

        page.evaluate(submit("sign-in", email=email, password=PASSWORD))
        page.wait_until("document.getElementById('status').textContent === 'Live'")
        page.wait_until(item_rows("Written before the page opened"))

        # Added through the page: the list shows it once its item.created event arrives.
        page.evaluate(submit("new-item", title="Added on the page"))
        assert "Added on the page" in page.wait_until(logged("item.created", "Added on the page"))
        page.wait_until(item_rows("Added on the page"))

        # Changed elsewhere: each change arrives as an event and updates the list.
        item = api.post("/items", json={"title": "Added elsewhere"}).json()
        assert f"item {item['id']}" in page.wait_until(logged("item.created", "Added elsewhere"))
        api.patch(f"/items/{item['id']}", json={"title": "Renamed elsewhere"}).raise_for_status()
        page.wait_until(logged("item.updated", "Renamed elsewhere"))
        page.wait_until(item_rows("Renamed elsewhere"))
        api.delete(f"/items/{item['id']}").raise_for_status()
        page.wait_until(logged("item.deleted", f"item {item['id']}"))
        page.wait_until(f"{item_rows('Renamed elsewhere')} === 0")

        # A network loss: what happens meanwhile is replayed after the reconnect.
        last_event_id = page.evaluate("lastEventId")
        relay.cut()
        page.wait_until("document.getElementById('status').textContent.startsWith('Disconnected')")
        api.post("/items", json={"title": "Added while the page was offline"}).raise_for_status()
        relay.restore()
        page.wait_until(logged("item.created", "Added while the page was offline"))
        page.wait_until(item_rows("Added while the page was offline"))
        access_token = page.evaluate("tokens.access_token")

    sockets = [created["url"] for created in page.received("Network.webSocketCreated")]
    ws_url = relay.url.replace("http:", "ws:") + "/api/v1/ws"
    assert sockets[0] == ws_url
    assert f"{ws_url}?last_event_id={last_event_id}" in sockets
    requested = [sent["request"]["url"] for sent in page.received("Network.requestWillBeSent")]
    assert all(url.startswith(f"{relay.url}/") for url in requested), requested
    assert not any(access_token in url for url in requested + sockets)
    assert page.received("Runtime.exceptionThrown") == []
    console = [entry["entry"]["text"] for entry in page.received("Log.entryAdded")]
    assert not any("Content Security Policy" in text for text in console), console
