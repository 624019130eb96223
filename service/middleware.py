"""Pure ASGI middleware that is not observability (that lives in service/observability)."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLargeError, raw_problem


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413.

    A declared Content-Length is judged before the app runs; a chunked body is counted as it
    streams, so leaving the header out does not bypass the limit. In that case the 413 is sent
    from here and the app is told the client went away (FastAPI would otherwise turn any error
    raised while it reads the body into a 400).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _declared_body(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        if not chunked:
            # The server reads exactly the declared length (none: no body at all), so there
            # is nothing to count; most requests pass without two more wrappers.
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
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
                    await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, send_unless_refused)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = PayloadTooLargeError(f"The body exceeds {self.max_bytes} bytes.")
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
