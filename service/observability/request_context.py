"""One pure ASGI middleware for what every request needs: its ID, its log context, its HTTP
metrics, its one canonical access line, the last-resort 500, and (tracing on) its server span.

Doing these in one layer (instead of five) keeps the per-request cost to one ``send`` wrapper,
and the route template is read once, after routing, from what FastAPI matched. (The
prometheus-fastapi-instrumentator middleware this replaces matched every route again before
each request: see docs/performance.md.) With the standard instrumentation
(observability/standard.py) the libraries record the HTTP metrics and the server span around
this layer, which keeps the rest.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InternalError, raw_problem
from service.observability.http_metrics import HttpMetrics
from service.observability.logging import (
    clear_log_context,
    log_context_setter,
    write_access_line,
)
from service.observability.tracing import PROPAGATION_HEADERS, ServerSpans

REQUEST_ID_HEADER = "x-request-id"
# The request headers this middleware reads, and what each is for: a request's other headers
# cost one dict lookup each.
_REQUEST_ID, _CONTENT_LENGTH, _PROPAGATION = "request_id", "content_length", "propagation"
_WANTED_HEADERS = {
    b"x-request-id": _REQUEST_ID,
    b"content-length": _CONTENT_LENGTH,
    **dict.fromkeys(PROPAGATION_HEADERS, _PROPAGATION),
}
# An inbound ID is accepted only if it is short and harmless: it lands in logs and headers.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

error_log = structlog.get_logger("glasshouse.error")


def is_probe(path: str) -> bool:
    """Kubelet probes and Prometheus scrapes: not traced, not counted, and logged only when
    they fail, or they would be most of the traces, metrics and logs."""
    return path.startswith("/health") or path == "/metrics"


def accepted_request_id(value: str | None) -> str:
    if value is not None and _SAFE_REQUEST_ID.match(value):
        return value
    # 128 random bits as 32 hex digits, like uuid4().hex without the UUID object and without
    # os.urandom's system call, which also lets the span exporter's thread take the GIL
    # mid-request. An ID to correlate by, not a secret: the PRNG (seeded from the OS, and again
    # in every forked worker) is enough, as for OpenTelemetry's trace IDs. The same digits as
    # f"{bits:032x}", whose format spec is parsed on every call.
    return random.getrandbits(128).to_bytes(16, "big").hex()


def outer_span_context() -> trace.SpanContext | None:
    """The valid span context a caller made current around the app (a test, an ASGI wrapper),
    if any. A server runs each request in a fresh context, where this is one lookup, not the
    four calls of trace.get_current_span() and a property read per use."""
    context = otel_context.get_current()
    if not context:
        return None
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


class RouteTemplates:
    """Maps the route object a request matched to its full template ("/api/v1/items/{item_id}").

    FastAPI puts the matched route in ``scope["route"]``, but a route included through a
    prefixed router only knows its own part of the path, so the full templates are collected
    once from the app.
    """

    def __init__(self, app: Starlette) -> None:
        self._app = app
        self._templates: dict[int, str] | None = None
        self._known: frozenset[str] | None = None

    def template(self, route: object) -> str | None:
        if route is None:
            return None
        if self._templates is None:
            self._templates = self._collect()
        found = self._templates.get(id(route))
        return found or getattr(route, "path_format", None)

    def known(self) -> frozenset[str]:
        """Every full template of the app (collected at the first request, as ``template``)."""
        if self._known is None:
            if self._templates is None:
                self._templates = self._collect()
            self._known = frozenset(self._templates.values())
        return self._known

    def _collect(self) -> dict[int, str]:
        templates: dict[int, str] = {}
        for route in self._app.router.routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if callable(contexts):
                for context in contexts():
                    templates[id(context.original_route)] = context.path_format
            elif path_format := getattr(route, "path_format", None):
                templates[id(route)] = path_format
        return templates


class RequestContextMiddleware:
    """``server_spans``: when tracing is on, the request's server span is started and ended
    here too, around the app; the access line carries its trace and span IDs.

    ``outer_server_span``: the server span is opentelemetry-instrumentation-fastapi's (standard
    instrumentation), current when this runs; it is given what only this layer knows: the
    request ID, and the client as the trusted proxies told it (the instrumentation runs outside
    every middleware of the app, so it saw the proxy)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: RouteTemplates,
        access_log_enabled: bool,
        http_metrics: HttpMetrics | None,
        server_spans: ServerSpans | None = None,
        outer_server_span: bool = False,
    ) -> None:
        self.app = app
        self.routes = routes
        self.access_log_enabled = access_log_enabled
        self.http_metrics = http_metrics
        self.server_spans = server_spans
        self.outer_server_span = outer_server_span
        self._bind_request_id = log_context_setter("request_id")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        inbound = None
        request_bytes = 0
        trace_headers: dict[str, str] | None = None
        for name, value in scope["headers"]:
            wanted = _WANTED_HEADERS.get(name)
            if wanted is None:  # most headers: one lookup each
                continue
            if wanted is _REQUEST_ID:
                inbound = value.decode("latin-1")
            elif wanted is _CONTENT_LENGTH:
                if value.isdigit():
                    request_bytes = int(value)
            else:
                if trace_headers is None:
                    trace_headers = {}
                trace_headers[name.decode()] = value.decode("latin-1")
        request_id = accepted_request_id(inbound)
        state = scope.get("state")
        if state is None:
            scope["state"] = {"request_id": request_id}
        else:  # the server's copy of the lifespan state, this request's own
            state["request_id"] = request_id
        probe = is_probe(scope["path"])
        own_span = None
        if self.server_spans is not None and not probe:
            own_span = self.server_spans.start(scope, trace_headers, request_id)
        # None when no trace is known: no trace IDs on the line, no traceresponse header.
        span_context: trace.SpanContext | None
        if own_span is not None:
            token = otel_context.attach(trace.set_span_in_context(own_span))
            span_context = own_span.get_span_context()
        else:
            # Not traced here; a caller may have made a span current (the standard
            # instrumentation, a test, a wrapper).
            span_context = outer_span_context()
            if self.outer_server_span and span_context is not None:
                _describe_outer_span(scope, request_id)

        # Cleared once, when the request ends (below): a server runs each request in a fresh
        # copy of its context anyway, and a caller that reuses one gets it back clean.
        self._bind_request_id(request_id)
        http_metrics = None if probe else self.http_metrics
        if http_metrics is not None:
            method_label = http_metrics.started(scope["method"])
        status = 500
        response_bytes = 0
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_bytes, response_started
            kind = message["type"]
            if kind == "http.response.body":
                response_bytes += len(message.get("body", b""))
            elif kind == "http.response.start":
                response_started = True
                status = message["status"]
                # Raw header pairs, as the ASGI message carries them (MutableHeaders would copy
                # and re-encode them on every response). A new list: the response's own stays.
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                if span_context is not None:
                    # W3C Trace Context level 2: tells the client which trace served it.
                    flags = span_context.trace_flags
                    value = (
                        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"
                    )
                    headers.append((b"traceresponse", value.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as exc:
            # Logged here, once, with the request ID; the client gets a problem body that
            # carries the same ID and nothing of the exception.
            error_log.exception("unhandled_exception", path=scope["path"])
            span = own_span or trace.get_current_span()
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR)
            if response_started:
                raise
            await _send_internal_error(scope, send_with_request_id, request_id)
        except BaseException as exc:  # the request was cancelled (the client went away)
            if own_span is not None:
                own_span.record_exception(exc)
            raise
        finally:
            route = self.routes.template(scope.get("route"))
            if own_span is not None:
                # Ended first, so that nothing below can leave it open or attached; the access
                # line is handed its context.
                try:
                    if own_span.is_recording():
                        ServerSpans.describe(own_span, scope["method"], route=route, status=status)
                    own_span.end()
                finally:
                    otel_context.detach(token)
            seconds = time.perf_counter() - started
            if http_metrics is not None:
                http_metrics.finished(
                    method_label, route, status, seconds, request_bytes, response_bytes
                )
            if self.access_log_enabled and (status >= 400 or not probe):
                _log_access(scope, route, status, response_bytes, seconds, span_context)
            clear_log_context()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket is one connection, however many messages it carries: one request ID,
        one server span (not one per message) and one access line when it closes, with the
        close code and reason."""
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = accepted_request_id(
            (headers.get(b"x-request-id") or b"").decode("latin-1") or None
        )
        scope.setdefault("state", {})["request_id"] = request_id
        trace_headers = {
            name.decode(): value.decode("latin-1")
            for name, value in headers.items()
            if name in PROPAGATION_HEADERS
        }
        span = None
        if self.server_spans is not None:
            span = self.server_spans.start(
                {**scope, "method": "GET"}, trace_headers or None, request_id
            )
        token = otel_context.attach(trace.set_span_in_context(span)) if span else None
        self._bind_request_id(request_id)
        closed: dict[str, Any] = {"status": 403}  # refused before the handshake, as uvicorn does

        async def observed_send(message: Message) -> None:
            if message["type"] == "websocket.accept":
                closed["status"] = 101
            elif message["type"] == "websocket.close":
                closed["close_code"] = message.get("code", 1000)
                closed["close_reason"] = message.get("reason") or None
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception as exc:
            error_log.exception("unhandled_exception", path=scope["path"])
            closed["status"] = 500
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            route = self.routes.template(scope.get("route"))
            span_context = span.get_span_context() if span else outer_span_context()
            if span is not None and token is not None:
                if span.is_recording():
                    ServerSpans.describe(span, "WS", route=route, status=closed["status"])
                    _describe_close(span, closed)
                span.end()
                otel_context.detach(token)
            if self.access_log_enabled:
                fields: dict[str, Any] = {
                    "method": "WS",
                    "route": route,
                    "path": scope["path"],
                    "status": closed["status"],
                    "close_code": closed.get("close_code"),
                    "close_reason": closed.get("close_reason"),
                    "duration_ms": int((time.perf_counter() - started) * 100_000 + 0.5) / 100,
                    "client": "{}:{}".format(*scope["client"]) if scope.get("client") else None,
                }
                write_access_line(fields, failed=closed["status"] >= 500, span_context=span_context)
            clear_log_context()


def _describe_close(span: trace.Span, closed: dict[str, Any]) -> None:
    code = closed.get("close_code")
    if code is None:
        return
    span.set_attribute("websocket.close.code", code)
    # The reasons a stream ends other than normally or going away are events on the span.
    if code not in (1000, 1001):
        span.add_event(
            "websocket.closed", {"code": code, "reason": closed.get("close_reason") or ""}
        )
        if code == 1011:
            span.set_status(trace.StatusCode.ERROR)


def _describe_outer_span(scope: Scope, request_id: str) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        attributes: dict[str, str | int] = {"http.request_id": request_id}
        if client := scope.get("client"):
            attributes["client.address"], attributes["client.port"] = client
        span.set_attributes(attributes)


async def _send_internal_error(scope: Scope, send: Send, request_id: str) -> None:
    status, headers, body = raw_problem(InternalError(), path=scope["path"], request_id=request_id)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _log_access(
    scope: Scope,
    route: str | None,
    status: int,
    response_bytes: int,
    seconds: float,
    span_context: trace.SpanContext | None,
) -> None:
    client = scope.get("client")
    fields: dict[str, Any] = {
        "method": scope["method"],
        "route": route,
        "path": scope["path"],
        "status": status,
        # Hundredths of a millisecond; round(x, 2) formats the float as text to round it.
        "duration_ms": int(seconds * 100_000 + 0.5) / 100,
        "client": f"{client[0]}:{client[1]}" if client else None,
        "response_bytes": response_bytes,
    }
    write_access_line(fields, failed=status >= 500, span_context=span_context)
