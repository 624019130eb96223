"""What the cache reports: its results as metrics and as an attribute of the request's span."""

from opentelemetry import trace

from service.observability import metrics

SPAN_ATTRIBUTE = "glasshouse.cache.result"

# The series, looked up once: labels() costs more than the increment itself.
_COUNTED = {
    result: metrics.CACHE_REQUESTS.labels(result=result) for result in metrics.CACHE_RESULTS
}


def cache_result(result: str) -> None:
    """``result`` is hit, miss or bypass (bypass: the request asked for fresh data)."""
    if result != "bypass":
        _COUNTED[result].inc()
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(SPAN_ATTRIBUTE, result)


def cache_error() -> None:
    _COUNTED["error"].inc()
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(SPAN_ATTRIBUTE, "error")


def cache_available(available: bool) -> None:
    metrics.CACHE_AVAILABLE.set(1 if available else 0)


def invalidation_deferred() -> None:
    metrics.CACHE_INVALIDATIONS_DEFERRED.inc()
