"""Loki's checks of a decoded push, as its distributor makes them (pure).

Owns label parsing with Loki's messages (and the ``service_name`` its discovery adds
before it validates), the per-stream label checks (``validator.go``
``ValidateLabels``), the per-entry line-size and timestamp checks (``ValidateEntry``)
and Loki's grouped error text. What passes becomes ``StreamBatch``es; what does not is
counted by Loki's discard reason and answered with its message. Decoding is
``pushrequest``; the server is ``receiver``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from minilog.errors import LabelError, RequestRefused
from minilog.labels import (
    SERVICE_NAME,
    TENANT_LABEL,
    format_pairs,
    is_valid_label_name,
    parse_label_pairs,
)
from minilog.model import LogEntry, StreamBatch

__all__ = [
    "DEFAULT_CREATION_GRACE_PERIOD",
    "DEFAULT_MAX_LINE_SIZE",
    "DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE",
    "DISCOVER_SERVICE_NAME",
    "UNKNOWN_SERVICE",
    "Checked",
    "EntryLimits",
    "LabelLimits",
    "Validator",
    "check_entries",
    "grouped",
    "with_service_name",
]

#: Loki's ``limits_config.max_line_size`` default (256 KB; 0 means no limit).
DEFAULT_MAX_LINE_SIZE = 256 << 10
#: Loki's ``reject_old_samples_max_age`` (7 days) and ``creation_grace_period``
#: (10 minutes) defaults, in seconds.
DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_CREATION_GRACE_PERIOD = 600.0

#: The value of ``service_name`` when no label of ``DISCOVER_SERVICE_NAME`` (Loki's
#: ``discover_service_name`` default, in order of preference) has one.
UNKNOWN_SERVICE = "unknown_service"
DISCOVER_SERVICE_NAME = (
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
)

_NS = 1_000_000_000
_LABEL_CACHE_MAX = 4096
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class EntryLimits:
    """Loki's per-entry limits (``limits_config``), applied before anything is queued.

    ``max_line_size`` (bytes, 0 = none) always applies. The timestamp checks apply
    only with ``check_timestamps`` (``loki.source.api`` turns it on with
    ``use_incoming_timestamp``): an entry older than ``reject_old_samples_max_age_s``
    (when ``reject_old_samples``) or newer than now plus ``creation_grace_period_s``
    is refused as Loki refuses it. Refused entries are dropped, counted by Loki's
    reason and reported in a 400 with Loki's grouped messages; the others go on.
    """

    max_line_size: int = DEFAULT_MAX_LINE_SIZE
    check_timestamps: bool = False
    reject_old_samples: bool = True
    reject_old_samples_max_age_s: float = DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE
    creation_grace_period_s: float = DEFAULT_CREATION_GRACE_PERIOD

    def __post_init__(self) -> None:
        if self.max_line_size < 0:
            raise ValueError("max_line_size must not be negative")


def _go_rfc3339(ns: int) -> str:
    """Go's ``time.RFC3339`` of a Unix-nanosecond time in UTC (whole seconds)."""
    t = _EPOCH + timedelta(seconds=ns // _NS)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}"
        f"T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"
    )


def _line_bytes(line: str) -> int:
    try:
        return len(line.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        # A lone surrogate (from JSON): Go writes U+FFFD, three bytes, in its place.
        return len(line.encode("utf-8", "surrogatepass"))


def check_entries(
    entries: list[LogEntry],
    canonical: str,
    limits: EntryLimits,
    now_ns: int,
    errors: list[str],
    discarded: Counter[str],
) -> list[LogEntry]:
    """The entries Loki's ``ValidateEntry`` keeps; an error per refused one."""
    max_line = limits.max_line_size
    oldest = -(1 << 80)
    newest = 1 << 80
    if limits.check_timestamps:
        if limits.reject_old_samples:
            oldest = now_ns - int(limits.reject_old_samples_max_age_s * _NS)
        newest = now_ns + int(limits.creation_grace_period_s * _NS)
    # The common case in one pass of builtins: every line short, every stamp in range.
    # A str of n characters holds at most 4n UTF-8 bytes.
    lines_fine = not max_line or max(len(e.line) for e in entries) * 4 <= max_line
    if lines_fine and (
        not limits.check_timestamps
        or (
            min(e.timestamp_ns for e in entries) >= oldest
            and max(e.timestamp_ns for e in entries) <= newest
        )
    ):
        return entries
    kept = []
    for entry in entries:
        ts = entry.timestamp_ns
        if ts < oldest:
            discarded["greater_than_max_sample_age"] += 1
            errors.append(
                f"entry for stream '{canonical}' has timestamp too old: "
                f"{_go_rfc3339(ts)}, oldest acceptable timestamp is: "
                f"{_go_rfc3339(oldest)}"
            )
        elif ts > newest:
            discarded["too_far_in_future"] += 1
            errors.append(
                f"entry for stream '{canonical}' has timestamp too new: "
                f"{_go_rfc3339(ts)}"
            )
        elif (
            max_line
            and len(entry.line) * 4 > max_line
            and ((size := _line_bytes(entry.line)) > max_line)
        ):
            discarded["line_too_long"] += 1
            errors.append(
                f"max entry size '{max_line}' bytes exceeded for stream "
                f"'{canonical}' while adding an entry with length '{size}' bytes"
            )
        else:
            kept.append(entry)
    return kept


_INTERNAL_STREAM_LABELS = ("__aggregated_metric__", "__pattern__")


def with_service_name(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The labels as a default Loki names the stream in its messages: with the
    ``service_name`` its discovery adds before validating (``ParseLokiRequest``), from
    the first of ``DISCOVER_SERVICE_NAME`` with a value, else ``unknown_service``.
    Only the messages show it; the labels handed on stay as pushed, as Alloy forwards
    them."""
    names: dict[str, str] = {}
    for name, value in pairs:
        names.setdefault(name, value)  # Loki's Labels.Get: the first one
    if SERVICE_NAME in names or any(k in names for k in _INTERNAL_STREAM_LABELS):
        return pairs
    service = next(
        (names[k] for k in DISCOVER_SERVICE_NAME if names.get(k)), UNKNOWN_SERVICE
    )
    return sorted([*pairs, (SERVICE_NAME, service)], key=lambda pair: pair[0])


def grouped(errors: list[str]) -> str:
    """Loki's ``util.GroupedErrors``: duplicates collapsed, counted, joined by '; '."""
    counts = Counter(errors)
    many = len(counts) > 1
    return "; ".join(
        f"{n} errors like: {message}" if many or n > 1 else message
        for message, n in counts.items()
    )


@dataclass
class LabelLimits:
    max_label_names_per_series: int = 15
    max_label_name_length: int = 1024
    max_label_value_length: int = 2048


@dataclass
class Checked:
    """A request after validation: what goes on, and what was refused and why."""

    batches: list[StreamBatch]
    accepted: int
    errors: list[str]
    discarded: Counter[str]


class Validator:
    """Loki's checks with one receiver's limits; label sets are parsed once (cached).

    ``entry_limits`` may be replaced while the receiver runs.
    """

    def __init__(self, label_limits: LabelLimits, entry_limits: EntryLimits) -> None:
        self.label_limits = label_limits
        self.entry_limits = entry_limits
        self._cache: dict[str, tuple[list[tuple[str, str]], str]] = {}

    def labels(self, text: str) -> tuple[list[tuple[str, str]], str]:
        """Parsed, sorted, non-empty label pairs, and the text Loki's messages show
        for them (cached)."""
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        try:
            pairs = parse_label_pairs(text)
        except LabelError as exc:
            raise RequestRefused(400, f"couldn't parse labels: {exc}") from exc
        # Loki's label builder drops empty values; Labels are kept sorted by name.
        pairs = sorted((name, value) for name, value in pairs if value)
        result = (pairs, format_pairs(with_service_name(pairs)))
        if len(self._cache) >= _LABEL_CACHE_MAX:
            self._cache.clear()
        self._cache[text] = result
        return result

    def stream_error(
        self, pairs: list[tuple[str, str]], canonical: str
    ) -> tuple[str, str] | None:
        """Loki's per-stream label validation (``validator.go`` ``ValidateLabels``):
        ``(reason, message)`` for a refused stream."""
        limits = self.label_limits
        count = len(pairs) - any(name == SERVICE_NAME for name, _ in pairs)
        if count > limits.max_label_names_per_series:
            return "max_label_names_per_series", (
                f"entry for stream '{canonical}' has {count} label names; "
                f"limit {limits.max_label_names_per_series}"
            )
        last = None
        for name, value in pairs:
            if len(name.encode()) > limits.max_label_name_length:
                return "label_name_too_long", (
                    f"stream '{canonical}' has label name too long: '{name}'"
                )
            if (
                len(value.encode("utf-8", "surrogateescape"))
                > limits.max_label_value_length
            ):
                return "label_value_too_long", (
                    f"stream '{canonical}' has label value too long: '{value}'"
                )
            if name == last:
                return "duplicate_label_names", (
                    f"stream '{canonical}' has duplicate label name: '{name}'"
                )
            if not is_valid_label_name(name) and name != "__name__":
                return "invalid_labels", (
                    f"stream '{canonical}' has invalid label name: '{name}'"
                )
            last = name
        return None

    def check(
        self,
        streams: list[tuple[str, list[LogEntry]]] | None,
        counts: list[tuple[str, int]] | None,
        tenant: str,
    ) -> Checked:
        """Loki's checks in its order: label syntax (fails the request), then per
        stream the labels, then per entry the timestamps and line size."""
        items: Iterable[tuple[str, int, list[LogEntry] | None]]
        if streams is not None:
            items = [(text, len(entries), entries) for text, entries in streams]
        else:
            items = [(text, n, None) for text, n in counts or ()]
        if not items:
            raise RequestRefused(
                422, "error at least one valid stream is required for ingestion"
            )
        # Every label string is parsed first: a syntax error fails the whole request.
        parsed = [self.labels(text) for text, _, _ in items]
        limits = self.entry_limits
        now_ns = time.time_ns()
        checked = Checked([], 0, [], Counter())
        for (pairs, canonical), (_, n, entries) in zip(parsed, items, strict=True):
            if n == 0:
                continue
            error = self.stream_error(pairs, canonical)
            if error is not None:
                checked.discarded[error[0]] += n
                checked.errors.append(error[1])
                continue
            if entries is not None:
                entries = check_entries(
                    entries,
                    canonical,
                    limits,
                    now_ns,
                    checked.errors,
                    checked.discarded,
                )
                n = len(entries)
                if not n:
                    continue
                # Alloy's loki.source.api drops incoming internal labels, then adds the
                # tenant from the header.
                labels = {k: v for k, v in pairs if not k.startswith("__")}
                if tenant:
                    labels[TENANT_LABEL] = tenant
                checked.batches.append(StreamBatch(labels, entries))
            checked.accepted += n
        return checked
