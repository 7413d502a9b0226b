"""``loki.source.api``: an aiohttp server that accepts Loki push requests.

Owns the HTTP side of a push as Loki 3.6 answers it (content type and encoding, size
limit, tenant header, label parsing and validation, status codes and error bodies) and
hands decoded streams to an async handler before answering. Also the tests' and
benchmarks' Loki stand-in: ``faults`` scripts 429/5xx answers and hangs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

from minilog.encode import (
    BodyTooLargeError,
    decode_push_request,
    decompress,
    scan_push_request,
)
from minilog.errors import DecodeError, LabelError
from minilog.labels import (
    format_pairs,
    go_quote,
    is_valid_label_name,
    parse_label_pairs,
)
from minilog.model import LogEntry, StreamBatch

__all__ = [
    "DEFAULT_MAX_RECV_MSG_SIZE",
    "DISCOVER_SERVICE_NAME",
    "SERVICE_NAME",
    "TENANT_HEADER",
    "TENANT_LABEL",
    "UNKNOWN_SERVICE",
    "Faults",
    "PushHandler",
    "PushReceiver",
    "RequestLog",
]

#: Called with the decoded streams of one request; awaited before the 204.
PushHandler = Callable[[list[StreamBatch]], Awaitable[None]]

#: Loki's ``distributor.max_recv_msg_size`` default (100 MiB).
DEFAULT_MAX_RECV_MSG_SIZE = 100 << 20

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
# A compressed body past this is decoded on a worker thread (~1 MiB: tens of ms).
_INLINE_DECODE_MAX = 256 << 10
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


class _HTTPError(Exception):
    """An error answer: Go ``http.Error`` style, the message plus a newline."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 31 if encoding == "gzip" else -15  # deflate is raw DEFLATE (compress/flate)
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        name = "gzip" if encoding == "gzip" else "flate"
        raise _HTTPError(400, f"{name}: invalid data: {exc}") from exc
    if len(out) > limit:
        raise _HTTPError(
            413,
            "request body too large: message size too large than max "
            f"({len(out)} vs {limit})",
        )
    if not inflater.eof:
        raise _HTTPError(400, "unexpected EOF")
    return out


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


def _json_v1_streams(body: bytes) -> list[tuple[str, list[LogEntry]]]:
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


def _json_legacy_streams(body: bytes) -> list[tuple[str, list[LogEntry]]]:
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


def _raw_entries(body: bytes) -> list[LogEntry]:
    """Alloy's ``/loki/api/v1/raw``: an entry per non-empty line, stamped on receipt.

    Each line gets its own nanosecond: Loki drops an entry whose timestamp and line
    both equal another's, so equal lines sharing one stamp would be lost.
    """
    now_ns = time.time_ns()
    text = body.decode("utf-8", "surrogateescape")
    lines = [line for line in (raw.rstrip("\r") for raw in text.split("\n")) if line]
    return [LogEntry(now_ns + i, line) for i, line in enumerate(lines)]


def _load_json(body: bytes) -> dict[str, Any]:
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


def _as_loki_sees(pairs: list[tuple[str, str]]) -> str:
    """The stream as Loki names it in errors: with the ``service_name`` it adds
    before validating (``discover_service_name``), from the first of
    ``DISCOVER_SERVICE_NAME`` with a value, else ``unknown_service``."""
    if not any(name == SERVICE_NAME for name, _ in pairs):
        values: dict[str, str] = {}
        for name, value in pairs:
            values.setdefault(name, value)  # Loki's Labels.Get: the first one
        service = next(
            (values[n] for n in DISCOVER_SERVICE_NAME if values.get(n)),
            UNKNOWN_SERVICE,
        )
        pairs = sorted([*pairs, (SERVICE_NAME, service)], key=lambda pair: pair[0])
    return format_pairs(pairs)


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


class PushReceiver:
    """A Loki push endpoint (Alloy's ``loki.source.api``) on aiohttp.

    Routes (under ``path_prefix``): ``POST /loki/api/v1/push`` (also ``/api/v1/push``),
    ``POST /api/prom/push`` (legacy JSON shape), ``POST /loki/api/v1/raw`` (also
    ``/api/v1/raw``: newline-delimited lines, no labels, receive-time timestamps) and
    ``GET /ready``. Each push is checked
    as Loki 3.6 checks it; the valid streams go to ``handler`` as ``StreamBatch``es
    (labels parsed, ``__``-prefixed labels removed, ``__tenant_id__`` added when the
    ``X-Scope-OrgID`` header is present) and the handler is awaited before the answer,
    so a slow consumer slows the client. Without a handler entries are only counted.

    Args:
        handler: async callable receiving each request's streams, or None to count.
        host, port: where to listen; port 0 picks a free port, kept across restarts.
        registry: Prometheus registry for the ``loki_source_api_*`` metrics (a private
            one when None; never the global registry).
        max_recv_msg_size: size limit in bytes for protobuf bodies (Loki: 100 MiB).
        path_prefix: prefix for every route, e.g. ``/tenant-a``.
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
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._max_size = max_recv_msg_size
        self._prefix = path_prefix.rstrip("/")
        self._limits = _Limits(
            max_label_names_per_series, max_label_name_length, max_label_value_length
        )
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._label_cache: dict[str, tuple[list[tuple[str, str]], str]] = {}
        self.faults = Faults()
        self.requests = RequestLog()
        #: Entries accepted so far (also counted when there is no handler).
        self.entries_total = 0
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
        return self._runner is not None

    async def start(self) -> None:
        """Listen; a no-op when already running. A restart reuses the same port."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=self._max_size + 1)
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
        # Bodies are decompressed here, not by aiohttp, to apply Loki's rules and limit.
        runner = web.AppRunner(
            app, auto_decompress=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._closing = False
        self._runner = runner
        if self._port == 0:
            self._port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop listening; hanging requests are answered 503. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        self.faults.clear()
        await runner.cleanup()

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
        try:
            return await self._push_checked(request, route)
        except _HTTPError as exc:
            return _text_response(exc.status, exc.message)

    async def _on_request(self) -> None:
        """Hook for subclasses: a push request arrived (before any checks)."""

    async def _push_checked(self, request: web.Request, route: str) -> web.Response:
        max_size = self._max_size
        length = request.content_length
        if length is not None and length > max_size:
            raise _HTTPError(413, _too_large(length, max_size))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise _HTTPError(413, _too_large(length or max_size + 1, max_size)) from exc

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
        if encoding in ("gzip", "deflate"):
            body = _inflate(body, encoding, max_size)
        elif encoding not in ("", "snappy"):
            raw_encoding = request.headers["Content-Encoding"]
            raise _HTTPError(400, f'Content-Encoding "{raw_encoding}" not supported')

        if route.endswith("_raw"):
            return await self._accept([("{}", _raw_entries(body))], None, tenant)
        media = _media_type(request.headers.get("Content-Type", ""))
        if media == "application/json":
            legacy = route == "api_prom_push"
            raw_streams = (_json_legacy_streams if legacy else _json_v1_streams)(body)
            return await self._accept(raw_streams, None, tenant)
        if len(body) > max_size:
            raise _HTTPError(413, _too_large(len(body), max_size))
        streams: list[tuple[str, list[LogEntry]]] | None = None
        counts: list[tuple[str, int]] | None = None
        try:
            if len(body) > _INLINE_DECODE_MAX:
                # Seconds of work for the largest bodies: off the loop, so tailing
                # and pushing go on meanwhile.
                streams, counts = await asyncio.to_thread(self._decode, body, max_size)
            else:
                streams, counts = self._decode(body, max_size)
        except BodyTooLargeError as exc:
            raise _HTTPError(413, f"request body too large: {exc}") from exc
        except DecodeError as exc:
            raise _HTTPError(400, str(exc)) from exc
        return await self._accept(streams, counts, tenant)

    def _decode(
        self, body: bytes, max_size: int
    ) -> tuple[list[tuple[str, list[LogEntry]]] | None, list[tuple[str, int]] | None]:
        data = decompress(body, max_size)
        if self._handler is None:
            return None, scan_push_request(data)  # counting only: entries stay bytes
        return decode_push_request(data), None

    def _labels(self, text: str) -> tuple[list[tuple[str, str]], str]:
        """Parsed, sorted, non-empty label pairs and their canonical text (cached)."""
        cached = self._label_cache.get(text)
        if cached is not None:
            return cached
        try:
            pairs = parse_label_pairs(text)
        except LabelError as exc:
            raise _HTTPError(400, f"couldn't parse labels: {exc}") from exc
        # Loki's label builder drops empty values; Labels are kept sorted by name.
        pairs = sorted((name, value) for name, value in pairs if value)
        result = (pairs, format_pairs(pairs))
        if len(self._label_cache) >= _LABEL_CACHE_MAX:
            self._label_cache.clear()
        self._label_cache[text] = result
        return result

    def _stream_error(self, pairs: list[tuple[str, str]]) -> str | None:
        """Loki's per-stream label validation (``validator.go`` ``ValidateLabels``)."""
        limits = self._limits
        count = len(pairs) - any(name == SERVICE_NAME for name, _ in pairs)
        if count > limits.max_label_names_per_series:
            return (
                f"entry for stream '{_as_loki_sees(pairs)}' has {count} label names; "
                f"limit {limits.max_label_names_per_series}"
            )
        last = None
        for name, value in pairs:
            problem = None
            if len(name.encode()) > limits.max_label_name_length:
                problem = f"has label name too long: '{name}'"
            elif (
                len(value.encode("utf-8", "surrogateescape"))
                > limits.max_label_value_length
            ):
                problem = f"has label value too long: '{value}'"
            elif name == last:
                problem = f"has duplicate label name: '{name}'"
            elif not is_valid_label_name(name) and name != "__name__":
                problem = f"has invalid label name: '{name}'"
            if problem is not None:
                return f"stream '{_as_loki_sees(pairs)}' {problem}"
            last = name
        return None

    async def _accept(
        self,
        streams: list[tuple[str, list[LogEntry]]] | None,
        counts: list[tuple[str, int]] | None,
        tenant: str,
    ) -> web.Response:
        """Validate parsed streams, hand the good ones on, answer 204 or grouped 400."""
        if streams is not None:
            items: list[tuple[str, int, list[LogEntry] | None]] = [
                (text, len(entries), entries) for text, entries in streams
            ]
        else:
            items = [(text, n, None) for text, n in counts or ()]
        if not items:
            raise _HTTPError(
                422, "error at least one valid stream is required for ingestion"
            )
        # Every label string is parsed first: a syntax error fails the whole request.
        parsed = [self._labels(text) for text, _, _ in items]
        errors: list[str] = []
        batches: list[StreamBatch] = []
        accepted = 0
        for (pairs, _), (_, n, entries) in zip(parsed, items, strict=True):
            if n == 0:
                continue
            error = self._stream_error(pairs)
            if error is not None:
                errors.append(error)
                continue
            accepted += n
            if entries is not None:
                # Alloy's loki.source.api drops incoming internal labels, then adds the
                # tenant from the header.
                labels = {k: v for k, v in pairs if not k.startswith("__")}
                if tenant:
                    labels[TENANT_LABEL] = tenant
                batches.append(StreamBatch(labels, entries))
        if batches and self._handler is not None:
            try:
                await self._handler(batches)
            except Exception as exc:
                # A failing consumer must not take the server down; Loki answers 500
                # when the write behind the distributor fails.
                _log.exception("loki.source.api: forwarding pushed entries failed")
                raise _HTTPError(500, str(exc) or type(exc).__name__) from exc
        self.entries_total += accepted
        self._m_entries.inc(accepted)
        if errors:
            raise _HTTPError(400, _grouped(errors))
        return web.Response(status=204)


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
