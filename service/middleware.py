"""Pure ASGI middleware that is not observability (that lives in service/observability)."""

from collections.abc import Callable, Mapping
from ipaddress import ip_address, ip_network

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLargeError, raw_problem


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413.

    A declared Content-Length is judged before the app runs; a chunked body is counted as it
    streams, so leaving the header out does not bypass the limit. In that case the 413 is sent
    from here and the app is told the client went away (FastAPI would otherwise turn any error
    raised while it reads the body into a 400).
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        """``path_limits``: other limits for some paths (an upload route's own, larger one)."""
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        declared, chunked = _declared_body(scope)
        if declared is not None and declared > max_bytes:
            await self._refuse(scope, send, max_bytes)
            return
        if not chunked:
            # The server reads exactly the declared length (none: no body at all), so there
            # is nothing to count; most requests pass without two more wrappers.
            await self.app(scope, receive, send)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    refused = True
                    await self._refuse(scope, send, max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, send_unless_refused)

    async def _refuse(self, scope: Scope, send: Send, max_bytes: int) -> None:
        error = PayloadTooLargeError(f"The body exceeds {max_bytes} bytes.")
        request_id = scope.get("state", {}).get("request_id")
        status, headers, body = raw_problem(error, path=scope["path"], request_id=request_id)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _declared_body(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length, whether the body comes in chunks: Transfer-Encoding)."""
    declared = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                chunked = True  # not a length the server could have used: count what comes
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


class TrustedProxyMiddleware:
    """The client's address (and scheme) as the trusted proxy in front saw them.

    Only a connection from ``trusted`` may set them, through X-Forwarded-For and
    X-Forwarded-Proto. The address is the right-most X-Forwarded-For entry that is not itself a
    trusted proxy, and only if it parses as an IP address: anything else is ignored (the peer
    stays the client) and counted, since client addresses end up in rate-limit keys and logs.
    uvicorn's own proxy-headers middleware takes any text as the address, so it is off.
    """

    def __init__(self, app: ASGIApp, *, trusted: str, on_rejected: Callable[[], None]) -> None:
        self.app = app
        entries = [entry.strip() for entry in trusted.split(",") if entry.strip()]
        self.trust_all = "*" in entries
        self.networks = [ip_network(entry, strict=False) for entry in entries if entry != "*"]
        self.on_rejected = on_rejected

    def is_trusted(self, host: str) -> bool:
        if self.trust_all:
            return True
        try:
            address = ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if peer is not None and self.is_trusted(peer[0]):
                self._apply_forwarded(scope)
        await self.app(scope, receive, send)

    def _apply_forwarded(self, scope: Scope) -> None:
        forwarded_for: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for.extend(value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
                if proto in ("http", "https"):
                    is_websocket = scope["type"] == "websocket"
                    scope["scheme"] = proto.replace("http", "ws") if is_websocket else proto
        for entry in reversed(forwarded_for):
            host = entry.strip()
            if self.trust_all or not self.is_trusted(host):
                try:
                    scope["client"] = (str(ip_address(host)), 0)
                except ValueError:
                    self.on_rejected()
                return


class SecurityHeadersMiddleware:
    """Headers every response carries, whichever route or error produced it."""

    def __init__(self, app: ASGIApp, *, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
