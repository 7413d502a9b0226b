"""minilog's own logs, configured the way Alloy's ``logging`` block configures Alloy's.

Owns the logfmt and JSON formatters (``ts=... level=info msg="..." component_id=...``),
the mapping of Alloy level names onto the stdlib's, the flood guard (a warning or error
with one message template is written once per interval, the rest counted), and
installing one handler on the root logger (with ``redact.RedactingFilter``, so no
configured secret is logged). Only the CLI calls :func:`configure_logging`; the library
never touches logging configuration.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from minilog.redact import RedactingFilter

__all__ = [
    "DEFAULT_REPEAT_INTERVAL",
    "FORMATS",
    "LEVELS",
    "JsonFormatter",
    "LogfmtFormatter",
    "RepeatLimitedHandler",
    "RepeatLimiter",
    "component_logger",
    "configure_logging",
]

#: Alloy's level names -> stdlib levels.
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("logfmt", "json")

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _timestamp(created: float) -> str:
    # RFC 3339 with nanosecond digits in UTC, as Go's time.RFC3339Nano prints them.
    secs = int(created)
    nanos = round((created - secs) * 1e9)
    if nanos >= 1_000_000_000:
        secs, nanos = secs + 1, nanos - 1_000_000_000
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    frac = f"{nanos:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def _fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = [
        ("ts", _timestamp(record.created)),
        ("level", _LEVEL_NAMES.get(record.levelno, record.levelname.lower())),
        ("msg", record.getMessage()),
    ]
    fields.extend(
        (k, v) for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS
    )
    if record.exc_info and record.exc_info[1] is not None:
        fields.append(
            ("err", str(record.exc_info[1]) or type(record.exc_info[1]).__name__)
        )
    return fields


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' ="\\\n\t\r') and text.isprintable():
        return text
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """Alloy-style logfmt: ``ts=... level=info msg="started" component_id=...``."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same fields as the logfmt formatter."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(dict(_fields(record)), default=str).decode()


#: Seconds during which further warnings and errors with one message template are
#: counted instead of written.
DEFAULT_REPEAT_INTERVAL = 10.0
# Templates tracked at once; the oldest is dropped (its count written) past this.
_MAX_TEMPLATES = 1024


@dataclass(slots=True)
class _Window:
    ends: float
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RepeatLimiter:
    """Which records of a flood to write: the first of each key per interval.

    Pure (``clock`` injected). :meth:`admit` answers for a record: ``None`` to
    suppress it, else how many similar records were suppressed before it (to be
    reported on it). :meth:`due` yields the last suppressed record of every key whose
    interval ended without a successor, with its count, so no count is lost.
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_REPEAT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = _MAX_TEMPLATES,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        # Insertion order is window order: every window has the same length.
        self._windows: dict[Hashable, _Window] = {}

    def admit(self, key: Hashable, record: logging.LogRecord) -> int | None:
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now < window.ends:
            window.suppressed += 1
            window.last = record
            return None
        reported = window.suppressed if window is not None else 0
        self._windows.pop(key, None)
        self._windows[key] = _Window(now + self.interval_s)
        return reported

    def due(self) -> Iterator[tuple[logging.LogRecord, int]]:
        now = self._clock()
        windows = self._windows
        while windows:
            key, window = next(iter(windows.items()))
            if window.ends > now and len(windows) <= self._max_keys:
                return
            del windows[key]
            if window.last is not None:
                yield window.last, window.suppressed

    def drain(self) -> Iterator[tuple[logging.LogRecord, int]]:
        """Every pending count, whatever the time (at shutdown)."""
        windows, self._windows = self._windows, {}
        for window in windows.values():
            if window.last is not None:
                yield window.last, window.suppressed


def _template_key(record: logging.LogRecord) -> Hashable:
    template = record.msg if isinstance(record.msg, str) else type(record.msg)
    return (
        record.name,
        record.levelno,
        template,
        getattr(record, "component_id", None),
    )


def _with_count(record: logging.LogRecord, suppressed: int) -> logging.LogRecord:
    out = logging.makeLogRecord(record.__dict__)
    out.msg = f"{record.getMessage()} ({suppressed} similar suppressed)"
    out.args = None
    return out


class RepeatLimitedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes a warning or error at most once per interval per
    message template (logger, level, unformatted message, component), and the count
    of the others on the next one written: ``... (N similar suppressed)``.

    Info and debug records always pass: ``loki.echo`` writes every entry at info.
    A flood (say a failing ``accept()`` per connection) thus costs a line per
    interval instead of filling the disk.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = DEFAULT_REPEAT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream)
        self.limiter = RepeatLimiter(interval_s, clock=clock)

    def emit(self, record: logging.LogRecord) -> None:
        reported = 0
        if record.levelno >= logging.WARNING:
            verdict = self.limiter.admit(_template_key(record), record)
            if verdict is None:
                return
            reported = verdict
        for last, suppressed in self.limiter.due():
            super().emit(_with_count(last, suppressed))
        super().emit(_with_count(record, reported) if reported else record)

    def close(self) -> None:
        # At exit (logging.shutdown): the counts of floods no later record reported.
        try:
            self.acquire()
            try:
                for last, suppressed in self.limiter.drain():
                    super().emit(_with_count(last, suppressed))
            finally:
                self.release()
        finally:
            super().close()


_installed: logging.Handler | None = None


def configure_logging(
    level: str = "info", format: str = "logfmt", *, stream: TextIO | None = None
) -> None:
    """Install (or reconfigure, on reload) minilog's one handler on the root logger.

    Raises:
        ValueError: ``level`` or ``format`` is not one Alloy accepts.
    """
    global _installed
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; supported: {', '.join(LEVELS)}")
    if format not in FORMATS:
        raise ValueError(
            f"unknown log format {format!r}; supported: {', '.join(FORMATS)}"
        )
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = RepeatLimitedHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(LogfmtFormatter() if format == "logfmt" else JsonFormatter())
    # No configured secret (a URL's password, a token) may reach a log line.
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    _installed = handler


class _ComponentAdapter(logging.LoggerAdapter[logging.Logger]):
    # The stdlib adapter (before 3.13) replaces a call's ``extra``; merge it instead.
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def component_logger(component_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records carry ``component_id``, like Alloy's component loggers."""
    return _ComponentAdapter(
        logging.getLogger(f"minilog.component.{component_id}"),
        {"component_path": "/", "component_id": component_id},
    )
