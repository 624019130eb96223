"""Cached JSON answers over HTTP: content-based ETags (the same bytes give the same ETag on
every worker, pod and restart), If-None-Match -> 304, and private caching only."""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Browsers may keep the answer but must revalidate it (cheap: a 304); shared caches must not
# keep it at all, since it is one user's data.
CACHE_CONTROL = "private, no-cache"
# Set on every answer of a cached route: HIT or MISS.
CACHE_STATUS_HEADER = "X-Cache"


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def wants_fresh(request: Request) -> bool:
    """A client sending Cache-Control: no-cache gets an answer from the database."""
    return "no-cache" in request.headers.get("cache-control", "").lower()


def matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates or "*" in candidates


class CachedAnswerHeaders:
    """ETag, 304 and Cache-Control for the 200 answers of cached routes (those carrying
    ``X-Cache``), hits and misses alike. fastapi-cache2 sets its own on a miss: an ETag from
    Python's ``hash()``, which differs in every process, and a ``max-age`` that would let a
    browser show an answer the server has already replaced."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def send_answer(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if message["status"] == 200 and CACHE_STATUS_HEADER.lower().encode() in {
                    name for name, _ in message.get("headers", ())
                }:
                    held = message  # the ETag needs the body
                    return
            elif held is not None:
                start, held = held, None
                if message.get("more_body", False):  # streamed: sent as it is
                    await send(start)
                else:
                    await _send_revalidatable(scope, start, message, send)
                    return
            await send(message)

        await self.app(scope, receive, send_answer)


async def _send_revalidatable(scope: Scope, start: Message, body: Message, send: Send) -> None:
    etag = etag_of(body.get("body", b""))
    headers = MutableHeaders(scope=start)
    headers["ETag"] = etag
    headers["Cache-Control"] = CACHE_CONTROL
    if matches(Headers(scope=scope).get("if-none-match"), etag):
        for name in ("content-length", "content-type"):
            if name in headers:
                del headers[name]
        await send({**start, "status": 304})
        await send({"type": "http.response.body", "body": b""})
        return
    await send(start)
    await send(body)
