"""Cached JSON answers over HTTP: content-based ETags (the same bytes give the same ETag on
every worker, pod and restart), If-None-Match -> 304, and private caching only."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

# Browsers may keep the answer but must revalidate it (cheap: a 304); shared caches must not
# keep it at all, since it is one user's data.
CACHE_CONTROL = "private, no-cache"


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def wants_fresh(request: Request) -> bool:
    """A client sending Cache-Control: no-cache gets an answer from the database."""
    return "no-cache" in request.headers.get("cache-control", "").lower()


def json_with_etag(request: Request, body: bytes) -> Response:
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates or "*" in candidates
