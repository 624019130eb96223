"""uvicorn's httptools protocol with a limit on the size of a request's head.

httptools has none: it buffers a header value until the value ends, however long, so one
request could grow a worker by hundreds of megabytes before the app ever sees it. Here a request
whose request line and headers pass ``http.max_header_bytes`` gets a 431 and its connection is
closed, while the head is still arriving.
"""

from __future__ import annotations

from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import get_settings

log = structlog.get_logger(__name__)

REFUSAL_BODY = b"Request header fields too large.\n"


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """Two checks against the limit. The bytes read while a head is incomplete are counted, so
    a head that never ends is stopped while it arrives; a head that arrived whole (in one read)
    is measured from the parsed target and headers when it completes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # From the service settings: uvicorn's Config has no such field, and both ways of
        # running the service (gunicorn, `python -m service`) read the same settings.
        self.max_head_bytes = get_settings().http.max_header_bytes
        self.head_bytes_read = 0
        self.reading_head = False
        self.reading_message = False
        self.chunk_is_all_head = False
        self.head_refused = False

    def data_received(self, data: bytes) -> None:
        # A chunk that starts inside a head, or before any message, holds head bytes only up
        # to where the head ends; one that starts in a body may hold the next head's start.
        self.chunk_is_all_head = self.reading_head or not self.reading_message
        super().data_received(data)
        if not self.reading_head or self.head_refused or self.transport.is_closing():
            return
        # Counted after feeding: a chunk that completed the head (and may carry body bytes)
        # has reset the counts already.
        if self.chunk_is_all_head:
            self.head_bytes_read += len(data)
        if self.head_bytes_read > self.max_head_bytes:
            self.refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_message = self.reading_head = True
        self.head_bytes_read = 0

    def on_headers_complete(self) -> None:
        # The target and headers as parsed (uvicorn's own url and headers), plus the request
        # line's method, spaces and version, each header's ": " and CRLF, and the blank line.
        framing = len(self.parser.get_method()) + len(b"  HTTP/1.1\r\n\r\n")
        head_bytes = (
            len(self.url)
            + framing
            + sum(len(name) + len(value) + len(b": \r\n") for name, value in self.headers)
        )
        too_large = head_bytes > self.max_head_bytes
        # What follows in this chunk is body, or a pipelined request: not this head's bytes.
        self.reading_head = self.chunk_is_all_head = False
        self.head_bytes_read = 0
        if self.head_refused:
            return
        if too_large:
            self.refuse_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.head_refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.reading_message = False
        if not self.head_refused:
            super().on_message_complete()

    def refuse_head(self) -> None:
        """Answers 431 and closes the connection: the rest of the request is never read."""
        self.head_refused = True
        log.warning("request_head_too_large", max_header_bytes=self.max_head_bytes)
        response = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            response.append(b"%s: %s\r\n" % (name, value))
        response.append(
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(REFUSAL_BODY), REFUSAL_BODY)
        )
        self.transport.write(b"".join(response))
        self.transport.close()
