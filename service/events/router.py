import asyncio
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette import EventSourceResponse

from service.auth.dependencies import API_KEY_HEADER, AccessClaimsDep, ItemsStreamReader
from service.dependencies import LiveEventsDep, SettingsDep, StateDep
from service.errors import AppError, ServerBusyError, TooManyRequestsError
from service.events import metrics
from service.events.dependencies import (
    PROTOCOL,
    StreamCredential,
    authenticate,
    credential_for,
    offered_token,
)
from service.events.hub import StreamLimitError, Subscriber
from service.events.schemas import ItemEventRead
from service.events.streams import (
    FORBIDDEN,
    TOO_MANY,
    TRY_AGAIN_LATER,
    UNAUTHORIZED,
    refusal,
    serve_websocket,
    sse_events,
)
from service.lifespan import AppState
from service.schemas import MAX_ID

router = APIRouter(tags=["events"])

Everyone = Annotated[
    bool,
    Query(alias="all", description="Admins: every user's events, live only (no resume)."),
]
EVENTS_DESCRIPTION = (
    "`stream.ready` first, then the signed-in user's item events as they commit: "
    "`item.created`, `item.updated` (with the item as GET /items/{id} answers it) and "
    "`item.deleted`. Each event's `id` is the "
    "owner's event number, increasing one by one: after a reconnect, EventSource sends it "
    "back as `Last-Event-ID` and the stream replays what was missed (kept "
    "`realtime.retention_hours`), or sends `stream.reset` when too far behind (reload, then "
    "go on). Comment lines are heartbeats; `stream.delayed` says live delivery is paused "
    "(events still arrive, later); the last event is `stream.closing` with a reason and a "
    "retry hint. Browsers: open it with `?ticket=` from POST /api/v1/auth/stream-tickets. "
    "docs/realtime.md has the details."
)


@router.get(
    "/events",
    summary="Your item events, as Server-Sent Events",
    description=EVENTS_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "The event stream; each event's data is an ItemEvent",
            "content": {"text/event-stream": {"schema": ItemEventRead.model_json_schema()}},
        },
        429: {"description": "Too many open streams for this user"},
        503: {"description": "This worker has no room for another stream"},
    },
)
async def item_events(
    principal: ItemsStreamReader,
    claims: AccessClaimsDep,
    live: LiveEventsDep,
    settings: SettingsDep,
    state: StateDep,
    api_key: Annotated[str | None, Header(alias=API_KEY_HEADER, include_in_schema=False)] = None,
    everyone: Everyone = False,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, le=MAX_ID, description="Resume after this event."),
    ] = None,
) -> EventSourceResponse:
    realtime = settings.realtime
    credential = credential_for(
        principal,
        api_key=api_key,
        api_keys=state["api_keys"],
        everyone=everyone,
        expires_at=claims.expires_at if claims is not None else None,
        max_seconds=realtime.max_stream_seconds,
    )
    subscriber = Subscriber(
        user_id=principal.id,
        transport="sse",
        still_allowed=credential.still_allowed,
        everyone=everyone,
    )
    try:
        live.hub.open(subscriber, resume_after=None if everyone else last_event_id)
    except StreamLimitError as exc:
        _, _, label = refusal(exc)
        metrics.STREAMS_REFUSED.labels("sse", label).inc()
        if exc.per_user:
            raise TooManyRequestsError(
                "Too many open event streams for this user.", retry_after=60
            ) from exc
        raise ServerBusyError("No room for another event stream here; retry shortly.") from exc
    return EventSourceResponse(
        sse_events(
            live.hub,
            subscriber,
            ends_at=credential.ends_at,
            reconnect_ms=int(realtime.reconnect_hint_seconds * 1000),
        ),
        ping=realtime.heartbeat_seconds,
        send_timeout=realtime.send_timeout_seconds,
        # Proxies (nginx and others) pass each event on at once instead of buffering.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.websocket("/ws", name="item_events_socket")
async def item_events_socket(
    websocket: WebSocket,
    everyone: Everyone = False,
    last_event_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> None:
    """Item events over a WebSocket (docs/realtime.md): the same messages as GET /events."""
    state = cast(AppState, websocket.scope["state"])
    realtime = state["settings"].realtime
    offered = websocket.scope.get("subprotocols", [])
    token = offered_token(offered)
    await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    api_key = websocket.headers.get(API_KEY_HEADER)
    if token is None and (authorization := websocket.headers.get("authorization")):
        scheme, _, value = authorization.partition(" ")
        token = value if scheme.lower() == "bearer" else None
    if token is None and api_key is None:
        try:
            first = await _first_message(websocket, realtime.auth_timeout_seconds)
        except WebSocketDisconnect:
            return
        if isinstance(first, str):
            metrics.STREAMS_REFUSED.labels("ws", "unauthorized").inc()
            await websocket.close(UNAUTHORIZED, first)
            return
        token, api_key = first
    credential = await _credential(websocket, state, token, api_key, everyone)
    if credential is None:
        return
    subscriber = Subscriber(
        user_id=credential.principal.id,
        transport="ws",
        still_allowed=credential.still_allowed,
        everyone=everyone,
    )
    try:
        await serve_websocket(
            websocket,
            state["live_events"].hub,
            subscriber,
            resume_after=None if everyone else last_event_id,
            ends_at=credential.ends_at,
            send_timeout=realtime.send_timeout_seconds,
        )
    except StreamLimitError as exc:
        code, reason, label = refusal(exc)
        metrics.STREAMS_REFUSED.labels("ws", label).inc()
        await websocket.close(code, reason)


async def _first_message(
    websocket: WebSocket, wait_seconds: float
) -> tuple[str | None, str | None] | str:
    """``{"type": "auth", "token": ...}`` or ``{"type": "auth", "api_key": ...}``, or why
    not: auth_timeout, or auth_required (anything else)."""
    try:
        async with asyncio.timeout(wait_seconds):
            raw = await websocket.receive_text()
        message: Any = orjson.loads(raw)
    except TimeoutError:
        return "auth_timeout"
    except (ValueError, KeyError):  # not JSON, or a binary frame
        return "auth_required"
    if not isinstance(message, dict) or message.get("type") != "auth":
        return "auth_required"
    token, api_key = message.get("token"), message.get("api_key")
    if not isinstance(token, str | None) or not isinstance(api_key, str | None):
        return "auth_required"
    return (token, api_key) if token or api_key else "auth_required"


async def _credential(
    websocket: WebSocket, state: AppState, token: str | None, api_key: str | None, everyone: bool
) -> StreamCredential | None:
    """The stream's credential, or None after closing with the HTTP status's 44xx code."""
    address = websocket.client.host if websocket.client else "unknown"
    try:
        async with state["sessionmaker"]() as session:
            return await authenticate(
                state, session, token=token, api_key=api_key, address=address, everyone=everyone
            )
    except AppError as exc:
        code = _CLOSE_CODE_OF_STATUS.get(exc.status, UNAUTHORIZED)
        metrics.STREAMS_REFUSED.labels(
            "ws", "forbidden" if code == FORBIDDEN else "unauthorized"
        ).inc()
        await websocket.close(code, exc.code)
        return None
    except (SQLAlchemyError, OSError, TimeoutError):
        # What a request would answer 503 database_unavailable: come back later.
        await websocket.close(TRY_AGAIN_LATER, "database_unavailable")
        return None


_CLOSE_CODE_OF_STATUS = {403: FORBIDDEN, 429: TOO_MANY, 503: TRY_AGAIN_LATER}
