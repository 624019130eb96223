"""LeanSpans against the SDK's spans: the same calls on both must export the same spans, field
for field and byte for byte in OTLP, limits, sampling, events, links and misuse included."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.trace.status import Status, StatusCode

from service.observability.otlp import encode_trace_request
from service.observability.spans import FOLLOW_PARENT, LeanSpan, LeanTracerProvider

Scenario = Callable[[trace.Tracer], None]


class CountingIds(IdGenerator):
    """The same IDs in the same order for both providers."""

    def __init__(self) -> None:
        self.next = 0

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return 0xABC0000 + self.next

    def is_trace_id_random(self) -> bool:
        return True  # so that the W3C random-trace-id flag is compared too


class Unprintable:
    __str__ = object.__str__
    __repr__ = object.__repr__


class Printable:
    def __str__(self) -> str:
        return "printable"


class TaggingSampler(Sampler):
    """Samples every span and adds an attribute of its own, as some samplers do."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        attributes = {**(kwargs.get("attributes") or args[4] or {}), "sampler.tag": "kept"}
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "TaggingSampler"


REMOTE_SAMPLED = SpanContext(
    trace_id=0xFEED,
    span_id=0xBEEF,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "value")]),
)
REMOTE_DROPPED = SpanContext(
    trace_id=0xFEED, span_id=0xBEEF, is_remote=True, trace_flags=TraceFlags(0)
)


def with_parent(parent: SpanContext) -> context_api.Context:
    return trace.set_span_in_context(NonRecordingSpan(parent))


def attribute_kinds(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span(
        "root", kind=SpanKind.SERVER, attributes={"a": 1, "b": "two"}, start_time=10
    ) as root:
        root.set_attribute("float", 1.5)
        root.set_attribute("bool", True)
        root.set_attribute("none", None)
        root.set_attribute("list", ["x", "y"])
        root.set_attribute("ints", (1, 2, 3))
        root.set_attribute("bytes", b"raw")
        root.set_attribute("printable", Printable())  # type: ignore[arg-type]
        root.set_attribute("unprintable", Unprintable())  # type: ignore[arg-type]
        root.set_attribute("", "empty key")
        root.set_attribute(7, "int key")  # type: ignore[arg-type]
        root.set_attributes({"c": 3, "": "dropped", 8: "made a string"})  # type: ignore[dict-item]
        root.set_attribute("a", "set again: moves to the end")
        root.update_name("renamed")
        child = tracer.start_span("child", kind=SpanKind.CLIENT, attributes={"db": "redis"})
        child.end(end_time=20)


def attributes_in_bulk(tracer: trace.Tracer) -> None:
    """set_attributes and start_span's attributes take a one-update path when everything is
    plain and fits: each case here is one where it must not, or must give the same result."""
    root = tracer.start_span("bulk", attributes={"a": "1", "b": 2, "c": 3.0, "d": True, "e": "5"})
    root.set_attributes({"f": "fits", "g": None})
    root.set_attributes({"b": "set again", "h": "new"})  # a key already set: moves to the end
    root.set_attributes({"long": "longer than eight characters"})  # cut under tight limits
    root.set_attributes({"list": ["x"], "i": 1})  # not plain: the value is cleaned
    root.set_attributes({f"many{index}": index for index in range(6)})  # more than fit
    root.set_attributes({})
    root.set_attributes({"": "an empty key", "j": 1})
    root.set_attributes({9: "a key that is not a string"})  # type: ignore[dict-item]
    root.end(end_time=20)
    tracer.start_span("empty key at start", attributes={"": "dropped", "k": 1}).end()
    tracer.start_span("full at start", attributes={f"k{index}": "v" for index in range(9)}).end()


def limits_and_misuse(tracer: trace.Tracer) -> None:
    span = tracer.start_span("limited", attributes={"first": "123456789"}, start_time=10)
    for index in range(6):
        span.set_attribute(f"key{index}", f"value-{index}-long")
    span.set_attribute("key5", "again")
    for index in range(4):
        span.add_event(f"event{index}", {"n": index, "text": "abcdefghij"}, timestamp=11)
    span.add_link(REMOTE_SAMPLED, {"why": "batch"})
    span.add_link(REMOTE_DROPPED)
    span.add_link(REMOTE_SAMPLED, {"third": 3})
    span.set_status(StatusCode.ERROR, "broken")
    span.set_status(Status(StatusCode.OK))
    span.set_status(StatusCode.ERROR, "ignored after OK")
    span.end(end_time=30)
    span.set_attribute("late", 1)
    span.set_attributes({"late": 2})
    span.add_event("late")
    span.update_name("late")
    span.set_status(StatusCode.ERROR)
    span.end(end_time=40)


def links_events_and_errors(tracer: trace.Tracer) -> None:
    links = [Link(REMOTE_SAMPLED, {"kind": "follows"}), Link(REMOTE_DROPPED)]
    with (
        pytest.raises(ValueError, match="boom"),
        tracer.start_as_current_span("failing", links=links, start_time=10),
    ):
        raise ValueError("boom")
    span = tracer.start_span("recorded", start_time=10)
    span.record_exception(KeyError("gone"), {"extra": 1}, timestamp=12, escaped=True)
    span.set_status(Status(StatusCode.UNSET))
    span.end(end_time=13)
    quiet = tracer.start_span("quiet", record_exception=False, set_status_on_exception=False)
    with pytest.raises(RuntimeError), trace.use_span(quiet, end_on_exit=True):
        raise RuntimeError("not recorded")


def remote_parents(tracer: trace.Tracer) -> None:
    tracer.start_span("continued", context=with_parent(REMOTE_SAMPLED), start_time=1).end(2)
    dropped = tracer.start_span("dropped", context=with_parent(REMOTE_DROPPED))
    with trace.use_span(dropped):
        tracer.start_span("under a dropped parent").end()


SCENARIOS: dict[str, Scenario] = {
    "attribute kinds": attribute_kinds,
    "attributes in bulk": attributes_in_bulk,
    "limits and misuse": limits_and_misuse,
    "links, events and errors": links_events_and_errors,
    "remote parents": remote_parents,
}
LIMITS = {
    "default limits": SpanLimits(),
    "tight limits": SpanLimits(
        max_span_attributes=4,
        max_span_attribute_length=8,
        max_events=2,
        max_links=2,
        max_event_attributes=1,
        max_link_attributes=1,
    ),
}
SAMPLERS: dict[str, Sampler] = {
    "follow parent": FOLLOW_PARENT,
    "sampler with attributes": TaggingSampler(),
    "ratio 1": TraceIdRatioBased(1.0),
}


def exported(
    provider_type: type[TracerProvider], scenario: Scenario, limits: SpanLimits, sampler: Sampler
) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = provider_type(
        sampler=sampler,
        resource=Resource.create({"service.name": "spans-test"}),
        id_generator=CountingIds(),
        span_limits=limits,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    scenario(provider.get_tracer("glasshouse.test", "1.0"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def without_stack_frames(attributes: Any) -> list[tuple[str, Any]]:
    """A recorded exception's trace passes through the tracer's own frames, which differ."""
    return [
        (key, value.splitlines()[-1] if key == "exception.stacktrace" else value)
        for key, value in attributes.items()
    ]


def view(span: ReadableSpan) -> dict[str, Any]:
    """Everything an exporter can read of a span, with the times the scenarios did not fix."""
    return {
        "name": span.name,
        "context": span.context,
        "parent": span.parent,
        "kind": span.kind,
        "start": span.start_time if span.start_time and span.start_time < 100 else "now",
        "end": span.end_time if span.end_time and span.end_time < 100 else "now",
        "attributes": list(span.attributes.items()),
        "dropped_attributes": span.dropped_attributes,
        "events": [
            (event.name, without_stack_frames(event.attributes), min(event.timestamp, 100))
            for event in span.events
        ],
        "dropped_events": span.dropped_events,
        "links": [(link.context, list(link.attributes.items())) for link in span.links],
        "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
    }


def with_fixed_times(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The spans, their clock readings and stack frames replaced (they are ended: nothing else
    changes them)."""
    for span in spans:
        span._start_time, span._end_time = 1, 2
        for event in span.events:
            event._timestamp = 3  # type: ignore[attr-defined]
            event._attributes = dict(without_stack_frames(event.attributes))  # type: ignore[attr-defined]
    return spans


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("limits_name", LIMITS)
@pytest.mark.parametrize("scenario_name", SCENARIOS)
def test_lean_spans_export_what_sdk_spans_export(
    scenario_name: str, limits_name: str, sampler_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    args = (SCENARIOS[scenario_name], LIMITS[limits_name], SAMPLERS[sampler_name])
    with caplog.at_level(logging.WARNING):
        sdk = exported(TracerProvider, *args)
        sdk_warnings = len(caplog.records)
        caplog.clear()
        lean = exported(LeanTracerProvider, *args)
        lean_warnings = len(caplog.records)

    assert sdk, "the scenario exported nothing: it compares nothing"
    assert all(isinstance(span, LeanSpan) for span in lean)
    assert [view(span) for span in lean] == [view(span) for span in sdk]
    assert encode_trace_request(with_fixed_times(lean)) == encode_trace_request(
        with_fixed_times(sdk)
    )
    # Misuse is reported as the SDK reports it (a warning per refused call), not in silence.
    assert lean_warnings == sdk_warnings


def test_lean_tracer_samples_as_its_sampler_says() -> None:
    for sampler in (ALWAYS_OFF, TraceIdRatioBased(0.0)):
        provider = LeanTracerProvider(sampler=sampler)
        span = provider.get_tracer("t").start_span("never")
        assert not span.is_recording()
        assert not span.get_span_context().trace_flags.sampled
