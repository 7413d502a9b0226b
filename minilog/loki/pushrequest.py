"""One Loki push request, from body bytes to decoded streams (pure: no sockets).

Owns what Loki 3.6 does before it validates anything: the content type, the tenant
header's syntax, gzip/deflate bodies inflated in bounded steps, snappy protobuf bodies
checked against their declared size, the JSON push shapes (``loghttp.PushRequest`` and
the legacy ``/api/prom/push`` one) and ``/loki/api/v1/raw`` lines; with Loki's error
texts. Every form a body takes is charged to the receiver's in-flight memory budget
(``Budget``) before it exists. What Loki then checks is ``validation``; the server is
``receiver``.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections import Counter
from datetime import datetime
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from minilog._go import go_quote
from minilog.errors import BodyTooLargeError, DecodeError, RequestRefused
from minilog.loki.wire import (
    decode_push_request,
    decompress,
    scan_push_request,
    snappy_decoded_length,
)
from minilog.model import LogEntry

__all__ = [
    "DEFAULT_MAX_RECV_MSG_SIZE",
    "Body",
    "Budget",
    "Charge",
    "Parsed",
    "check_tenant",
    "decode_request",
    "inflate",
    "json_legacy_streams",
    "json_v1_streams",
    "media_type",
    "raw_entries",
    "reason_phrase",
    "refusal_response",
    "text_response",
    "too_large",
]

#: Loki's ``distributor.max_recv_msg_size`` default (100 MiB).
DEFAULT_MAX_RECV_MSG_SIZE = 100 << 20

# dskit tenant.ValidTenantID: letters, digits and eight symbols; at most 150 bytes.
_TENANT_OK = re.compile(r"[a-zA-Z0-9!\-_.*'()]*\Z")
_TENANT_MAX = 150
_NS = 1_000_000_000
_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)\Z",
    re.IGNORECASE,
)
# Inflated in steps of this size, each charged to the budget before the next.
_INFLATE_STEP = 1 << 20
# What the decoded form of an entry costs beyond its line (LogEntry, str and int
# objects, the protobuf parser's arena), measured with RSS on CPython 3.11.
_ENTRY_OVERHEAD = 256
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
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+\Z")

#: A request body as read: filled in place when its length is known.
Body = bytes | bytearray
#: Parsed streams, or (counting only) their label text and entry counts.
Parsed = tuple[list[tuple[str, list[LogEntry]]] | None, list[tuple[str, int]] | None]


def refusal_response(refused: RequestRefused) -> web.Response:
    """The answer to a refused request: Loki's text, its headers; the connection is
    closed after it when the body was not read."""
    response = text_response(refused.status, refused.message)
    if refused.headers:
        response.headers.update(refused.headers)
    if refused.close:
        response.force_close()
    return response


def text_response(status: int, message: str) -> web.Response:
    response = web.Response(
        status=status, text=message + "\n", content_type="text/plain", charset="utf-8"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def media_type(header: str) -> str:
    """The media type of a Content-Type header, as Go ``mime.ParseMediaType`` reads."""
    base, _, params = header.partition(";")
    media = base.strip().lower()
    kind, slash, rest = media.partition("/")
    if not _is_token(kind):
        raise RequestRefused(400, "mime: no media type")
    if slash:
        subtype = rest.rstrip()
        if not subtype:
            raise RequestRefused(400, "mime: expected token after slash")
        if not _is_token(subtype):
            raise RequestRefused(400, "mime: unexpected content after media subtype")
    for param in params.split(";"):
        param = param.strip()
        if not param:
            continue
        key, eq, _value = param.partition("=")
        if not eq or not _is_token(key.strip()):
            raise RequestRefused(400, "mime: invalid media parameter")
    return media


def _is_token(s: str) -> bool:
    return _TOKEN.match(s) is not None


def check_tenant(tenant: str) -> None:
    if "|" in tenant:
        raise RequestRefused(400, "multiple org IDs present")
    if len(tenant.encode()) > _TENANT_MAX:
        raise RequestRefused(
            400, f"tenant ID is too long: max {_TENANT_MAX} characters"
        )
    if tenant in (".", ".."):
        raise RequestRefused(400, "tenant ID is '.' or '..'")
    if not _TENANT_OK.match(tenant):
        bad = next(ch for ch in tenant if not _TENANT_OK.match(ch))
        raise RequestRefused(
            400, f"tenant ID '{tenant}' contains unsupported character '{bad}'"
        )


class Budget:
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
                raise RequestRefused(
                    413,
                    f"request body too large: {held + n} bytes, "
                    f"limit: {self.capacity} bytes",
                )
            if self.used + n > self.capacity:
                self.refused["inflight_bytes_limit"] += 1
                raise RequestRefused(
                    503,
                    "too many push requests in flight: their memory budget "
                    f"({self.capacity} bytes) is spent, retry later",
                    headers={"Retry-After": "1"},
                )
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Charge:
    """What one request holds of the budget; ``release()`` returns all of it."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: Budget) -> None:
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


def inflate(body: Body, encoding: str, limit: int, charge: Charge) -> bytes:
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
                    raise RequestRefused(413, too_large(size, limit))
                charge.grow(len(chunk))
                parts.append(chunk)
            if inflater.eof:
                data = inflater.unused_data
                if not (is_gzip and data):
                    break
                inflater = zlib.decompressobj(31)
            elif not data and len(chunk) < _INFLATE_STEP:
                raise RequestRefused(400, "unexpected EOF")
    except zlib.error as exc:
        name = "gzip" if is_gzip else "flate"
        raise RequestRefused(400, f"{name}: invalid data: {exc}") from exc
    if len(parts) == 1:
        return parts[0]
    charge.grow(size)  # the joined copy, while the parts still exist
    out = b"".join(parts)
    parts.clear()
    charge.shrink(size)
    return out


def _parse_ns(text: object) -> int:
    """A JSON push timestamp as Loki reads it (jsonparser ``ParseInt``): a string of
    ASCII digits with an optional leading ``-`` that fits an int64."""
    if not isinstance(text, str) or not _NS_DIGITS.match(text):
        raise RequestRefused(400, _JSON_PREFIX + _MALFORMED_VALUE)
    value = int(text) if text != "-" else 0
    if not -(1 << 63) <= value < 1 << 63:
        raise RequestRefused(400, _JSON_PREFIX + _MALFORMED_VALUE)
    return value


def _parse_rfc3339_ns(text: object) -> int:
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise RequestRefused(400, f"parsing time {go_quote(str(text))}: not RFC 3339")
    whole, frac, zone = match.groups()
    zone = "+00:00" if zone.upper() == "Z" else zone
    seconds = int(datetime.fromisoformat(whole + zone).timestamp())
    return seconds * _NS + int((frac or "").ljust(9, "0"))


def _string_map(value: object, what: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise RequestRefused(400, f"{what}: expected a JSON object")
    pairs = []
    for key, item in value.items():
        if not isinstance(item, str):
            raise RequestRefused(400, _MALFORMED_STRING)
        pairs.append((key, item))
    return pairs


def _json_text(value: object) -> str:
    """A non-string JSON value as the text Loki keeps for it (its source bytes; here
    re-serialised, so number spelling and spacing inside objects may differ)."""
    return orjson.dumps(value).decode()


def _first_char(value: object) -> str:
    return _json_text(value)[:1]


def json_v1_streams(body: Body) -> list[tuple[str, list[LogEntry]]]:
    """``{"streams":[{"stream":{..},"values":[["<ns>","line",{meta}]]}]}``, read as
    Loki 3.6 reads it (``loghttp.PushRequest``): a label value of another JSON type
    is kept as its JSON text, ``null`` entries and a ``null`` ``values`` are skipped,
    an entry may lack its line (empty) and carry more than three items (ignored)."""
    streams_value = _load_json(body).get("streams")
    if streams_value is None:
        return []
    if not isinstance(streams_value, list):
        found = _first_char(streams_value)
        raise RequestRefused(
            400, f"{_STREAMS_PREFIX}decode slice: expect [ or n, but found {found}"
        )
    streams = []
    for stream in streams_value:
        if not isinstance(stream, dict):
            raise RequestRefused(400, _JSON_PREFIX + _MALFORMED_OBJECT)
        raw_labels = stream.get("stream", {})
        if not isinstance(raw_labels, dict):
            raise RequestRefused(400, _JSON_PREFIX + _MALFORMED_OBJECT)
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
        raise RequestRefused(400, _JSON_PREFIX + _json_kind_error(values))
    entries = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, list):
            raise RequestRefused(400, _JSON_PREFIX + _json_kind_error(value))
        if not value:
            # Loki stamps it the zero time, which reject_old_samples refuses.
            raise RequestRefused(400, "values: expected [timestamp, line] arrays")
        timestamp_ns = _parse_ns(value[0])
        line = value[1] if len(value) > 1 else ""
        if not isinstance(line, str):
            raise RequestRefused(400, _JSON_PREFIX + _MALFORMED_STRING)
        metadata: list[tuple[str, str]] = []
        if len(value) > 2:
            if not isinstance(value[2], dict):
                raise RequestRefused(400, _JSON_PREFIX + _MALFORMED_OBJECT)
            for key, item in value[2].items():
                if not isinstance(item, str):
                    raise RequestRefused(400, _JSON_PREFIX + _MALFORMED_STRING)
                metadata.append((key, item))
        entries.append(LogEntry(timestamp_ns, line, tuple(metadata)))
    return entries


def _json_kind_error(value: object) -> str:
    """jsonparser's error for an array expected and ``value`` found."""
    return "Unknown value type" if isinstance(value, dict) else "Malformed JSON error"


def json_legacy_streams(body: Body) -> list[tuple[str, list[LogEntry]]]:
    """``{"streams":[{"labels":"{..}","entries":[{"ts":"<RFC3339>","line":""}]}]}``."""
    document = _load_json(body)
    streams = []
    for stream in document.get("streams") or ():
        if stream is None:
            continue
        if not isinstance(stream, dict):
            raise RequestRefused(400, "streams: expected a JSON object")
        labels = stream.get("labels", "")
        if not isinstance(labels, str):
            raise RequestRefused(400, "labels: expected a string")
        entries = []
        for entry in stream.get("entries") or ():
            if not isinstance(entry, dict):
                raise RequestRefused(400, "entries: expected a JSON object")
            line = entry.get("line", "")
            if not isinstance(line, str):
                raise RequestRefused(400, "line: expected a string")
            metadata = _string_map(
                entry.get("structuredMetadata"), "structuredMetadata"
            )
            entries.append(
                LogEntry(_parse_rfc3339_ns(entry.get("ts")), line, tuple(metadata))
            )
        streams.append((labels, entries))
    return streams


def raw_entries(body: Body) -> list[LogEntry]:
    """Alloy's ``/loki/api/v1/raw``: an entry per non-empty line, stamped on receipt.

    Each line gets its own nanosecond: Loki drops an entry whose timestamp and line
    both equal another's, so equal lines sharing one stamp would be lost.
    """
    now_ns = time.time_ns()
    text = body.decode("utf-8", "surrogateescape")
    lines = [line for line in (raw.rstrip("\r") for raw in text.split("\n")) if line]
    return [LogEntry(now_ns + i, line) for i, line in enumerate(lines)]


def _load_json(body: Body) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRefused(400, str(exc)) from exc
    if document is None:
        return {}  # jsoniter reads null into an empty request: no streams
    if not isinstance(document, dict):
        found = _first_char(document)
        raise RequestRefused(400, f"readObjectStart: expect {{ or n, but found {found}")
    return document


def decode_request(
    holder: list[Body],
    encoding: str,
    route: str,
    content_type: str,
    charge: Charge,
    *,
    max_size: int,
    count_only: bool,
) -> Parsed:
    """Decompress and decode one request body (taken out of ``holder``, so that it can
    be freed as soon as its decompressed form exists), charging ``charge`` for every
    form before it exists.

    Returns the streams, or with ``count_only`` only their label text and entry
    counts (the entries stay bytes). Raises ``RequestRefused`` with Loki's answer.
    """
    body = holder.pop()
    if encoding in ("gzip", "deflate"):
        compressed = len(body)
        body = inflate(body, encoding, max_size, charge)
        charge.shrink(compressed)
    if route.endswith("_raw"):
        # The body, its text and the split lines live together for a moment.
        charge.grow(len(body) + (body.count(b"\n") + 1) * _ENTRY_OVERHEAD)
        return [("{}", raw_entries(body))], None
    if media_type(content_type) == "application/json":
        # orjson builds a list per entry and an object per stream: an upper bound
        # of the entries is the count of brackets and braces.
        charge.grow(len(body) + (body.count(b"[") + body.count(b"{")) * _ENTRY_OVERHEAD)
        decode_json = (
            json_legacy_streams if route == "api_prom_push" else json_v1_streams
        )
        return decode_json(body), None
    if len(body) > max_size:
        raise RequestRefused(413, too_large(len(body), max_size))
    try:
        declared = snappy_decoded_length(body)
        if declared > max_size:
            raise RequestRefused(413, too_large(declared, max_size))
        charge.grow(declared)
        data = decompress(body, max_size)
        charge.shrink(len(body))
        del body
        if count_only:
            return None, scan_push_request(data)
        # The entries as Python objects take their lines' bytes again plus a fixed
        # cost each: charged before they exist.
        entries = sum(n for _, n in scan_push_request(data))
        charge.grow(len(data) + entries * _ENTRY_OVERHEAD)
        streams = decode_push_request(data)
        charge.shrink(len(data))
        return streams, None
    except BodyTooLargeError as exc:
        raise RequestRefused(413, f"request body too large: {exc}") from exc
    except DecodeError as exc:
        raise RequestRefused(400, str(exc)) from exc


def too_large(size: int, limit: int) -> str:
    return (
        f"request body too large: message size too large than max ({size} vs {limit})"
    )


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"
