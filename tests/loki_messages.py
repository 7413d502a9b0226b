"""Loki 3.6's refusal messages, built from its own formats, for tests.

``pkg/validation/validate.go`` (the messages), ``pkg/ingester/stream.go``
(``errorForFailedEntries``), ``pkg/ingester/instance.go`` (the stream limit) and
``pkg/util/errors.go`` (``GroupedErrors``). Bodies end with the newline Go's
``http.Error`` adds.
"""

from __future__ import annotations

import datetime

__all__ = [
    "go_time",
    "line_too_long",
    "rate_limited_line",
    "stream_limit",
    "too_far_behind_line",
    "too_old",
    "trailer",
]


def line_too_long(labels: str, length: int, limit: int = 262144) -> str:
    return (
        f"max entry size '{limit}' bytes exceeded for stream '{labels}' while adding "
        f"an entry with length '{length}' bytes"
    )


def too_old(labels: str) -> str:
    return (
        f"entry for stream '{labels}' has timestamp too old: 2020-01-01T00:00:00Z, "
        "oldest acceptable timestamp is: 2026-01-01T00:00:00Z"
    )


def stream_limit(labels: str, tenant: str = "fake") -> str:
    return (
        "maximum active stream limit exceeded when trying to create stream "
        f"{labels}, reduce the number of active streams (reduce labels or reduce "
        "label values), or contact your Loki administrator to see if the limit can "
        f"be increased, user: '{tenant}'\n"
    )


def go_time(ns: int) -> str:
    """Go's ``time.Time.String()`` of ``time.Unix(0, ns).UTC()``."""
    when = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return (
        when.strftime("%Y-%m-%d %H:%M:%S")
        + (f".{frac}" if frac else "")
        + (" +0000 UTC")
    )


def rate_limited_line(ns: int, labels: str) -> str:
    return (
        f"entry with timestamp {go_time(ns)} ignored, reason: 'Per stream rate limit "
        f"exceeded (limit: 1KB/sec) while attempting to ingest for stream '{labels}' "
        "totaling 600B, consider splitting a stream via additional labels or contact "
        "your Loki administrator to see if the limit can be increased',"
    )


def too_far_behind_line(ns: int) -> str:
    return (
        f"entry with timestamp {go_time(ns)} ignored, reason: 'entry too far behind, "
        "entry timestamp is: 2026-01-01T00:00:00Z, oldest acceptable timestamp is: "
        "2026-01-01T01:00:00Z',"
    )


def trailer(ignored: int, total: int, labels: str, tenant: str = "fake") -> str:
    return (
        f"user '{tenant}', total ignored: {ignored} out of {total} for stream: {labels}"
    )
