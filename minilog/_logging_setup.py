"""minilog's own logs, configured the way Alloy's ``logging`` block configures Alloy's.

Owns the logfmt and JSON formatters (``ts=... level=info msg="..." component_id=...``),
the mapping of Alloy level names onto the stdlib's, and installing one handler on the
root logger (with ``redact.RedactingFilter``, so no configured secret is logged).
Only the CLI calls :func:`configure_logging`; the library never touches logging
configuration.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

from minilog.redact import RedactingFilter

__all__ = [
    "FORMATS",
    "LEVELS",
    "JsonFormatter",
    "LogfmtFormatter",
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
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
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
