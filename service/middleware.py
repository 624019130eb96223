"""Pure ASGI middleware that is not observability (that lives in service/observability)."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLargeError


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413.

    A declared Content-Length is judged before any byte is read; a chunked body is counted as
    it streams, so leaving the header out does not bypass the limit. The error is raised where
    the app reads the body, so the app's one error handler renders it like every other error.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > max_bytes:
                raise PayloadTooLargeError(f"The body exceeds {max_bytes} bytes.")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise PayloadTooLargeError(f"The body exceeds {max_bytes} bytes.")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
