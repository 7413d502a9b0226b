"""``loki.source.api``: an aiohttp server that accepts Loki push requests.

Owns the HTTP side of a push as Loki 3.6 answers it (content type and encoding, size
limit, tenant header, label parsing and validation, per-entry line-size and timestamp
checks, status codes and error bodies) and hands decoded streams to an async handler
before answering. Every request in flight is charged against one memory budget
before its body is read, and large bodies are decompressed and decoded on a worker
thread. Also the tests' and benchmarks' Loki stand-in: ``faults`` scripts 429/5xx
answers and hangs. Connection caps and read/write deadlines come from ``_httpguard``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from minilog._httpguard import ConnectionGuard, GuardedServer, ServerLimits
from minilog.errors import DecodeError, LabelError
from minilog.labels import (
    format_pairs,
    go_quote,
    is_valid_label_name,
    parse_label_pairs,
)
from minilog.loki.wire import (
    BodyTooLargeError,
    decode_push_request,
    decompress,
    scan_push_request,
    snappy_decoded_length,
)
from minilog.model import LogEntry, StreamBatch

__all__ = [
    "DEFAULT_CREATION_GRACE_PERIOD",
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_LINE_SIZE",
    "DEFAULT_MAX_RECV_MSG_SIZE",
    "DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE",
    "DISCOVER_SERVICE_NAME",
    "SERVICE_NAME",
    "TENANT_HEADER",
    "TENANT_LABEL",
    "UNKNOWN_SERVICE",
    "EntryLimits",
    "Faults",
    "PushHandler",
    "PushReceiver",
    "RequestLog",
]

#: Called with the decoded streams of one request; awaited before the 204.
PushHandler = Callable[[list[StreamBatch]], Awaitable[None]]

#: Loki's ``distributor.max_recv_msg_size`` default (100 MiB).
DEFAULT_MAX_RECV_MSG_SIZE = 100 << 20
#: Loki's ``limits_config.max_line_size`` default (256 KB; 0 means no limit).
DEFAULT_MAX_LINE_SIZE = 256 << 10
#: Loki's ``reject_old_samples_max_age`` (7 days) and ``creation_grace_period``
#: (10 minutes) defaults, in seconds.
DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_CREATION_GRACE_PERIOD = 600.0
#: Bytes the push requests in flight may hold together: bodies, their decompressed
#: form and the decoded entries until the handler took them (minilog's
#: ``max_inflight_push_requests_bytes``, named after Mimir's distributor limit).
DEFAULT_MAX_INFLIGHT_BYTES = 64 << 20

#: The label Loki 3 adds to every stream that lacks it, and its value when no label
#: of ``DISCOVER_SERVICE_NAME`` (Loki's ``discover_service_name`` default, in order of
#: preference) has one.
SERVICE_NAME = "service_name"
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

TENANT_HEADER = "X-Scope-OrgID"
TENANT_LABEL = "__tenant_id__"
# dskit tenant.ValidTenantID: letters, digits and eight symbols; at most 150 bytes.
_TENANT_OK = re.compile(r"[a-zA-Z0-9!\-_.*'()]*\Z")
_TENANT_MAX = 150
_NS = 1_000_000_000
_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)\Z",
    re.IGNORECASE,
)
_LABEL_CACHE_MAX = 4096
# A body past this is decompressed, decoded and checked on a worker thread: a 64 KiB
# snappy body can declare over a megabyte, tens of milliseconds of decoding.
_INLINE_DECODE_MAX = 64 << 10
# gzip and deflate inflate a thousandfold: past this, a body always goes to a thread.
_INLINE_INFLATE_MAX = 1 << 10
# Inflated in steps of this size, each charged to the budget before the next.
_INFLATE_STEP = 1 << 20
# Worker threads for decoding: the receiver's own, so pushes cannot take the shared
# default executor the writer encodes and the positions are saved on.
_DECODE_THREADS = 2
# What the decoded form of an entry costs beyond its line (LogEntry, str and int
# objects, the protobuf parser's arena), measured with RSS on CPython 3.11.
_ENTRY_OVERHEAD = 256
_log = logging.getLogger(__name__)
# jsonparser.ParseInt, which Loki reads JSON push timestamps with: "-" alone is 0.
_NS_DIGITS = re.compile(r"-|-?[0-9]+\Z")
# Loki decodes a JSON push with jsoniter, whose errors name the field that failed
# (then show the bytes around it, left out here), and each stream with jsonparser.
_STREAMS_PREFIX = "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: "
_JSON_PREFIX = _STREAMS_PREFIX + "unmarshalerDecoder: "
_MALFORMED_STRING = "Value is string, but can't find closing '\"' symbol"
_MALFORMED_OBJECT = "Value looks like object, but can't find closing '}' symbol"
_MALFORMED_VALUE = (
    "Value looks like Number/Boolean/None, but can't find its end: ',' or '}' symbol"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A request body as read: filled in place when its length is known.
_Body = bytes | bytearray


class _HTTPError(Exception):
    """An error answer: Go ``http.Error`` style, the message plus a newline.

    ``close`` ends the connection after the answer: the body was not read.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers

    def response(self) -> web.Response:
        response = _text_response(self.status, self.message)
        if self.headers:
            response.headers.update(self.headers)
        if self.close:
            response.force_close()
        return response


def _text_response(status: int, message: str) -> web.Response:
    response = web.Response(
        status=status, text=message + "\n", content_type="text/plain", charset="utf-8"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# -------------------------------------------------------------------------------------
# Fault scripting


@dataclass
class _Rule:
    status: int
    body: str
    remaining: int | None


class Faults:
    """Scripted misbehaviour for tests: error answers and hangs.

    Rules apply in the order they were added; a rule with ``times=None`` holds until
    :meth:`clear`. A request answered by a rule is counted but not handed on; a hung
    request proceeds normally once released (answered 503 if the server is closing).
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self._released: asyncio.Event | None = None

    def respond(self, status: int, body: str = "", times: int | None = None) -> None:
        """Answer the next ``times`` push requests (all, if None) with ``status``."""
        if times is not None and times <= 0:
            raise ValueError("times must be positive or None")
        self._rules.append(_Rule(status, body, times))

    def hang(self) -> None:
        """Make push requests wait, unanswered, until :meth:`clear` (or shutdown)."""
        if self._released is None or self._released.is_set():
            self._released = asyncio.Event()

    def clear(self) -> None:
        """Drop every rule and release hanging requests, which then proceed normally."""
        self._rules.clear()
        if self._released is not None:
            self._released.set()
            self._released = None

    @property
    def hanging(self) -> bool:
        return self._released is not None

    async def _wait_if_hung(self) -> None:
        released = self._released
        if released is not None:
            await released.wait()

    def _next_answer(self) -> _Rule | None:
        if not self._rules:
            return None
        rule = self._rules[0]
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining == 0:
                self._rules.pop(0)
        return rule


@dataclass
class RequestLog:
    """What push requests arrived: how many, their statuses, the last one's headers."""

    count: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    last_headers: Mapping[str, str] = field(default_factory=CIMultiDict)
    last_path: str = ""


# -------------------------------------------------------------------------------------
# Request parsing helpers (pure)


def _media_type(header: str) -> str:
    """The media type of a Content-Type header, as Go ``mime.ParseMediaType`` reads."""
    base, _, params = header.partition(";")
    media = base.strip().lower()
    kind, slash, rest = media.partition("/")
    if not _is_token(kind):
        raise _HTTPError(400, "mime: no media type")
    if slash:
        subtype = rest.rstrip()
        if not subtype:
            raise _HTTPError(400, "mime: expected token after slash")
        if not _is_token(subtype):
            raise _HTTPError(400, "mime: unexpected content after media subtype")
    for param in params.split(";"):
        param = param.strip()
        if not param:
            continue
        key, eq, _value = param.partition("=")
        if not eq or not _is_token(key.strip()):
            raise _HTTPError(400, "mime: invalid media parameter")
    return media


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+\Z")


def _is_token(s: str) -> bool:
    return _TOKEN.match(s) is not None


def _check_tenant(tenant: str) -> None:
    if "|" in tenant:
        raise _HTTPError(400, "multiple org IDs present")
    if len(tenant.encode()) > _TENANT_MAX:
        raise _HTTPError(400, f"tenant ID is too long: max {_TENANT_MAX} characters")
    if tenant in (".", ".."):
        raise _HTTPError(400, "tenant ID is '.' or '..'")
    if not _TENANT_OK.match(tenant):
        bad = next(ch for ch in tenant if not _TENANT_OK.match(ch))
        raise _HTTPError(
            400, f"tenant ID '{tenant}' contains unsupported character '{bad}'"
        )


# -------------------------------------------------------------------------------------
# The memory budget of requests in flight


class _Budget:
    """Bytes the push requests in flight may hold together. Thread-safe: requests
    decoded on worker threads charge it from there.

    A charge that cannot fit even in an empty budget answers 413 (the request is too
    large for this receiver: retrying cannot help); one that only does not fit beside
    the other requests answers 503, which every Loki client retries. Not 429: a client
    with ``retry_on_http_429 = false`` would drop the entries, and the cause is this
    receiver's memory, not the client's rate.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("max_inflight_push_requests_bytes must be positive")
        self.capacity = capacity
        self.used = 0
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, n: int, held: int) -> None:
        with self._lock:
            if held + n > self.capacity:
                self.refused["request_body_too_large"] += 1
                raise _HTTPError(
                    413,
                    f"request body too large: {held + n} bytes, "
                    f"limit: {self.capacity} bytes",
                )
            if self.used + n > self.capacity:
                self.refused["inflight_bytes_limit"] += 1
                raise _HTTPError(
                    503,
                    "too many push requests in flight: their memory budget "
                    f"({self.capacity} bytes) is spent, retry later",
                    headers={"Retry-After": "1"},
                )
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class _Charge:
    """What one request holds of the budget; ``release()`` returns all of it."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: _Budget) -> None:
        self._budget = budget
        self.held = 0

    def grow(self, n: int) -> None:
        if n > 0:
            self._budget.take(n, self.held)
            self.held += n

    def shrink(self, n: int) -> None:
        n = min(n, self.held)
        if n > 0:
            self._budget.give(n)
            self.held -= n

    def release(self) -> None:
        self.shrink(self.held)


def _inflate(body: _Body, encoding: str, limit: int, charge: _Charge) -> bytes:
    """gzip (concatenated members too, as Go's reader) or raw DEFLATE, inflated in
    steps so the size limit and the budget stop a bomb before it is in memory."""
    is_gzip = encoding == "gzip"
    inflater = zlib.decompressobj(31 if is_gzip else -15)
    parts: list[bytes] = []
    size = 0
    data = body
    try:
        while True:
            chunk = inflater.decompress(data, _INFLATE_STEP)
            data = inflater.unconsumed_tail
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _HTTPError(413, _too_large(size, limit))
                charge.grow(len(chunk))
                parts.append(chunk)
            if inflater.eof:
                data = inflater.unused_data
                if not (is_gzip and data):
                    break
                inflater = zlib.decompressobj(31)
            elif not data and len(chunk) < _INFLATE_STEP:
                raise _HTTPError(400, "unexpected EOF")
    except zlib.error as exc:
        name = "gzip" if is_gzip else "flate"
        raise _HTTPError(400, f"{name}: invalid data: {exc}") from exc
    if len(parts) == 1:
        return parts[0]
    charge.grow(size)  # the joined copy, while the parts still exist
    out = b"".join(parts)
    parts.clear()
    charge.shrink(size)
    return out


# -------------------------------------------------------------------------------------
# Per-entry checks (Loki's distributor ValidateEntry)


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


def _check_entries(
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


def _parse_ns(text: object) -> int:
    """A JSON push timestamp as Loki reads it (jsonparser ``ParseInt``): a string of
    ASCII digits with an optional leading ``-`` that fits an int64."""
    if not isinstance(text, str) or not _NS_DIGITS.match(text):
        raise _HTTPError(400, _JSON_PREFIX + _MALFORMED_VALUE)
    value = int(text) if text != "-" else 0
    if not -(1 << 63) <= value < 1 << 63:
        raise _HTTPError(400, _JSON_PREFIX + _MALFORMED_VALUE)
    return value


def _parse_rfc3339_ns(text: object) -> int:
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise _HTTPError(400, f"parsing time {go_quote(str(text))}: not RFC 3339")
    whole, frac, zone = match.groups()
    zone = "+00:00" if zone.upper() == "Z" else zone
    seconds = int(datetime.fromisoformat(whole + zone).timestamp())
    return seconds * _NS + int((frac or "").ljust(9, "0"))


def _string_map(value: object, what: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _HTTPError(400, f"{what}: expected a JSON object")
    pairs = []
    for key, item in value.items():
        if not isinstance(item, str):
            raise _HTTPError(400, _MALFORMED_STRING)
        pairs.append((key, item))
    return pairs


def _json_text(value: object) -> str:
    """A non-string JSON value as the text Loki keeps for it (its source bytes; here
    re-serialised, so number spelling and spacing inside objects may differ)."""
    return orjson.dumps(value).decode()


def _first_char(value: object) -> str:
    return _json_text(value)[:1]


def _json_v1_streams(body: _Body) -> list[tuple[str, list[LogEntry]]]:
    """``{"streams":[{"stream":{..},"values":[["<ns>","line",{meta}]]}]}``, read as
    Loki 3.6 reads it (``loghttp.PushRequest``): a label value of another JSON type
    is kept as its JSON text, ``null`` entries and a ``null`` ``values`` are skipped,
    an entry may lack its line (empty) and carry more than three items (ignored)."""
    streams_value = _load_json(body).get("streams")
    if streams_value is None:
        return []
    if not isinstance(streams_value, list):
        found = _first_char(streams_value)
        raise _HTTPError(
            400, f"{_STREAMS_PREFIX}decode slice: expect [ or n, but found {found}"
        )
    streams = []
    for stream in streams_value:
        if not isinstance(stream, dict):
            raise _HTTPError(400, _JSON_PREFIX + _MALFORMED_OBJECT)
        raw_labels = stream.get("stream", {})
        if not isinstance(raw_labels, dict):
            raise _HTTPError(400, _JSON_PREFIX + _MALFORMED_OBJECT)
        labels = [
            (k, v if isinstance(v, str) else _json_text(v))
            for k, v in raw_labels.items()
        ]
        # Loki's LabelSet.String: keys sorted and written unquoted, values Go-quoted, so
        # a key that is not an identifier fails the label parse that follows.
        text = "{" + ", ".join(k + "=" + go_quote(v) for k, v in sorted(labels)) + "}"
        streams.append((text, _json_v1_entries(stream.get("values"))))
    return streams


def _json_v1_entries(values: object) -> list[LogEntry]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise _HTTPError(400, _JSON_PREFIX + _json_kind_error(values))
    entries = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, list):
            raise _HTTPError(400, _JSON_PREFIX + _json_kind_error(value))
        if not value:
            # Loki stamps it the zero time, which reject_old_samples refuses.
            raise _HTTPError(400, "values: expected [timestamp, line] arrays")
        timestamp_ns = _parse_ns(value[0])
        line = value[1] if len(value) > 1 else ""
        if not isinstance(line, str):
            raise _HTTPError(400, _JSON_PREFIX + _MALFORMED_STRING)
        metadata: list[tuple[str, str]] = []
        if len(value) > 2:
            if not isinstance(value[2], dict):
                raise _HTTPError(400, _JSON_PREFIX + _MALFORMED_OBJECT)
            for key, item in value[2].items():
                if not isinstance(item, str):
                    raise _HTTPError(400, _JSON_PREFIX + _MALFORMED_STRING)
                metadata.append((key, item))
        entries.append(LogEntry(timestamp_ns, line, tuple(metadata)))
    return entries


def _json_kind_error(value: object) -> str:
    """jsonparser's error for an array expected and ``value`` found."""
    return "Unknown value type" if isinstance(value, dict) else "Malformed JSON error"


def _json_legacy_streams(body: _Body) -> list[tuple[str, list[LogEntry]]]:
    """``{"streams":[{"labels":"{..}","entries":[{"ts":"<RFC3339>","line":""}]}]}``."""
    document = _load_json(body)
    streams = []
    for stream in document.get("streams") or ():
        if stream is None:
            continue
        if not isinstance(stream, dict):
            raise _HTTPError(400, "streams: expected a JSON object")
        labels = stream.get("labels", "")
        if not isinstance(labels, str):
            raise _HTTPError(400, "labels: expected a string")
        entries = []
        for entry in stream.get("entries") or ():
            if not isinstance(entry, dict):
                raise _HTTPError(400, "entries: expected a JSON object")
            line = entry.get("line", "")
            if not isinstance(line, str):
                raise _HTTPError(400, "line: expected a string")
            metadata = _string_map(
                entry.get("structuredMetadata"), "structuredMetadata"
            )
            entries.append(
                LogEntry(_parse_rfc3339_ns(entry.get("ts")), line, tuple(metadata))
            )
        streams.append((labels, entries))
    return streams


def _raw_entries(body: _Body) -> list[LogEntry]:
    """Alloy's ``/loki/api/v1/raw``: an entry per non-empty line, stamped on receipt.

    Each line gets its own nanosecond: Loki drops an entry whose timestamp and line
    both equal another's, so equal lines sharing one stamp would be lost.
    """
    now_ns = time.time_ns()
    text = body.decode("utf-8", "surrogateescape")
    lines = [line for line in (raw.rstrip("\r") for raw in text.split("\n")) if line]
    return [LogEntry(now_ns + i, line) for i, line in enumerate(lines)]


def _load_json(body: _Body) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _HTTPError(400, str(exc)) from exc
    if document is None:
        return {}  # jsoniter reads null into an empty request: no streams
    if not isinstance(document, dict):
        found = _first_char(document)
        raise _HTTPError(400, f"readObjectStart: expect {{ or n, but found {found}")
    return document


_INTERNAL_STREAM_LABELS = ("__aggregated_metric__", "__pattern__")


def _with_service_name(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
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


def _grouped(errors: list[str]) -> str:
    """Loki's ``util.GroupedErrors``: duplicates collapsed, counted, joined by '; '."""
    counts = Counter(errors)
    many = len(counts) > 1
    return "; ".join(
        f"{n} errors like: {message}" if many or n > 1 else message
        for message, n in counts.items()
    )


# -------------------------------------------------------------------------------------
# The server


@dataclass
class _Limits:
    max_label_names_per_series: int = 15
    max_label_name_length: int = 1024
    max_label_value_length: int = 2048


#: Parsed streams, or (no handler) only their label text and entry counts.
_Parsed = tuple[list[tuple[str, list[LogEntry]]] | None, list[tuple[str, int]] | None]


@dataclass
class _Checked:
    """A request after validation: what goes on, and what was refused and why."""

    batches: list[StreamBatch]
    accepted: int
    errors: list[str]
    discarded: Counter[str]


class PushReceiver:
    """A Loki push endpoint (Alloy's ``loki.source.api``) on aiohttp.

    Routes (under ``path_prefix``): ``POST /loki/api/v1/push`` (also ``/api/v1/push``),
    ``POST /api/prom/push`` (legacy JSON shape), ``POST /loki/api/v1/raw`` (also
    ``/api/v1/raw``: newline-delimited lines, no labels, receive-time timestamps) and
    ``GET /ready``. Each push is checked as Loki 3.6 checks it; the valid streams go
    to ``handler`` as ``StreamBatch``es (labels parsed, ``__``-prefixed labels
    removed, ``__tenant_id__`` added when the ``X-Scope-OrgID`` header is present)
    and the handler is awaited before the answer, so a slow consumer slows the
    client. Without a handler entries are only counted.

    Hostile input is bounded: every request charges ``max_inflight_bytes`` before its
    body is read (Content-Length, or each chunk) and again for its decompressed and
    decoded forms; gzip and deflate are inflated in steps under ``max_recv_msg_size``
    and the budget; a snappy body's declared length is checked before it is decoded;
    large bodies are decoded on a worker thread. ``server_limits`` sets the
    connection cap and Go-style read/write/idle deadlines (``_httpguard``).

    Args:
        handler: async callable receiving each request's streams, or None to count.
        host, port: where to listen; port 0 picks a free port, kept across restarts.
        registry: Prometheus registry for the ``loki_source_api_*`` metrics (a private
            one when None; never the global registry).
        max_recv_msg_size: size limit in bytes for protobuf bodies (Loki: 100 MiB),
            and for any decompressed body.
        path_prefix: prefix for every route, e.g. ``/tenant-a``.
        entry_limits: Loki's per-entry checks; by default only ``max_line_size``.
        max_inflight_bytes: memory budget of the requests in flight together.
        server_limits: connection cap and deadlines (Alloy's ``http`` block).
    """

    def __init__(
        self,
        handler: PushHandler | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry | None = None,
        max_recv_msg_size: int = DEFAULT_MAX_RECV_MSG_SIZE,
        path_prefix: str = "",
        max_label_names_per_series: int = 15,
        max_label_name_length: int = 1024,
        max_label_value_length: int = 2048,
        entry_limits: EntryLimits | None = None,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        server_limits: ServerLimits | None = None,
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._max_size = max_recv_msg_size
        self._prefix = path_prefix.rstrip("/")
        self._limits = _Limits(
            max_label_names_per_series, max_label_name_length, max_label_value_length
        )
        #: Loki's per-entry checks; may be replaced while running.
        self.entry_limits = entry_limits if entry_limits is not None else EntryLimits()
        self._budget = _Budget(max_inflight_bytes)
        self._guard = ConnectionGuard(server_limits or ServerLimits())
        self._server: GuardedServer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._label_cache: dict[str, tuple[list[tuple[str, str]], str]] = {}
        self.faults = Faults()
        self.requests = RequestLog()
        #: Entries accepted so far (also counted when there is no handler).
        self.entries_total = 0
        #: Entries refused by a per-stream or per-entry check, by Loki's reason.
        self.discarded: Counter[str] = Counter()
        self._registry = registry if registry is not None else CollectorRegistry()
        self._init_metrics(self._registry)

    def _init_metrics(self, registry: CollectorRegistry) -> None:
        # Names and labels as Alloy's loki.source.api (its dskit server instrumentation
        # under the loki_source_api namespace, and its entries_written counter).
        self._m_entries = PromCounter(
            "loki_source_api_entries_written",
            "Total number of entries written.",
            registry=registry,
        )
        self._m_duration = Histogram(
            "loki_source_api_request_duration_seconds",
            "Time (in seconds) spent serving HTTP requests.",
            ["method", "route", "status_code", "ws"],
            registry=registry,
        )
        size_buckets = [1024 * 4**i for i in range(10)]
        self._m_request_bytes = Histogram(
            "loki_source_api_request_message_bytes",
            "Size (in bytes) of messages received in the request.",
            ["method", "route"],
            buckets=size_buckets,
            registry=registry,
        )
        self._m_response_bytes = Histogram(
            "loki_source_api_response_message_bytes",
            "Size (in bytes) of messages sent in response.",
            ["method", "route"],
            buckets=size_buckets,
            registry=registry,
        )
        self._m_inflight = Gauge(
            "loki_source_api_inflight_requests",
            "Current number of inflight requests.",
            ["method", "route"],
            registry=registry,
        )
        registry.register(_ReceiverCollector(self))

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (the one picked, after the first start with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (plus the path prefix)."""
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"  # listening on every interface: loopback reaches it
        elif ":" in host:
            host = "[::1]" if host == "::" else f"[{host}]"
        return f"http://{host}:{self._port}{self._prefix}"

    @property
    def push_url(self) -> str:
        return self.url + "/loki/api/v1/push"

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> ConnectionGuard:
        """The server's connection cap, open connections and deadline closes."""
        return self._guard

    @property
    def inflight_bytes(self) -> int:
        """Bytes of the memory budget the requests in flight hold now."""
        return self._budget.used

    async def start(self) -> None:
        """Listen; a no-op when already running. A restart reuses the same port."""
        if self._server is not None:
            return
        app = web.Application(middlewares=[self._guard.middleware])
        p = self._prefix
        for path, route in (
            ("/loki/api/v1/push", "loki_api_v1_push"),
            ("/api/v1/push", "api_v1_push"),
            ("/api/prom/push", "api_prom_push"),
            ("/loki/api/v1/raw", "loki_api_v1_raw"),
            ("/api/v1/raw", "api_v1_raw"),
        ):
            app.router.add_post(p + path, self._make_push_route(route))
        app.router.add_get(p + "/ready", self._ready)
        # Bodies are read and decompressed here, not by aiohttp, to apply Loki's rules,
        # the size limit and the memory budget.
        server = GuardedServer(
            app,
            self._guard,
            auto_decompress=False,
            access_log=None,
            shutdown_timeout=1.0,
        )
        await server.start(self._host, self._port)
        self._closing = False
        self._server = server
        self._executor = ThreadPoolExecutor(
            _DECODE_THREADS, thread_name_prefix="loki.source.api"
        )
        if self._port == 0:
            self._port = server.port

    async def aclose(self) -> None:
        """Stop listening; hanging requests are answered 503. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        self.faults.clear()
        await server.aclose()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> PushReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- handlers ----------------------------------------------------------------------

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ready\n", content_type="text/plain")

    def _make_push_route(
        self, route: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            inflight = self._m_inflight.labels("POST", route)
            inflight.inc()
            try:
                response = await self._push(request, route)
            finally:
                inflight.dec()
            self.requests.statuses[response.status] += 1
            self._m_duration.labels(
                "POST", route, str(response.status), "false"
            ).observe(time.perf_counter() - start)
            self._m_request_bytes.labels("POST", route).observe(
                request.content_length or 0
            )
            body = response.body
            self._m_response_bytes.labels("POST", route).observe(
                len(body) if isinstance(body, bytes) else 0
            )
            return response

        return handle

    async def _push(self, request: web.Request, route: str) -> web.Response:
        log = self.requests
        log.count += 1
        log.last_headers = CIMultiDict(request.headers)
        log.last_path = request.path
        await self._on_request()
        charge = _Charge(self._budget)
        try:
            return await self._push_checked(request, route, charge)
        except _HTTPError as exc:
            return exc.response()
        finally:
            charge.release()

    async def _on_request(self) -> None:
        """Hook for subclasses: a push request arrived (before any checks)."""

    async def _read_body(
        self, request: web.Request, charge: _Charge, max_size: int
    ) -> _Body:
        """The whole body, charged before it is read: by its Content-Length (read
        into one buffer of that size), or chunk by chunk when it has none (twice:
        the growing buffer may be copied when it grows)."""
        length = request.content_length
        if length is not None and length > max_size:
            raise _HTTPError(413, _too_large(length, max_size))
        with self._guard.reading_body(request):
            if length is not None:
                charge.grow(length)
                body = bytearray(length)
                view = memoryview(body)
                pos = 0
                # aiohttp stops at Content-Length, and raises if less arrives.
                async for chunk in request.content.iter_any():
                    view[pos : pos + len(chunk)] = chunk
                    pos += len(chunk)
                view.release()
                return body
            grown = bytearray()
            async for chunk in request.content.iter_any():
                if len(grown) + len(chunk) > max_size:
                    raise _HTTPError(413, _too_large(len(grown) + len(chunk), max_size))
                charge.grow(2 * len(chunk))
                grown += chunk
        charge.shrink(charge.held - len(grown))
        return grown

    async def _push_checked(
        self, request: web.Request, route: str, charge: _Charge
    ) -> web.Response:
        max_size = self._max_size
        try:
            body = await self._read_body(request, charge, max_size)
        except _HTTPError as exc:
            exc.close = True  # the rest of the body is not wanted
            raise
        except (ConnectionError, web.RequestPayloadError) as exc:
            # The client went away, or its body stalled past server_read_timeout and
            # the guard closed the connection: nobody is left to answer.
            _log.debug("loki.source.api: push body not received: %s", exc)
            raise _HTTPError(400, f"reading the request body: {exc}") from None

        await self.faults._wait_if_hung()
        if self._closing:
            raise _HTTPError(503, "receiver is shutting down")
        rule = self.faults._next_answer()
        if rule is not None:
            raise _HTTPError(rule.status, rule.body or _reason(rule.status))

        tenant = request.headers.get(TENANT_HEADER, "")
        if tenant:
            _check_tenant(tenant)
        encoding = request.headers.get("Content-Encoding", "").strip()
        if encoding not in ("", "snappy", "gzip", "deflate"):
            raw_encoding = request.headers["Content-Encoding"]
            raise _HTTPError(400, f'Content-Encoding "{raw_encoding}" not supported')
        content_type = request.headers.get("Content-Type", "")

        # The worker takes the only reference to the body, so that it can free it
        # (and its charge) as soon as the decompressed form exists.
        holder: list[_Body] = [body]
        del body
        inline = len(holder[0]) <= (
            _INLINE_INFLATE_MAX
            if encoding in ("gzip", "deflate")
            else _INLINE_DECODE_MAX
        )
        work = (holder, encoding, route, content_type, tenant, charge)
        executor = self._executor
        if inline or executor is None:
            checked = self._decode_and_check(*work)
        else:
            # Seconds of work for the largest bodies: off the loop, so tailing and
            # pushing go on meanwhile.
            checked = await asyncio.get_running_loop().run_in_executor(
                executor, self._decode_and_check, *work
            )
        return await self._accept(checked)

    def _decode_and_check(
        self,
        holder: list[_Body],
        encoding: str,
        route: str,
        content_type: str,
        tenant: str,
        charge: _Charge,
    ) -> _Checked:
        """Decompress, decode and validate one request (on the loop or a thread)."""
        parsed = self._decode(holder, encoding, route, content_type, charge)
        return self._check(*parsed, tenant)

    def _decode(
        self,
        holder: list[_Body],
        encoding: str,
        route: str,
        content_type: str,
        charge: _Charge,
    ) -> _Parsed:
        max_size = self._max_size
        body = holder.pop()
        if encoding in ("gzip", "deflate"):
            compressed = len(body)
            body = _inflate(body, encoding, max_size, charge)
            charge.shrink(compressed)
        if route.endswith("_raw"):
            # The body, its text and the split lines live together for a moment.
            charge.grow(len(body) + (body.count(b"\n") + 1) * _ENTRY_OVERHEAD)
            return [("{}", _raw_entries(body))], None
        if _media_type(content_type) == "application/json":
            # orjson builds a list per entry and an object per stream: an upper bound
            # of the entries is the count of brackets and braces.
            charge.grow(
                len(body) + (body.count(b"[") + body.count(b"{")) * _ENTRY_OVERHEAD
            )
            decode_json = (
                _json_legacy_streams if route == "api_prom_push" else _json_v1_streams
            )
            return decode_json(body), None
        if len(body) > max_size:
            raise _HTTPError(413, _too_large(len(body), max_size))
        try:
            declared = snappy_decoded_length(body)
            if declared > max_size:
                raise _HTTPError(413, _too_large(declared, max_size))
            charge.grow(declared)
            data = decompress(body, max_size)
            charge.shrink(len(body))
            del body
            if self._handler is None:
                return None, scan_push_request(
                    data
                )  # counting only: entries stay bytes
            # The entries as Python objects take their lines' bytes again plus a fixed
            # cost each: charged before they exist.
            entries = sum(n for _, n in scan_push_request(data))
            charge.grow(len(data) + entries * _ENTRY_OVERHEAD)
            streams = decode_push_request(data)
            charge.shrink(len(data))
            return streams, None
        except BodyTooLargeError as exc:
            raise _HTTPError(413, f"request body too large: {exc}") from exc
        except DecodeError as exc:
            raise _HTTPError(400, str(exc)) from exc

    def _labels(self, text: str) -> tuple[list[tuple[str, str]], str]:
        """Parsed, sorted, non-empty label pairs, and the text Loki's messages show
        for them (cached)."""
        cached = self._label_cache.get(text)
        if cached is not None:
            return cached
        try:
            pairs = parse_label_pairs(text)
        except LabelError as exc:
            raise _HTTPError(400, f"couldn't parse labels: {exc}") from exc
        # Loki's label builder drops empty values; Labels are kept sorted by name.
        pairs = sorted((name, value) for name, value in pairs if value)
        result = (pairs, format_pairs(_with_service_name(pairs)))
        if len(self._label_cache) >= _LABEL_CACHE_MAX:
            self._label_cache.clear()
        self._label_cache[text] = result
        return result

    def _stream_error(
        self, pairs: list[tuple[str, str]], canonical: str
    ) -> tuple[str, str] | None:
        """Loki's per-stream label validation (``validator.go`` ``ValidateLabels``):
        ``(reason, message)`` for a refused stream."""
        limits = self._limits
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

    def _check(
        self,
        streams: list[tuple[str, list[LogEntry]]] | None,
        counts: list[tuple[str, int]] | None,
        tenant: str,
    ) -> _Checked:
        """Loki's checks in its order: label syntax (fails the request), then per
        stream the labels, then per entry the timestamps and line size."""
        items: Iterable[tuple[str, int, list[LogEntry] | None]]
        if streams is not None:
            items = [(text, len(entries), entries) for text, entries in streams]
        else:
            items = [(text, n, None) for text, n in counts or ()]
        if not items:
            raise _HTTPError(
                422, "error at least one valid stream is required for ingestion"
            )
        # Every label string is parsed first: a syntax error fails the whole request.
        parsed = [self._labels(text) for text, _, _ in items]
        limits = self.entry_limits
        now_ns = time.time_ns()
        checked = _Checked([], 0, [], Counter())
        for (pairs, canonical), (_, n, entries) in zip(parsed, items, strict=True):
            if n == 0:
                continue
            error = self._stream_error(pairs, canonical)
            if error is not None:
                checked.discarded[error[0]] += n
                checked.errors.append(error[1])
                continue
            if entries is not None:
                entries = _check_entries(
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

    async def _accept(self, checked: _Checked) -> web.Response:
        """Hand the accepted streams on, then answer 204 or Loki's grouped 400."""
        if checked.batches and self._handler is not None:
            try:
                await self._handler(checked.batches)
            except Exception as exc:
                # A failing consumer must not take the server down; Loki answers 500
                # when the write behind the distributor fails.
                _log.exception("loki.source.api: forwarding pushed entries failed")
                raise _HTTPError(500, str(exc) or type(exc).__name__) from exc
        self.entries_total += checked.accepted
        self._m_entries.inc(checked.accepted)
        if checked.discarded:
            self.discarded.update(checked.discarded)
        if checked.errors:
            raise _HTTPError(400, _grouped(checked.errors))
        return web.Response(status=204)


class _ReceiverCollector(Collector):
    """minilog's own receiver metrics, read from the receiver when scraped."""

    def __init__(self, receiver: PushReceiver) -> None:
        self._receiver = receiver

    def collect(self) -> Iterable[Any]:
        receiver = self._receiver
        guard = receiver.connections
        discarded = CounterMetricFamily(
            "minilog_source_api_discarded_entries",
            "Entries refused by Loki's per-stream and per-entry checks, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(receiver.discarded.items()):
            discarded.add_metric([reason], n)
        yield discarded
        refused = CounterMetricFamily(
            "minilog_source_api_refused_requests",
            "Push requests refused for the memory budget (503) or their size (413).",
            labels=["reason"],
        )
        for reason, n in sorted(receiver._budget.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily(
            "minilog_source_api_inflight_bytes",
            "Bytes of the in-flight memory budget that push requests hold.",
            value=receiver.inflight_bytes,
        )
        yield GaugeMetricFamily(
            "minilog_source_api_connections",
            "Open HTTP connections.",
            value=guard.open,
        )
        yield CounterMetricFamily(
            "minilog_source_api_connections_limited",
            "Times accepting paused because the connection cap was reached.",
            value=guard.limited,
        )
        timed_out = CounterMetricFamily(
            "minilog_source_api_connections_timed_out",
            "Connections closed by a read (headers or body) or write deadline.",
            labels=["phase"],
        )
        for phase, n in sorted(guard.timed_out.items()):
            timed_out.add_metric([phase], n)
        yield timed_out


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body too large: message size too large than max ({size} vs {limit})"
    )


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"
