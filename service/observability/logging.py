"""Structured logging: every line, ours or a library's, is one JSON object (or readable console
output in development) with timestamp, level, logger, event, and the request/trace IDs when
inside a request. Secrets are redacted by key before anything is rendered.

structlog's own loggers take a fast path (orjson straight to bytes on stdout); records from the
standard library (uvicorn, gunicorn, SQLAlchemy, alembic...) go through the same processors via
ProcessorFormatter, so both look the same. The access line, written once per request, takes a
faster one still (``write_access_line``).
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import orjson
import structlog
from opentelemetry import trace
from structlog.types import EventDict, Processor, WrappedLogger

SENSITIVE_KEYS = frozenset(
    {
        "password",
        "current_password",
        "new_password",
        "hashed_password",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "cookie",
        "set-cookie",
        "secret",
        "jwt_secret",
        "api_key",
        "x-api-key",
        "client_secret",
    }
)
REDACTED = "[redacted]"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@", re.I)
# Also URL-encoded ("Bearer%20..."), as a URL with a pasted token shows up in client logs.
_BEARER = re.compile(r"(Bearer(?:\s|%20)+)[A-Za-z0-9._~+/=-]+", re.I)
# An API key pasted into a message (service/auth/security.py): its public id stays readable.
_API_KEY = re.compile(r"(gh_[0-9a-f]{16}_)[A-Za-z0-9_-]+")


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in SENSITIVE_KEYS:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", item) for item in value]
    return value


def redact_text(text: str) -> str:
    """``text`` with passwords in URLs, bearer tokens and API keys' secrets masked."""
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:" + REDACTED + "@", text)
    if "earer" in text:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    if "gh_" in text:
        text = _API_KEY.sub(r"\1" + REDACTED, text)
    return text


def may_hold_a_secret(text: str) -> bool:
    return "://" in text or "earer" in text or "gh_" in text


def _redacted(key: str, value: Any, names_a_secret: bool) -> Any:
    """What a line shows of ``value`` under ``key`` (``names_a_secret``: the key is in
    SENSITIVE_KEYS, which callers may have worked out once). The one rule of redact_secrets
    and redacted_log_context; plain values, most of them, take a fast path."""
    if names_a_secret:
        return REDACTED
    kind = type(value)
    if kind is str:
        return redact_text(value) if may_hold_a_secret(value) else value
    if kind is int or kind is float or value is None:
        return value
    return _redact_value(key, value)


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Masks values whose key names a secret, and passwords inside URLs, at any depth."""
    for key, value in event_dict.items():
        redacted = _redacted(key, value, key.lower() in SENSITIVE_KEYS)
        if redacted is not value:
            event_dict[key] = redacted
    return event_dict


def _set_trace_ids(event_dict: EventDict, context: trace.SpanContext | None) -> None:
    """trace_id/span_id as exported (hex), so a log line finds its trace."""
    if context is not None and context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The current span's IDs; a line that brings its own keeps them (the access line, written
    once its span has ended)."""
    if "trace_id" not in event_dict:
        _set_trace_ids(event_dict, trace.get_current_span().get_span_context())
    return event_dict


def drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """uvicorn attaches an ANSI-coloured copy of each message; JSON lines do not want it."""
    event_dict.pop("color_message", None)
    return event_dict


class _UtcTimestamper:
    """Adds ``timestamp``: ISO 8601 in UTC with microseconds ("2026-11-25T01:26:06.814530Z"), as
    structlog's TimeStamper(fmt="iso", utc=True) writes it, but with the date and time of day
    formatted once a second instead of on every line, where it was a quarter of the line's cost.

    Between two seconds a line costs one clock read, two comparisons and one %-format: the
    float clock and "%06d" instead of time_ns() and an f-string's format spec, which is parsed
    on every call. A double holds today's time to a quarter of a microsecond."""

    def __init__(self) -> None:
        # One tuple, replaced whole: a thread never sees one second's prefix with another's.
        self._second: tuple[float, float, str] = (0.0, 0.0, "")  # start, end, formatted

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        start, end, prefix = self._second
        if not start <= now < end:  # a new second (or the clock was set back)
            second = int(now)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            start, end = float(second), float(second + 1)
            self._second = (start, end, prefix)
        # %d truncates the float: the microseconds elapsed in this second, 0 to 999999.
        event_dict["timestamp"] = "%s.%06dZ" % (prefix, (now - start) * 1_000_000)  # noqa: UP031
        return event_dict


_add_timestamp = _UtcTimestamper()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        add_trace_context,
        _add_timestamp,
        redact_secrets,
    ]


def _json_dumps_str(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _json_dumps_bytes(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


class _JsonOutput:
    """The one writer of JSON lines, as configure_logging set it up: structlog's loggers, the
    standard library's handler and the access line all write through it, in order.

    Access lines may wait: a write to a file or pipe per request is a system call the worker
    pays under load, and with PYTHONUNBUFFERED=1, as in the image, every write to stdout is one
    system call. So they are kept here and written together every ``flush_seconds``, at
    shutdown, and before any other line (the order holds). nginx's ``access_log ... buffer=
    flush=`` makes the same trade: a worker killed with SIGKILL loses at most that much of its
    access log."""

    def __init__(self, stream: TextIO, level: int, flush_seconds: float) -> None:
        self._bytes = stream.buffer
        self.level = level
        self.flush_seconds = flush_seconds
        self._waiting: list[bytes] = []
        # Lines also come from other threads (the span exporter's warnings).
        self._lock = threading.Lock()
        self._flush_timer: asyncio.TimerHandle | None = None

    def write(self, data: bytes) -> None:
        """Writes now, after whatever access lines are waiting."""
        with self._lock:
            if self._waiting:
                self._waiting.append(data)
                data = b"".join(self._waiting)
                self._waiting.clear()
            self._bytes.write(data)
            self._bytes.flush()

    def write_later(self, line: bytes) -> None:
        if self.flush_seconds <= 0:
            self.write(line)
            return
        with self._lock:
            self._waiting.append(line)
        if self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not in the event loop: nothing would flush it later
                self.flush()
                return
            self._flush_timer = loop.call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        with self._lock:
            if self._waiting:
                self._bytes.write(b"".join(self._waiting))
                self._waiting.clear()
            self._bytes.flush()


class _BinaryFile:
    """What structlog's BytesLogger writes to: the output (its flush() has nothing to do)."""

    def __init__(self, output: _JsonOutput) -> None:
        self.write = output.write

    def flush(self) -> None:
        pass


class _TextFile:
    """What the standard library's StreamHandler writes to: the output, encoded."""

    def __init__(self, output: _JsonOutput) -> None:
        self._output = output

    def write(self, text: str) -> None:
        self._output.write(text.encode())

    def flush(self) -> None:
        pass


class _NamedBytesLoggerFactory:
    """Like structlog.BytesLoggerFactory, but keeps the name given to get_logger(__name__)."""

    def __init__(self, file: _BinaryFile) -> None:
        self._file = file

    def __call__(self, *args: Any) -> structlog.BytesLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return structlog.BytesLogger(self._file, name=name)  # type: ignore[arg-type]


class _NamedWriteLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> structlog.WriteLogger:
        logger = structlog.WriteLogger(self._stream)
        logger.name = args[0] if args and isinstance(args[0], str) else None  # type: ignore[attr-defined]
        return logger


_json_output: _JsonOutput | None = None
_access_logger = structlog.get_logger("glasshouse.access")


def redacted_log_context() -> dict[str, Any]:
    """What is bound with structlog.contextvars.bind_contextvars, redacted as every other line
    is: the access line's share of the request context."""
    context = structlog.contextvars.get_contextvars()
    redact_secrets(None, "", context)  # in place
    return context


def log_context_setter(key: str) -> Callable[[Any], object]:
    """Sets one key of the log context: bind_contextvars(key=value), for a key bound on every
    request."""

    def set_value(value: Any) -> object:
        return structlog.contextvars.bind_contextvars(**{key: value})

    return set_value


def clear_log_context() -> None:
    """Unbinds everything bound with bind_contextvars (when a request ends)."""
    structlog.contextvars.clear_contextvars()


_ACCESS_INFO = {"event": "request", "level": "info", "logger": "glasshouse.access"}
_ACCESS_ERROR = {"event": "request", "level": "error", "logger": "glasshouse.access"}


def write_access_line(
    fields: dict[str, Any], *, failed: bool, span_context: trace.SpanContext | None
) -> None:
    """The one canonical line per request. With JSON logs it is rendered here, with the same
    fields the processor chain adds (request context, level, logger, trace IDs, timestamp,
    redaction), in a quarter of the time the chain took on every request (docs/performance.md).
    ``span_context``: the request's, whose IDs the line carries (its span has ended by now);
    None when the request has no trace."""
    output = _json_output
    if output is not None and (logging.ERROR if failed else logging.INFO) < output.level:
        return
    _set_trace_ids(fields, span_context)
    if output is None:
        (_access_logger.error if failed else _access_logger.info)("request", **fields)
        return
    # Redaction where a secret could come from: what code bound to the request's context,
    # and the path the client sent. The other fields are numbers and names this service made.
    line = redacted_log_context()
    path = fields.get("path")
    if isinstance(path, str) and may_hold_a_secret(path):
        fields["path"] = redact_text(path)
    line.update(fields)  # as merge_contextvars: the line's own fields win over the context
    line.update(_ACCESS_ERROR if failed else _ACCESS_INFO)
    _add_timestamp(None, "", line)
    # Not orjson's OPT_APPEND_NEWLINE: it returns each line in a 4 KiB allocation, kept while
    # the line waits in the buffer (thousands a second under load), which made every request
    # measurably slower (bench/HISTORY.md).
    output.write_later(orjson.dumps(line, default=str) + b"\n")


def flush_logs() -> None:
    """Writes out buffered access lines (at shutdown)."""
    if _json_output is not None:
        _json_output.flush()


def reset_logging() -> None:
    """Back to structlog's defaults (tests that configured logging to a stream they close)."""
    global _json_output
    _json_output = None
    structlog.reset_defaults()


def configure_logging(
    *,
    json: bool,
    level: str = "INFO",
    stream: TextIO | None = None,
    cache_loggers: bool = True,
    access_flush_seconds: float = 0.0,
) -> None:
    """Configures structlog and the standard library's root logger. Idempotent.

    ``cache_loggers=False`` lets a later configure_logging (tests) reach loggers already used.
    ``access_flush_seconds``: how long JSON access lines may wait in the buffer (0: none).
    """
    global _json_output
    stream = stream or sys.stdout
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    if _json_output is not None:
        _json_output.flush()
    _json_output = _JsonOutput(stream, numeric_level, access_flush_seconds) if json else None
    exception_renderer: Processor = (
        structlog.processors.dict_tracebacks if json else structlog.dev.set_exc_info
    )
    renderer: Processor
    stdlib_stream: Any = stream
    if _json_output is not None:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps_bytes)
        logger_factory: Any = _NamedBytesLoggerFactory(_BinaryFile(_json_output))
        stdlib_stream = _TextFile(_json_output)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        logger_factory = _NamedWriteLoggerFactory(stream)
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            exception_renderer,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=cache_loggers,
    )
    logging.config.dictConfig(stdlib_logging_config(json=json, level=level, stream=stdlib_stream))


def stdlib_formatter(json: bool = True) -> structlog.stdlib.ProcessorFormatter:
    """The formatter for standard-library records (also used by gunicorn's logconfig_dict)."""
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        final += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=_json_dumps_str),
        ]
    else:
        final += [structlog.dev.ConsoleRenderer()]
    return structlog.stdlib.ProcessorFormatter(
        # Extras first, so that redaction sees them too.
        foreign_pre_chain=[
            structlog.stdlib.ExtraAdder(),
            drop_color_message,
            *_shared_processors(),
        ],
        processors=final,
    )


def stdlib_logging_config(
    *, json: bool, level: str, stream: TextIO | None = None
) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {"()": stdlib_formatter, "json": json},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "structured",
                "stream": stream or sys.stdout,
            },
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # Their own handler, not propagating: gunicorn's uvicorn worker copies the handlers
            # of gunicorn.error onto uvicorn.error and stops its propagation.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": ["default"], "propagate": False},
            # The canonical access line is ours; uvicorn's own would be a second line.
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
            "gunicorn.error": {"handlers": ["default"], "propagate": False},
            "gunicorn.access": {"handlers": [], "propagate": False},
            "sqlalchemy.engine": {"level": "WARNING"},
            # Alembic announces each plugin it loads at INFO; migrations still log at INFO.
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }
