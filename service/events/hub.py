"""One process's open event streams, and how an event reaches each of them.

Events arrive from the fan-out (Redis pub/sub, or this process alone) already committed, with
their owner's event number. A stream that sees a number it did not expect, or that lags the
owner's counter in the database (checked every ``catch_up_seconds``), reads what it missed from
the event log: a lost message, a publisher that crashed after its commit or a Redis outage
delays an event, never loses it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.events import metrics, service
from service.events.schemas import encode
from service.settings import RealtimeSettings

log = structlog.get_logger(__name__)


class CloseReason(StrEnum):
    """Why a stream ended: bounded, so also a metric label."""

    client = "client_closed"
    revoked = "credentials_revoked"
    expired = "credentials_expired"
    slow_consumer = "slow_consumer"
    shutdown = "server_shutdown"


@dataclass(frozen=True, slots=True)
class Message:
    """What a stream sends: an event (``seq`` set for the subscriber's own events) or a
    notice of the stream's own (``kind`` "stream.reset", "stream.delayed")."""

    kind: str
    data: bytes
    seq: int | None = None


StillAllowed = Callable[[AsyncSession], Awaitable[bool]]


@dataclass(eq=False)
class Subscriber:
    user_id: int
    transport: str  # "ws" or "sse"
    still_allowed: StillAllowed
    everyone: bool = False  # an admin watching every user's events (live only)
    queue: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    # The last event number sent (None until the first catch-up has read the owner's counter).
    last_seq: int | None = None
    closed: asyncio.Future[CloseReason] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    catching_up: asyncio.Task[None] | None = None
    announced: int = 0  # the highest event number announced while a catch-up ran

    def close(self, reason: CloseReason) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)

    async def next_message(self, wait_seconds: float) -> Message | CloseReason | None:
        """The next message to send, why the stream must close (that first), or None after
        ``wait_seconds`` without either."""
        if self.closed.done():
            return self.closed.result()
        if not self.queue.empty():
            return self.queue.get_nowait()
        getter = asyncio.ensure_future(self.queue.get())
        waiters: set[asyncio.Future[Any]] = {getter, self.closed}
        done, _ = await asyncio.wait(
            waiters, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        return self.closed.result() if self.closed.done() else None


class StreamLimitError(Exception):
    def __init__(self, per_user: bool) -> None:
        self.per_user = per_user


class Hub:
    def __init__(
        self, settings: RealtimeSettings, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self._sessionmaker = sessionmaker
        self._by_user: defaultdict[int, set[Subscriber]] = defaultdict(set)
        self._everyone: set[Subscriber] = set()
        self._count = 0
        self.emptied = asyncio.Event()  # set while no stream is open
        self.emptied.set()
        self._checker: asyncio.Task[None] | None = None
        # Catch-ups and credential checks under way: stop() waits for them.
        self._tasks: set[asyncio.Task[None]] = set()

    # --- streams coming and going ---------------------------------------------------------

    def open(self, subscriber: Subscriber, *, resume_after: int | None) -> None:
        """Registers the stream (its events start queueing at once) and starts its first
        catch-up: from ``resume_after``, or from the owner's counter as it is now."""
        if self._count >= self.settings.max_streams_per_worker:
            raise StreamLimitError(per_user=False)
        if len(self._by_user.get(subscriber.user_id, ())) >= self.settings.max_streams_per_user:
            raise StreamLimitError(per_user=True)
        subscriber.queue = asyncio.Queue(maxsize=self.settings.queue_size)
        self._count += 1
        self.emptied.clear()
        metrics.STREAMS_OPEN.labels(subscriber.transport).inc()
        if subscriber.everyone:
            self._everyone.add(subscriber)
            return
        self._by_user[subscriber.user_id].add(subscriber)
        subscriber.last_seq = resume_after
        self._catch_up(subscriber)

    def forget(self, subscriber: Subscriber) -> None:
        # A catch-up in progress runs to its end (into a queue no one reads): cancelled, it
        # could leave its database connection unreturned.
        subscriber.close(CloseReason.client)
        watchers = self._everyone if subscriber.everyone else self._by_user.get(subscriber.user_id)
        if watchers is not None and subscriber in watchers:
            watchers.discard(subscriber)
            if not subscriber.everyone and not watchers:
                del self._by_user[subscriber.user_id]
            self._count -= 1
            if not self._count:
                self.emptied.set()
            metrics.STREAMS_OPEN.labels(subscriber.transport).dec()

    @property
    def open_streams(self) -> int:
        return self._count

    def close_all(self, reason: CloseReason) -> None:
        for subscriber in self._all():
            subscriber.close(reason)

    def _all(self) -> list[Subscriber]:
        return [s for watchers in self._by_user.values() for s in watchers] + list(self._everyone)

    # --- what the fan-out calls -----------------------------------------------------------

    def deliver(self, owner_id: int, seq: int, kind: str, data: bytes) -> None:
        for subscriber in self._everyone:
            self._send(subscriber, Message(kind=kind, data=data))
        for subscriber in self._by_user.get(owner_id, ()):
            if subscriber.catching_up is not None:
                subscriber.announced = max(subscriber.announced, seq)
            elif subscriber.last_seq is not None and seq == subscriber.last_seq + 1:
                self._send(subscriber, Message(kind=kind, data=data, seq=seq))
                subscriber.last_seq = seq
            elif subscriber.last_seq is not None and seq > subscriber.last_seq:
                subscriber.announced = seq
                self._catch_up(subscriber)  # one or more went missing: read them

    def credentials_changed(self, user_id: int) -> None:
        """Pushed on logout, password change, deactivation, role change, deletion and API key
        revocation: each of the user's streams checks its credential again, in the database."""
        watching = [*self._by_user.get(user_id, ()), *self._everyone]
        for subscriber in watching:
            if subscriber.user_id == user_id:
                self._start_recheck(subscriber)

    def fan_out_lost(self) -> None:
        notice = orjson.dumps(
            {
                "type": "stream.delayed",
                "detail": "Live delivery is paused; events still arrive within "
                f"{self.settings.catch_up_seconds:g} s, from the event log.",
            }
        )
        for subscriber in self._all():
            self._send(subscriber, Message(kind="stream.delayed", data=notice))

    def fan_out_restored(self) -> None:
        """Back after an outage: revocations may have been missed, and events certainly were."""
        for subscriber in self._all():
            self._start_recheck(subscriber)
            if not subscriber.everyone:
                self._catch_up(subscriber)

    # --- sending, catching up -------------------------------------------------------------

    def _send(self, subscriber: Subscriber, message: Message) -> None:
        try:
            subscriber.queue.put_nowait(message)
        except asyncio.QueueFull:
            # A client that stops reading must not grow this process: it is cut loose.
            metrics.MESSAGES_DROPPED.labels(subscriber.transport, "slow_consumer").inc()
            subscriber.close(CloseReason.slow_consumer)

    def _catch_up(self, subscriber: Subscriber) -> None:
        if subscriber.catching_up is None and not subscriber.closed.done():
            subscriber.catching_up = task = asyncio.create_task(self._fill(subscriber))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill(self, subscriber: Subscriber) -> None:
        # A session per read: SQLite keeps a read transaction's snapshot, and the next read
        # must see what committed since.
        try:
            if subscriber.last_seq is None:
                async with self._sessionmaker() as session:
                    heads = await service.last_seqs(session=session, owner_ids=[subscriber.user_id])
                subscriber.last_seq = heads[subscriber.user_id]
            while True:
                async with self._sessionmaker() as session:
                    sent = await self._read_missed(session, subscriber)
                if not sent or subscriber.announced <= subscriber.last_seq:
                    break
        except Exception as exc:  # the database is away: the next check tries again
            log.warning("event_catch_up_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            subscriber.catching_up = None

    async def _read_missed(self, session: AsyncSession, subscriber: Subscriber) -> bool:
        """Sends what the stream missed; False if there was nothing."""
        assert subscriber.last_seq is not None
        limit = self.settings.replay_limit
        events = await service.events_after(
            session=session, owner_id=subscriber.user_id, after=subscriber.last_seq, limit=limit
        )
        if not events:
            return False
        if events[0].seq != subscriber.last_seq + 1 or len(events) == limit:
            # Too much, or no longer kept: the client reloads what it shows and goes on from
            # the owner's current counter.
            heads = await service.last_seqs(session=session, owner_ids=[subscriber.user_id])
            head = subscriber.last_seq = heads[subscriber.user_id]
            reset = orjson.dumps({"type": "stream.reset", "id": head})
            self._send(subscriber, Message(kind="stream.reset", data=reset, seq=head))
            return True
        for event in events:
            self._send(subscriber, Message(kind=event.kind, data=encode(event), seq=event.seq))
            subscriber.last_seq = event.seq
        return True

    def _start_recheck(self, subscriber: Subscriber) -> None:
        task = asyncio.create_task(self._recheck(subscriber))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self, subscriber: Subscriber) -> None:
        try:
            async with self._sessionmaker() as session:
                allowed = await subscriber.still_allowed(session)
        except Exception as exc:
            log.warning("stream_recheck_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if not allowed:
            subscriber.close(CloseReason.revoked)

    # --- the periodic check ---------------------------------------------------------------

    def start(self) -> None:
        self._checker = asyncio.create_task(self._check_periodically(), name="events-catch-up")

    async def stop(self) -> None:
        self.close_all(CloseReason.shutdown)
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.catch_up_seconds)
            try:
                await self.check_counters()
            except Exception as exc:
                log.warning("event_counters_unreadable", error=f"{type(exc).__name__}: {exc}")

    async def check_counters(self) -> None:
        """One query for every user with a stream here: a stream behind its owner's counter
        catches up (an event whose message never came)."""
        users = list(self._by_user)
        for start in range(0, len(users), 1000):
            async with self._sessionmaker() as session:
                heads = await service.last_seqs(
                    session=session, owner_ids=users[start : start + 1000]
                )
            for user_id, head in heads.items():
                for subscriber in self._by_user.get(user_id, ()):
                    if subscriber.last_seq is not None and head > subscriber.last_seq:
                        subscriber.announced = max(subscriber.announced, head)
                        self._catch_up(subscriber)
