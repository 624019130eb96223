"""The OTLP encoder against the SDK's own: the same spans must decode to the same request."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags, TraceState

from service.observability import otlp
from service.observability.otlp import FastOtlpSpanExporter, encode_trace_request
from tests.processes import running_otlp_sink


def _provider(
    resource: Resource, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _decoded(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode_trace_request(spans))


def _links(request: ExportTraceServiceRequest) -> list[Any]:
    return [
        link
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
        for link in span.links
    ]


def _assert_same_request(spans: list[ReadableSpan]) -> None:
    ours, sdks = _decoded(spans), encode_spans(spans)
    # The one difference: the SDK's encoder leaves out a link's trace state, which the
    # protocol carries (Span.Link.trace_state); ours keeps it.
    for link in _links(ours):
        link.ClearField("trace_state")
    assert str(ours) == str(sdks)  # text first: a readable diff when they differ
    assert ours == sdks


@pytest.fixture
def spans() -> list[ReadableSpan]:
    """Spans of every shape the SDK produces, from two resources and three scopes."""
    provider, exporter = _provider(
        Resource.create({"service.name": "glasshouse", "service.instance.id": "pod-1"})
    )
    other_provider, other_exporter = _provider(
        Resource({"service.name": "other", "replicas": 3}, schema_url="https://example.com/r")
    )
    http = provider.get_tracer("glasshouse.http", "0.1.0")
    db = provider.get_tracer("db", schema_url="https://opentelemetry.io/schemas/1.26.0")
    other = other_provider.get_tracer("other")

    remote_parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "opaque"), ("other", "x")]),
    )
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(remote_parent)))
    try:
        with http.start_as_current_span(
            "GET /items/{item_id}", kind=trace.SpanKind.SERVER
        ) as server:
            server.set_attributes(
                {
                    "http.request.method": "GET",
                    "http.response.status_code": 200,
                    "server.port": 8000,
                    "negative": -42,
                    "int64.max": 2**63 - 1,
                    "int64.min": -(2**63),
                    "ratio": 0.25,
                    "flag": True,
                    "off": False,
                    "zero": 0,
                    "empty": "",
                    "unicode": "Zoë's ferns ✓",
                    "words": ("a", "b"),
                    "numbers": (1, -2, 3),
                    "switches": (True, False),
                    "floats": (1.5, -0.0),
                }
            )
            retried = Link(remote_parent, {"why": "retry"})
            with db.start_as_current_span(
                "SELECT glasshouse", kind=trace.SpanKind.CLIENT, links=[retried]
            ) as query:
                query.set_attribute("db.statement", "SELECT 1")
                query.add_event("rows", {"count": 3})
            try:
                raise ValueError("the ferns are dry")
            except ValueError as exc:
                server.record_exception(exc)
            server.set_status(Status(StatusCode.ERROR, "it failed"))
    finally:
        otel_context.detach(token)
    with http.start_as_current_span("no parent", kind=trace.SpanKind.INTERNAL) as root:
        root.set_status(Status(StatusCode.OK))
    # The same key with values equal in Python but not on the wire (True == 1 == 1.0).
    for value in (True, 1, 1.0, "1"):
        with other.start_as_current_span("same key", kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("x", value)
    # Arrays too: (1, 0) == (True, False) == (1.0, 0.0).
    for array in ((1, 0), (True, False), (1.0, 0.0)):
        with other.start_as_current_span("same key, arrays") as span:
            span.set_attribute("pair", array)
    with other.start_as_current_span("consumer", kind=trace.SpanKind.CONSUMER):
        pass
    with other.start_as_current_span("consumer", kind=trace.SpanKind.CONSUMER):
        pass
    # Over the limits: the counts of what was dropped travel with the span.
    limited_provider, limited_exporter = _provider(
        Resource.create({}), SpanLimits(max_span_attributes=1, max_events=1, max_links=1)
    )
    with limited_provider.get_tracer("limited").start_as_current_span(
        "crowded", links=[Link(remote_parent), Link(remote_parent)]
    ) as crowded:
        crowded.set_attributes({"one": 1, "two": 2, "three": 3})
        crowded.add_event("first")
        crowded.add_event("second")
    # A value that cannot be hashed (the SDK's spans hold tuples; a hand-made span may not).
    [crowded_span] = limited_exporter.get_finished_spans()
    unhashable = ReadableSpan(
        "hand-made",
        context=SpanContext(0x1, 0x2, is_remote=False),
        attributes={"list": [1, 2], "plain": "yes"},  # type: ignore[dict-item]
        resource=crowded_span.resource,
        instrumentation_scope=crowded_span.instrumentation_scope,
        start_time=1,
        end_time=2,
    )
    return [
        *exporter.get_finished_spans(),
        *other_exporter.get_finished_spans(),
        *limited_exporter.get_finished_spans(),
        unhashable,
    ]


def test_encodes_what_the_sdk_encodes(spans: list[ReadableSpan]) -> None:
    _assert_same_request(spans)


def test_links_keep_their_trace_state(spans: list[ReadableSpan]) -> None:
    assert {link.trace_state for link in _links(_decoded(spans))} == {"vendor=opaque,other=x"}


def test_dropped_counts_are_sent(spans: list[ReadableSpan]) -> None:
    [crowded] = [
        span
        for resource_spans in _decoded(spans).resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
        if span.name == "crowded"
    ]
    assert (crowded.dropped_attributes_count, crowded.dropped_events_count) == (2, 1)
    assert crowded.dropped_links_count == 1


def test_each_span_alone_and_all_twice(spans: list[ReadableSpan]) -> None:
    for span in spans:
        _assert_same_request([span])
    # Encoded resources and attributes are reused: the second pass must not differ.
    _assert_same_request(spans + spans)


def test_an_attribute_that_does_not_fit_is_left_out_like_the_sdk_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = _provider(Resource.create({}))
    with provider.get_tracer("t").start_as_current_span("big") as span:
        span.set_attributes({"too.big": 2**64, "kept": 1})
    [finished] = exporter.get_finished_spans()
    with caplog.at_level(logging.ERROR):
        decoded = _decoded([finished])
    assert decoded == encode_spans([finished])
    assert [a.key for a in decoded.resource_spans[0].scope_spans[0].spans[0].attributes] == ["kept"]
    assert "too.big" in caplog.text


def test_the_attribute_tables_stay_bounded_and_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "_encoded_string_attributes", {})
    monkeypatch.setattr(otlp, "_encoded_span_attributes", {})
    monkeypatch.setattr(otlp, "_MAX_ENCODED_SPAN_ATTRIBUTES", 8)
    provider, exporter = _provider(Resource.create({}))
    tracer = provider.get_tracer("t")
    for number in range(30):
        with tracer.start_as_current_span("span") as span:
            span.set_attributes({"url.path": f"/items/{number}", "method": "GET", "n": number})
    finished = list(exporter.get_finished_spans())
    _assert_same_request(finished)
    assert 0 < len(otlp._encoded_string_attributes) <= 8
    assert 0 < len(otlp._encoded_span_attributes) <= 8


def test_equal_values_of_other_types_keep_their_own_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """True == 1 == 1.0 and they hash alike: a kept encoding must not answer for another type."""
    monkeypatch.setattr(otlp, "_encoded_string_attributes", {})
    monkeypatch.setattr(otlp, "_encoded_span_attributes", {})
    provider, exporter = _provider(Resource.create({}))
    tracer = provider.get_tracer("t")
    for value in ("1", 1, True, 1.0, 0, False, 0.0, ""):
        with tracer.start_as_current_span("span") as span:
            span.set_attribute("same.key", value)
    finished = list(exporter.get_finished_spans())
    _assert_same_request(finished)
    _assert_same_request(finished)  # the second time, every encoding comes from the tables
    [*_, last] = _decoded(finished).resource_spans[0].scope_spans[0].spans
    assert last.attributes[0].value.WhichOneof("value") == "string_value"


def test_exporter_sends_to_an_otlp_endpoint() -> None:
    provider, exporter = _provider(Resource.create({"service.name": "glasshouse"}))
    with provider.get_tracer("t").start_as_current_span("sent", kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("http.route", "/api/v1/items/{item_id}")
    with running_otlp_sink() as sink:
        sender = FastOtlpSpanExporter(endpoint=f"{sink.endpoint}/v1/traces", timeout=5)
        assert sender.export(exporter.get_finished_spans()) is SpanExportResult.SUCCESS
        sender.shutdown()
        [received] = sink.snapshot()
    assert received.name == "sent"
    assert received.kind == trace.SpanKind.SERVER.value + 1
    assert received.attributes == {"http.route": "/api/v1/items/{item_id}"}
    assert received.resource["service.name"] == "glasshouse"
    # After shutdown it refuses, as the SDK's exporter does.
    assert sender.export(exporter.get_finished_spans()) is SpanExportResult.FAILURE


def test_exporter_reports_failure_when_nothing_listens() -> None:
    provider, exporter = _provider(Resource.create({}))
    with provider.get_tracer("t").start_as_current_span("lost"):
        pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = FastOtlpSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=0.5)
    assert sender.export(exporter.get_finished_spans()) is SpanExportResult.FAILURE
