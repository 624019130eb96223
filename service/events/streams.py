"""The two transports of a stream: a WebSocket session and an SSE response body. Both take
messages from the stream's bounded queue (service/events/hub.py) and end with a reason."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime

import orjson
import structlog
from sse_starlette import ServerSentEvent
from starlette.websockets import WebSocket, WebSocketDisconnect

from service.db.base import utc_now
from service.events import metrics
from service.events.hub import CloseReason, Hub, Message, StreamLimitError, Subscriber

log = structlog.get_logger(__name__)

# WebSocket close codes: 4401/4403/4429 mirror the HTTP statuses a request would get.
CLOSE_CODES: dict[CloseReason, int] = {
    CloseReason.client: 1000,
    CloseReason.shutdown: 1001,  # going away: reconnect, to another pod
    CloseReason.slow_consumer: 1008,  # policy: a client must keep up with its stream
    CloseReason.revoked: 4401,
    CloseReason.expired: 4401,
}
UNAUTHORIZED = 4401
FORBIDDEN = 4403
TOO_MANY = 4429
TRY_AGAIN_LATER = 1013


def refusal(exc: StreamLimitError) -> tuple[int, str, str]:
    """WebSocket close code, reason and metric label of a stream refused for its limits."""
    if exc.per_user:
        return TOO_MANY, "too_many_streams", "too_many_for_user"
    return TRY_AGAIN_LATER, "worker_full", "worker_full"


async def _until_end(subscriber: Subscriber, ends_at: datetime) -> AsyncIterator[Message]:
    """The stream's messages until it closes; its credential's end closes it too."""
    while True:
        remaining = (ends_at - utc_now()).total_seconds()
        if remaining <= 0:
            subscriber.close(CloseReason.expired)
        next_message = await subscriber.next_message(wait_seconds=max(remaining, 0))
        if isinstance(next_message, Message):
            yield next_message
        elif next_message is not None:
            return


def _finished(subscriber: Subscriber, opened: float) -> None:
    reason = subscriber.closed.result() if subscriber.closed.done() else CloseReason.client
    metrics.STREAM_DURATION.labels(subscriber.transport, reason.value).observe(
        time.monotonic() - opened
    )
    log.info("stream_closed", transport=subscriber.transport, reason=reason.value)


async def serve_websocket(
    websocket: WebSocket,
    hub: Hub,
    subscriber: Subscriber,
    *,
    resume_after: int | None,
    ends_at: datetime,
    send_timeout: float,
) -> None:
    """After the handshake and authentication: events out, the client's messages read (and
    dropped) so that its close is seen, until one side ends it."""
    opened = time.monotonic()
    hub.open(subscriber, resume_after=resume_after)
    reader = asyncio.create_task(_read_until_closed(websocket, subscriber))
    try:
        await websocket.send_text('{"type":"stream.ready"}')
        async for message in _until_end(subscriber, ends_at):
            async with asyncio.timeout(send_timeout):
                await websocket.send_text(message.data.decode())
            metrics.MESSAGES_SENT.labels("ws").inc()
        reason = subscriber.closed.result()
        if reason is not CloseReason.client:
            async with asyncio.timeout(send_timeout):
                await websocket.close(CLOSE_CODES[reason], reason.value)
    except TimeoutError:
        # Not even the close frame fits: the client stopped reading. Ending here lets the
        # server drop the connection; what is buffered for it stays bounded.
        subscriber.close(CloseReason.slow_consumer)
    except (WebSocketDisconnect, RuntimeError):
        subscriber.close(CloseReason.client)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        hub.forget(subscriber)
        _finished(subscriber, opened)


async def _read_until_closed(websocket: WebSocket, subscriber: Subscriber) -> None:
    # What clients send after authenticating is read and ignored.
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass
    subscriber.close(CloseReason.client)


async def sse_events(
    hub: Hub,
    subscriber: Subscriber,
    *,
    ends_at: datetime,
    reconnect_ms: int,
) -> AsyncIterator[ServerSentEvent]:
    opened = time.monotonic()
    try:
        # At once, as on a WebSocket: the client knows the stream is live before any event.
        yield ServerSentEvent(data='{"type":"stream.ready"}', event="stream.ready")
        async for message in _until_end(subscriber, ends_at):
            event_id = None if message.seq is None or subscriber.everyone else str(message.seq)
            yield ServerSentEvent(data=message.data.decode(), event=message.kind, id=event_id)
            metrics.MESSAGES_SENT.labels("sse").inc()
        reason = subscriber.closed.result()
        # The last event says why; the retry tells EventSource how soon to come back.
        yield ServerSentEvent(
            data=orjson.dumps({"type": "stream.closing", "reason": reason.value}).decode(),
            event="stream.closing",
            retry=reconnect_ms,
        )
    finally:
        hub.forget(subscriber)
        _finished(subscriber, opened)
