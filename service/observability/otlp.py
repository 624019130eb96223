"""OTLP/HTTP trace export with an encoder of its own.

The exporter is the SDK's OTLPSpanExporter (endpoint, headers, TLS, compression, timeouts and
retries all come from the standard ``OTEL_EXPORTER_OTLP_*`` variables, as before); only the
step that turns finished spans into the protobuf request body is replaced. The SDK's encoder
builds a tree of protobuf objects for every span and hashes each span's Resource, which it does
by dumping the resource's attributes to JSON, every time: 113-122 us a span on this machine (a
batch of 512 server spans), more than creating the span costs. This one writes the protobuf
wire format straight from the spans, encodes the resource and each instrumentation scope once
per batch and keeps the encoded form of names and attributes that repeat: 16 us a span on that
batch.

tests/test_otlp.py decodes its output with the official protobuf classes and compares it with
what the SDK's encoder produces, for spans with every kind of attribute, events, links, status
and trace state: a change in the protocol or the SDK shows up there.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind

_logger = logging.getLogger(__name__)

# Wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

# Span.SpanKind values: the SDK's SpanKind is zero-based, the protocol's starts at INTERNAL=1.
_KIND = {kind: kind.value + 1 for kind in SpanKind}
# SpanFlags: bit 8 says whether bit 9 (the parent is remote) is known; the SDK always knows.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

_PACK_FIXED64 = struct.Struct("<Q").pack
_PACK_DOUBLE = struct.Struct("<d").pack
_PACK_FIXED32 = struct.Struct("<I").pack

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SMALL_VARINTS = [bytes((n,)) for n in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if 0 < value < 16384:  # a span's length, mostly: two bytes without the loop
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


# Tags used per span, computed once.
_SPAN_TRACE_ID = _tag(1, _LEN) + b"\x10"  # trace IDs are 16 bytes
_SPAN_SPAN_ID = _tag(2, _LEN) + b"\x08"  # span IDs are 8
_SPAN_TRACE_STATE = _tag(3, _LEN)
_SPAN_PARENT_ID = _tag(4, _LEN) + b"\x08"
_SPAN_NAME = _tag(5, _LEN)
_SPAN_KIND = _tag(6, _VARINT)
_SPAN_START = _tag(7, _FIXED64)
_SPAN_END = _tag(8, _FIXED64)
_SPAN_ATTRIBUTE = _tag(9, _LEN)
_SPAN_DROPPED_ATTRIBUTES = _tag(10, _VARINT)
_SPAN_EVENT = _tag(11, _LEN)
_SPAN_DROPPED_EVENTS = _tag(12, _VARINT)
_SPAN_LINK = _tag(13, _LEN)
_SPAN_DROPPED_LINKS = _tag(14, _VARINT)
_SPAN_STATUS = _tag(15, _LEN)
_SPAN_FLAGS = _tag(16, _FIXED32)
_SPAN_IN_SCOPE = _tag(2, _LEN)  # ScopeSpans.spans

_KEY = _tag(1, _LEN)  # KeyValue.key
_VALUE = _tag(2, _LEN)  # KeyValue.value
_STRING, _BOOL, _INT, _DOUBLE = _tag(1, _LEN), _tag(2, _VARINT), _tag(3, _VARINT), _tag(4, _FIXED64)
_ARRAY, _KVLIST, _BYTES = _tag(5, _LEN), _tag(6, _LEN), _tag(7, _LEN)
_LIST_VALUE = _tag(1, _LEN)  # ArrayValue.values and KeyValueList.values


class _EncodedStrings:
    """A string field's encoded form (tag, length, UTF-8), kept for strings that repeat, up to a
    bound, so that strings made up at run time cannot grow the table without limit."""

    def __init__(self, tag: bytes, most: int) -> None:
        self._tag = tag
        self._most = most
        self._known: dict[str, bytes] = {}

    def __call__(self, text: str) -> bytes:
        encoded = self._known.get(text)
        if encoded is None:
            encoded = _len_field(self._tag, text.encode())
            if len(self._known) < self._most:
                self._known[text] = encoded
        return encoded


# Attribute keys repeat on every span.
_key = _EncodedStrings(_KEY, most=2048)


def _any_value(value: Any) -> bytes:
    """An AnyValue. A oneof member is written even when it holds its type's default."""
    kind = type(value)
    if kind is str:
        return _len_field(_STRING, value.encode())
    if kind is bool:
        return _BOOL + (b"\x01" if value else b"\x00")
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise TypeError("an int attribute value must fit in 64 bits")
        return _INT + _varint(value)
    if kind is float:
        return _DOUBLE + _PACK_DOUBLE(value)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return _len_field(_BYTES, value)
    if isinstance(value, str | bool | int | float):  # subclasses, e.g. an IntEnum
        return _any_value(_plain(value))
    if isinstance(value, Sequence):
        items = b"".join(_len_field(_LIST_VALUE, _any_value(item)) for item in value)
        return _len_field(_ARRAY, items)
    if isinstance(value, Mapping):
        pairs = b"".join(_len_field(_LIST_VALUE, _key_value(str(k), v)) for k, v in value.items())
        return _len_field(_KVLIST, pairs)
    raise TypeError(f"cannot encode a {kind.__name__} attribute value")


def _plain(value: str | bool | int | float) -> str | bool | int | float:
    for plain in (bool, str, int, float):
        if isinstance(value, plain):
            return plain(value)
    return value  # pragma: no cover (the caller checked the types)


def _key_value(key: str, value: Any) -> bytes:
    return _key(key) + _len_field(_VALUE, _any_value(value))


def _attribute(tag: bytes, key: str, value: Any) -> bytes | None:
    """One KeyValue field, or None for a value the protocol cannot carry: as the SDK's encoder
    does, the attribute is left out (and logged), the span is not."""
    try:
        pair = _key_value(key, value)
    except TypeError:
        _logger.exception("Failed to encode key %s", key)
        return None
    return tag + _varint(len(pair)) + pair


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    if not attributes:
        return []
    fields = (_attribute(tag, key, value) for key, value in attributes.items())
    return [field for field in fields if field is not None]


# Most span attributes repeat from span to span (method, route, status, peer address, DB
# statement): their encoded fields are kept. The tables are emptied when full, so values seen
# once (paths with IDs, request IDs) cannot crowd out the rest for long, nor grow them.
# String values, most of them, are looked up by the (key, value) pair that iterating the
# attributes makes anyway; other values by (key, type, value), because True == 1 == 1.0 would
# make pairs of different types find each other's encoding.
_encoded_string_attributes: dict[tuple[str, str], bytes] = {}
_encoded_span_attributes: dict[tuple[str, type, Any], bytes] = {}
_MAX_ENCODED_SPAN_ATTRIBUTES = 4096
_KEPT_TYPES = frozenset({bool, int, float})


def _span_attributes(attributes: Mapping[str, Any] | None) -> list[bytes]:
    if not attributes:
        return []
    encoded = []
    known = _encoded_string_attributes
    # The SDK keeps attributes in a BoundedAttributes, whose iteration goes through the Mapping
    # ABC, a Python call per key; its plain dict is read directly where it is there.
    for pair in getattr(attributes, "_dict", attributes).items():
        try:
            field = known.get(pair)
        except TypeError:  # a value that cannot be hashed (a list): encoded below, not kept
            field = None
        if field is None:
            field = _new_span_attribute(pair)
            if field is None:
                continue
        encoded.append(field)
    return encoded


def _new_span_attribute(pair: tuple[str, Any]) -> bytes | None:
    """A span attribute not found by its pair: encoded, and kept if its type allows."""
    key, value = pair
    kind = type(value)
    if kind is str:
        known: dict[Any, bytes] = _encoded_string_attributes
        lookup: tuple[Any, ...] = pair
    elif kind in _KEPT_TYPES:
        known = _encoded_span_attributes
        lookup = (key, kind, value)
        field = known.get(lookup)
        if field is not None:
            return field
    else:  # arrays (their items would need their types in the key too), or odd values
        return _attribute(_SPAN_ATTRIBUTE, key, value)
    field = _attribute(_SPAN_ATTRIBUTE, key, value)
    if field is not None:
        if len(known) >= _MAX_ENCODED_SPAN_ATTRIBUTES:
            known.clear()
        known[lookup] = field
    return field


def _dropped(tag: bytes, count: int) -> bytes:
    return tag + _varint(count) if count else b""


def _trace_state(tag: bytes, context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return _len_field(tag, ",".join(f"{key}={value}" for key, value in state.items()).encode())


# The fixed head of every span: trace ID and span ID, each with its tag and length, in one
# pack (the 128-bit trace ID as two 64-bit halves).
_IDS = struct.Struct(">BBQQBBQ").pack
_TRACE_ID_TAG, _SPAN_ID_TAG = _SPAN_TRACE_ID[0], _SPAN_SPAN_ID[0]
_LOW_64 = (1 << 64) - 1
_TIMES = struct.Struct("<BQBQ").pack
_START_TAG, _END_TAG = _SPAN_START[0], _SPAN_END[0]
_KIND_FIELDS = {kind: _SPAN_KIND + _SMALL_VARINTS[value] for kind, value in _KIND.items()}
_EMPTY_STATUS = _SPAN_STATUS + b"\x00"  # the SDK always sends a status, usually an empty one
_FLAGS_LOCAL_PARENT = _SPAN_FLAGS + _PACK_FIXED32(_HAS_IS_REMOTE)
_FLAGS_REMOTE_PARENT = _SPAN_FLAGS + _PACK_FIXED32(_HAS_IS_REMOTE | _IS_REMOTE)

# Span names are route templates, command names and statements: few, and repeated.
_name = _EncodedStrings(_SPAN_NAME, most=1024)


def encode_span(span: ReadableSpan) -> bytes:
    """One Span message, without its tag and length. It reads the span's own fields, not its
    properties and their copies and read-only views: a Python call each, ten a span."""
    context = span._context
    assert context is not None  # an SDK span always has one
    trace_id = context.trace_id
    parts = [
        _IDS(
            _TRACE_ID_TAG, 16, trace_id >> 64, trace_id & _LOW_64, _SPAN_ID_TAG, 8, context.span_id
        )
    ]
    if context.trace_state:
        parts.append(_trace_state(_SPAN_TRACE_STATE, context))
    parent = span._parent
    if parent is not None:
        parts += (_SPAN_PARENT_ID, parent.span_id.to_bytes(8, "big"))
    parts += (
        _name(span._name),
        _KIND_FIELDS[span._kind],
        _TIMES(_START_TAG, span._start_time or 0, _END_TAG, span._end_time or 0),
    )
    parts += _span_attributes(span._attributes)
    if span.dropped_attributes:
        parts.append(_dropped(_SPAN_DROPPED_ATTRIBUTES, span.dropped_attributes))
    if span._events:
        parts += (_len_field(_SPAN_EVENT, _event(event)) for event in span.events)
        parts.append(_dropped(_SPAN_DROPPED_EVENTS, span.dropped_events))
    if span._links:
        parts += (_len_field(_SPAN_LINK, _link(link)) for link in span.links)
        parts.append(_dropped(_SPAN_DROPPED_LINKS, span.dropped_links))
    status = span._status
    if status.description or status.status_code.value:
        status_parts = b""
        if status.description:
            status_parts += _len_field(_tag(2, _LEN), status.description.encode())
        if status.status_code.value:
            status_parts += _tag(3, _VARINT) + _varint(status.status_code.value)
        parts.append(_len_field(_SPAN_STATUS, status_parts))
    else:
        parts.append(_EMPTY_STATUS)
    remote = parent is not None and parent.is_remote
    parts.append(_FLAGS_REMOTE_PARENT if remote else _FLAGS_LOCAL_PARENT)
    return b"".join(parts)


def _event(event: Event) -> bytes:
    return b"".join(
        [
            _tag(1, _FIXED64) + _PACK_FIXED64(event.timestamp),
            _len_field(_tag(2, _LEN), event.name.encode()),
            *_attributes(_tag(3, _LEN), event.attributes),
            _dropped(_tag(4, _VARINT), event.dropped_attributes),
        ]
    )


def _link(link: Link) -> bytes:
    linked = link.context
    return b"".join(
        [
            _len_field(_tag(1, _LEN), linked.trace_id.to_bytes(16, "big")),
            _len_field(_tag(2, _LEN), linked.span_id.to_bytes(8, "big")),
            _trace_state(_tag(3, _LEN), linked),
            *_attributes(_tag(4, _LEN), link.attributes),
            _dropped(_tag(5, _VARINT), link.dropped_attributes),
            _tag(6, _FIXED32)
            + _PACK_FIXED32(_HAS_IS_REMOTE | (_IS_REMOTE if linked.is_remote else 0)),
        ]
    )


class _Encoded:
    """Resources and scopes, encoded once each: every span of a worker shares the same few."""

    def __init__(self) -> None:
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def resource(self, resource: Resource) -> bytes:
        known = self._resources.get(id(resource))
        if known is None or known[0] is not resource:
            body = b"".join(_attributes(_tag(1, _LEN), resource.attributes))
            known = (resource, _len_field(_tag(1, _LEN), body))
            self._resources[id(resource)] = known
        return known[1]

    def scope(self, scope: InstrumentationScope | None) -> bytes:
        known = self._scopes.get(id(scope))
        if known is None or known[0] is not scope:
            body = b""
            if scope is not None:
                body = _len_field(_tag(1, _LEN), scope.name.encode())
                if scope.version:
                    body += _len_field(_tag(2, _LEN), scope.version.encode())
                body += b"".join(_attributes(_tag(3, _LEN), scope.attributes))
            known = (scope, _len_field(_tag(1, _LEN), body))
            self._scopes[id(scope)] = known
        return known[1]


def encode_trace_request(spans: Sequence[ReadableSpan], cache: _Encoded | None = None) -> bytes:
    """An ExportTraceServiceRequest: spans grouped by resource, then by instrumentation scope."""
    cache = cache or _Encoded()
    grouped: dict[int, tuple[Resource, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span._resource
        scope = span._instrumentation_scope
        # get before set: setdefault would build a tuple and a container per span.
        resource_entry = grouped.get(id(resource))
        if resource_entry is None:
            resource_entry = grouped[id(resource)] = (resource, {})
        scope_entry = resource_entry[1].get(id(scope))
        if scope_entry is None:
            scope_entry = resource_entry[1][id(scope)] = (scope, [])
        encoded = encode_span(span)
        scope_entry[1].append(_SPAN_IN_SCOPE + _varint(len(encoded)) + encoded)
    request = []
    for resource, by_scope in grouped.values():
        resource_spans = [cache.resource(resource)]
        for scope, encoded_spans in by_scope.values():
            scope_spans = [cache.scope(scope), *encoded_spans]
            if scope is not None and scope.schema_url:
                scope_spans.append(_len_field(_tag(3, _LEN), scope.schema_url.encode()))
            resource_spans.append(_len_field(_tag(2, _LEN), b"".join(scope_spans)))
        if resource.schema_url:
            resource_spans.append(_len_field(_tag(3, _LEN), resource.schema_url.encode()))
        request.append(_len_field(_tag(1, _LEN), b"".join(resource_spans)))
    return b"".join(request)


class FastOtlpSpanExporter(OTLPSpanExporter):
    """OTLPSpanExporter with the encoder above; sending is the SDK's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoded = _Encoded()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return super().export(spans)  # logs and refuses, as it always did
        try:
            body = encode_trace_request(spans, self._encoded)
        except Exception:
            _logger.exception("Failed to encode span batch")
            return SpanExportResult.FAILURE
        result = self._client.export(body)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
