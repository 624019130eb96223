"""Caching declared on a route, one line under the route decorator::

    ITEMS_CACHE = CacheNamespace("items")

    @router.get("/{item_id}")
    @cached(ITEMS_CACHE)
    async def get_item(item_id: ItemId, viewer: CurrentPrincipal, session: SessionDep) -> ItemRead:
        ...

and, in the service, after the commit of every write that changes what those routes answer:
``await cache.invalidate(ITEMS_CACHE, owner_id)``.

fastapi-cache2's ``@cache`` does the caching, with a key builder, coder and backend of ours:

- An answer belongs to the viewer (the route must take the ``Principal``) and counts only
  under the viewer's current version of the namespace, which ``invalidate`` replaces: no key
  scans, and a reader that raced a write can only store its answer under a dead version
  (service/cache/scoped.py).
- Admins read through (their views span every owner), as does ``Cache-Control: no-cache``.
- A hit is the stored JSON sent as is, not a model rebuilt and validated again; ETag, 304 and
  Cache-Control are set for every cached answer by ``CachedAnswerHeaders`` (responses.py).
- Fail-open: when Redis cannot answer, the route runs as if it were not cached.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, get_type_hints

from fastapi_cache import FastAPICache
from fastapi_cache.coder import Coder
from fastapi_cache.decorator import cache
from fastapi_cache.types import Backend
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from service.cache.resilient import Cache
from service.cache.responses import CACHE_STATUS_HEADER, wants_fresh
from service.cache.scoped import MISS_UNAVAILABLE, Lookup, UserScopedCache
from service.observability.cache_events import cache_result

P = ParamSpec("P")
R = TypeVar("R")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


DECLARED: dict[str, CacheNamespace] = {}


@dataclass(frozen=True)
class CacheNamespace:
    """One kind of cached answer, e.g. ``items``: its own keys and its own versions."""

    name: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"cache namespace {self.name!r}: lowercase letters, digits, _")
        if self.name in DECLARED:
            raise ValueError(f"cache namespace {self.name!r} is declared twice")
        DECLARED[self.name] = self


class AnswerCache:
    """This app's cached answers, per namespace; ``invalidate`` is what writes call."""

    def __init__(self, cache: Cache, *, prefix: str, ttl_seconds: int) -> None:
        self.cache = cache
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self._entries: dict[str, UserScopedCache] = {}

    @property
    def available(self) -> bool:
        return self.cache.available

    def entries(self, namespace: CacheNamespace) -> UserScopedCache:
        entries = self._entries.get(namespace.name)
        if entries is None:
            entries = UserScopedCache(
                self.cache,
                base=f"{self.prefix}:answers:{namespace.name}",
                ttl_seconds=self.ttl_seconds,
            )
            self._entries[namespace.name] = entries
        return entries

    async def invalidate(self, namespace: CacheNamespace, owner_id: int) -> None:
        """Every answer of ``namespace`` cached for ``owner_id``, on every worker and pod."""
        await self.entries(namespace).invalidate(owner_id)

    async def invalidate_user(self, user_id: int) -> None:
        for namespace in DECLARED.values():
            await self.invalidate(namespace, user_id)


@dataclass(slots=True)
class _Answer:
    """What the key builder settled for this request, read by the backend in the same one."""

    key: str
    entries: UserScopedCache
    viewer_id: int
    lookup: Lookup = MISS_UNAVAILABLE


_current: ContextVar[_Answer | None] = ContextVar("glasshouse_cached_answer", default=None)


def cached(
    namespace: CacheNamespace,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R | Response]]]:
    """The route's answers are cached in ``namespace``, per viewer (see the module's doc)."""

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | Response]]:
        viewer_parameter = _viewer_parameter(func)

        async def key_builder(
            func: Callable[..., Any],
            _namespace: str = "",
            *,
            request: Request | None = None,
            response: Response | None = None,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> str:
            _current.set(None)
            viewer = kwargs[viewer_parameter]
            assert request is not None  # the decorator always passes it
            answers: AnswerCache = request.state.caches.answers
            if viewer.is_admin or not answers.available:
                return ""
            if wants_fresh(request):
                cache_result("bypass")
                return ""
            # Everything in the request that can change the answer (the viewer is the scope).
            query = sorted(request.query_params.multi_items())
            identity = f"{func.__module__}.{func.__qualname__}|{request.url.path}|{query}"
            key = hashlib.sha256(identity.encode()).hexdigest()[:32]
            _current.set(_Answer(key, answers.entries(namespace), viewer.id))
            return key

        return cache(namespace=namespace.name, key_builder=key_builder, coder=AnswerCoder)(func)

    return decorate


def _viewer_parameter(func: Callable[..., Any]) -> str:
    """The parameter that holds who the answer is for: one whose type has ``id`` and
    ``is_admin`` (the auth domain's ``Principal``)."""
    for name, hint in get_type_hints(func).items():
        if name != "return" and hasattr(hint, "is_admin") and hasattr(hint, "id"):
            return name
    raise TypeError(f"{func.__qualname__}: a cached route takes the viewer (CurrentPrincipal)")


class CachedAnswer(Response):
    media_type = "application/json"


class AnswerCoder(Coder):
    """Stores the answer's JSON, as FastAPI would send it (the route's return value must be
    its response model); a hit is those bytes, sent as they are."""

    @classmethod
    def encode(cls, value: Any) -> bytes:
        if isinstance(value, BaseModel):
            return value.model_dump_json().encode()
        return to_json(value)

    @classmethod
    def decode(cls, value: bytes) -> Any:
        return CachedAnswer(value, headers={CACHE_STATUS_HEADER: "HIT"})

    @classmethod
    def decode_as_type(cls, value: bytes, *, type_: Any) -> Any:
        return cls.decode(value)


class AnswerBackend(Backend):
    """fastapi-cache2's backend for every app in the process: the key builder has put the
    request's own cache (``request.state``) and scope in a context variable."""

    async def get_with_ttl(self, key: str) -> tuple[int, bytes | None]:
        answer = _current.get()
        if answer is None or answer.key != key:
            return 0, None
        answer.lookup = await answer.entries.read(answer.viewer_id, key)
        cache_result("hit" if answer.lookup.value is not None else "miss")
        return answer.entries.ttl_seconds, answer.lookup.value

    async def get(self, key: str) -> bytes | None:
        return (await self.get_with_ttl(key))[1]

    async def set(self, key: str, value: bytes, expire: int | None = None) -> None:
        answer = _current.get()
        if answer is not None and answer.key == key:
            await answer.entries.write(answer.viewer_id, key, answer.lookup, value)

    async def clear(self, namespace: str | None = None, key: str | None = None) -> int:
        raise NotImplementedError(
            "cached answers are invalidated by version: AnswerCache.invalidate(namespace, owner)"
        )


def register_answer_backend() -> None:
    """fastapi-cache2 keeps one backend per process; ours serves every app in it."""
    FastAPICache.init(
        AnswerBackend(), prefix="", coder=AnswerCoder, cache_status_header=CACHE_STATUS_HEADER
    )
    if not isinstance(FastAPICache.get_backend(), AnswerBackend):
        raise RuntimeError("FastAPICache was initialised elsewhere with another backend")
