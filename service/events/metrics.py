"""Live streams' metrics, by transport (ws, sse) and bounded reasons. The gauge adds up across
gunicorn's workers (multiprocess mode "livesum": a dead worker's streams stop counting)."""

from prometheus_client import Counter, Gauge, Histogram

TRANSPORTS = ("ws", "sse")
# Every CloseReason, and the refusals before a stream opens.
DISCONNECT_REASONS = (
    "client_closed",
    "credentials_revoked",
    "credentials_expired",
    "slow_consumer",
    "server_shutdown",
)
REFUSAL_REASONS = ("unauthorized", "forbidden", "too_many_for_user", "worker_full")

STREAMS_OPEN = Gauge(
    "glasshouse_streams_open",
    "Event streams open now.",
    ["transport"],
    multiprocess_mode="livesum",
)
STREAMS_REFUSED = Counter(
    "glasshouse_streams_refused_total",
    "Event streams refused before opening.",
    ["transport", "reason"],
)
MESSAGES_SENT = Counter(
    "glasshouse_stream_messages_sent_total", "Messages sent on event streams.", ["transport"]
)
MESSAGES_DROPPED = Counter(
    "glasshouse_stream_messages_dropped_total",
    "Messages not sent: the stream's queue was full (the stream is then closed).",
    ["transport", "reason"],
)
STREAM_DURATION = Histogram(
    "glasshouse_stream_duration_seconds",
    "How long event streams stayed open, by why they closed.",
    ["transport", "reason"],
    buckets=(1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0),
)


def declare() -> None:
    """Every series from the start, at zero."""
    for transport in TRANSPORTS:
        STREAMS_OPEN.labels(transport)
        MESSAGES_SENT.labels(transport)
        MESSAGES_DROPPED.labels(transport, "slow_consumer")
        for reason in REFUSAL_REASONS:
            STREAMS_REFUSED.labels(transport, reason)
        for reason in DISCONNECT_REASONS:
            STREAM_DURATION.labels(transport, reason)
