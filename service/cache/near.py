"""Copies of cache entries in the worker's own memory, kept coherent by Redis itself
(client-side caching: ``CLIENT TRACKING ... BCAST``). A repeated read costs a dictionary lookup
instead of a Redis round trip, a large share of a cached item read's CPU (figures in
bench/HISTORY.md).

One connection per worker subscribes to ``__redis__:invalidate`` and has Redis report every
change under the tracked key prefixes, whoever makes it (any worker, any pod) and however
(writes, expiry, eviction, FLUSHDB). A copy is dropped as soon as its message is read. What
keeps the copies correct:

- Messages that have arrived are read before any copy is served: one non-blocking read of the
  socket per lookup (a system call, about a microsecond). A read that starts after Redis sent
  the message about a write never sees the old value, on any worker, once the message is on
  this host; the event loop's own turn to read the socket could come after that request's.
- A value read from Redis is kept only if no message (and no write of this worker) came in
  while the read was in flight: the message may be about a change Redis made after answering.
- Copies are served only while the connection is known to work: it is pinged every
  ``heartbeat_seconds``, and an answered PING proves that every message sent before it has
  been read (one TCP stream, in order). A lost connection, or a PING still unanswered when
  the next is due, forgets every copy; reads go to Redis until a new connection has
  subscribed. Copies are also not served while the circuit breaker skips Redis (the caller
  checks that).
- Bounded: at most ``max_entries`` copies (the oldest go first), each at most
  ``max_age_seconds`` old.

Only keys under the tracked prefixes are kept: a key Redis would not report on is never copied.
TLS connections (``rediss://``) are not supported here; the cache then works without copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import structlog
from redis.asyncio.connection import SSLConnection, parse_url

log = structlog.get_logger(__name__)

INVALIDATION_CHANNEL = "__redis__:invalidate"
_READ_SIZE = 65536


def _command(*parts: str) -> bytes:
    # hiredis's stub types its argument as a one-element tuple; any length works.
    packed: bytes = hiredis.pack_command(cast(Any, parts))
    return packed


_PING = _command("PING")


# How long to wait before asking again a server that refused a command of the setup.
REFUSED_RETRY_SECONDS = 60.0


class TrackingRefusedError(ConnectionError):
    """Redis answered the setup with an error (unknown command, no permission)."""


class NearCacheUnsupportedError(ValueError):
    """The Redis URL is one this module cannot follow (TLS)."""


class NearCache:
    def __init__(
        self,
        redis_url: str,
        *,
        prefixes: Sequence[str],
        max_entries: int,
        max_age_seconds: float,
        heartbeat_seconds: float,
        connect_timeout_seconds: float,
    ) -> None:
        options: dict[str, Any] = dict(parse_url(redis_url))
        if options.get("connection_class") is SSLConnection:
            raise NearCacheUnsupportedError("TLS (rediss://) is not supported by the near cache")
        self._path: str | None = options.get("path")
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self.prefixes = tuple(prefixes)
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        # key -> (value, or None for a key Redis does not have; monotonic time it expires)
        self._entries: dict[str, tuple[bytes | None, float]] = {}
        # Counts changes. A read in flight keeps none of its keys that changed after it began
        # (see keep()): _changed says when each key last changed; a change to everything (a
        # flush, a lost connection, _changed grown too big) moves _everything_changed instead.
        self._generation = 0
        self._changed: dict[str, int] = {}
        self._everything_changed = 0
        self._socket: socket.socket | None = None
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost_event = asyncio.Event()
        self._pong_due = False
        self.live = False
        # Tallies, read by the metrics flush (a Prometheus increment per lookup would cost more
        # than the lookup).
        self.hits = 0
        self.invalidations = 0
        self.resets = 0

    # --- the request path -----------------------------------------------------------------

    def get_many(self, keys: list[str]) -> list[bytes | None] | None:
        """Every key's copy, or None if any is missing or stale (the caller asks Redis)."""
        if not self.live:
            return None
        self._read_messages()
        if not self.live:
            return None
        now = time.monotonic()
        entries = self._entries
        found = []
        for key in keys:
            entry = entries.get(key)
            if entry is None or entry[1] <= now:
                return None
            found.append(entry[0])
        self.hits += 1
        return found

    def reading(self) -> int | None:
        """Called before a read from Redis; what keep() needs afterwards (None: no copies)."""
        return self._generation if self.live else None

    def keep(self, keys: list[str], values: list[bytes | None], since: int | None) -> None:
        """Copies what Redis answered, unless anything changed since ``reading()``."""
        if since is None or not self.live:
            return
        self._read_messages()  # a message already here may be about these keys
        if since < self._everything_changed:
            return
        changed = self._changed
        for key in keys:
            if changed.get(key, -1) > since:
                return
        expires_at = time.monotonic() + self.max_age_seconds
        entries = self._entries
        for key, value in zip(keys, values, strict=True):
            if key.startswith(self.prefixes):
                entries.pop(key, None)  # to the end of the order: the oldest leave first
                entries[key] = (value, expires_at)
        while len(entries) > self.max_entries:
            del entries[next(iter(entries))]

    def forget(self, keys: list[str]) -> None:
        """This worker wrote these keys: drop its copies now (Redis's message comes later)."""
        for key in keys:
            self._changed_key(key)

    def _changed_key(self, key: str) -> None:
        self._generation += 1
        self._entries.pop(key, None)
        changed = self._changed
        changed[key] = self._generation
        if len(changed) > 4 * self.max_entries:
            # Bounded: reads in flight now keep nothing, and the history starts again.
            self._everything_changed = self._generation
            changed.clear()

    def _changed_everything(self) -> None:
        self._generation += 1
        self._everything_changed = self._generation
        self._changed.clear()
        self._entries.clear()

    @property
    def entries(self) -> int:
        return len(self._entries)

    # --- the connection ---------------------------------------------------------------------

    def start(self) -> None:
        """Connects in the background: until subscribed, every read goes to Redis."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._maintain(), name="near-cache")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._disconnect()
        self.live = False
        self._entries.clear()

    async def _maintain(self) -> None:
        reported_down = False
        while True:
            try:
                await self._connect()
            except (OSError, TimeoutError, hiredis.ProtocolError) as error:
                if not reported_down:
                    log.warning("near_cache_unavailable", error=f"{type(error).__name__}: {error}")
                    reported_down = True
                # A server that refuses tracking (an old Redis, a look-alike, an ACL without
                # CLIENT or SUBSCRIBE) will not change its mind soon: ask again in a minute,
                # not every heartbeat.
                refused = isinstance(error, TrackingRefusedError)
                await asyncio.sleep(REFUSED_RETRY_SECONDS if refused else self.heartbeat_seconds)
                continue
            if reported_down:
                log.info("near_cache_connected")
                reported_down = False
            await self._heartbeat()
            reported_down = True  # _lost() logged why
            await asyncio.sleep(self.heartbeat_seconds)

    async def _heartbeat(self) -> None:
        while self.live:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_seconds):
                    await self._lost_event.wait()
            if not self.live:
                return
            self._read_messages()
            if not self.live:  # reading found the connection closed: _lost() ran
                return
            if self._pong_due:
                self._lost(f"no answer to PING within {self.heartbeat_seconds} s")
                return
            self._pong_due = True
            try:
                assert self._socket is not None
                self._socket.send(_PING)
            except OSError as error:
                self._lost(f"{type(error).__name__}: {error}")

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self._path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = self._path
        else:
            family, kind, protocol, _, address = (
                await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            )[0]
            sock = socket.socket(family, kind, protocol)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        reader = hiredis.Reader(encoding="utf-8", errors="replace")
        try:
            async with asyncio.timeout(self.connect_timeout_seconds):
                await loop.sock_connect(sock, address)
                hello = b""
                if self._password is not None:
                    credentials = (
                        (self._username, self._password) if self._username else (self._password,)
                    )
                    hello += _command("AUTH", *credentials)
                await loop.sock_sendall(sock, hello + _command("CLIENT", "ID"))
                replies = await _replies(loop, sock, reader, 2 if hello else 1)
                tracking: list[str] = ["CLIENT", "TRACKING", "ON", "REDIRECT", str(replies[-1])]
                tracking.append("BCAST")
                for prefix in self.prefixes:
                    tracking += ["PREFIX", prefix]
                subscribe = ("SUBSCRIBE", INVALIDATION_CHANNEL)
                await loop.sock_sendall(sock, _command(*tracking) + _command(*subscribe))
                await _replies(loop, sock, reader, 2)
        except BaseException:
            sock.close()
            raise
        # Whatever was copied before may have changed unreported: start empty.
        self._changed_everything()
        self._socket, self._reader = sock, reader
        self._pong_due = False
        self._lost_event.clear()
        loop.add_reader(sock.fileno(), self._read_messages)
        self.live = True

    def _read_messages(self) -> None:
        sock = self._socket
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                return
            except OSError as error:
                self._lost(f"{type(error).__name__}: {error}")
                return
            if not data:
                self._lost("closed by Redis")
                return
            self._reader.feed(data)
            try:
                self._apply_messages()
            except hiredis.ProtocolError as error:
                self._lost(f"ProtocolError: {error}")
                return
            if len(data) < _READ_SIZE:
                return

    def _apply_messages(self) -> None:
        while (reply := self._reader.gets()) is not False:
            if not isinstance(reply, list) or not reply:
                continue
            if reply[0] == "message" and reply[1] == INVALIDATION_CHANNEL:
                self.invalidations += 1
                keys = reply[2]
                if keys is None:  # FLUSHDB, FLUSHALL: everything
                    self._changed_everything()
                else:
                    for key in keys:
                        self._changed_key(key)
            elif reply[0] == "pong":
                self._pong_due = False

    def _lost(self, reason: str) -> None:
        was_live = self.live
        self.live = False
        self._disconnect()
        self._changed_everything()
        self.resets += 1
        self._lost_event.set()
        if was_live:
            log.warning("near_cache_lost", reason=reason)

    def _disconnect(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()


async def _replies(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, reader: hiredis.Reader, count: int
) -> list[Any]:
    replies: list[Any] = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is False:
            data = await loop.sock_recv(sock, _READ_SIZE)
            if not data:
                raise ConnectionError("Redis closed the connection")
            reader.feed(data)
        elif isinstance(reply, hiredis.ReplyError):
            raise TrackingRefusedError(f"Redis refused: {reply}")
        else:
            replies.append(reply)
    return replies
