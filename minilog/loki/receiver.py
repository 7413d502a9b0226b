"""``loki.source.api``: an aiohttp server that accepts Loki push requests.

Owns the HTTP side of a push as Loki 3.6 answers it: the routes, reading each body
against the in-flight memory budget (charged before it is read), status codes, the
hand-off of decoded streams to an async handler before answering, and the
``loki_source_api_*`` metrics. Large bodies are decompressed and decoded on worker
threads of its own. Decoding is ``pushrequest``, Loki's checks ``validation``,
connection caps and read/write deadlines ``minilog._httpguard``. ``faults`` scripts
misbehaviour (429/5xx answers with headers, hangs, a ``/ready`` status) for the
tests' and benchmarks' Loki stand-in, ``minilog.testing.FakeLoki``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from minilog._httpguard import ConnectionGuard, GuardedServer, ServerLimits
from minilog.errors import RequestRefused
from minilog.loki.pushrequest import (
    DEFAULT_MAX_RECV_MSG_SIZE,
    Body,
    Budget,
    Charge,
    check_tenant,
    decode_request,
    reason_phrase,
    refusal_response,
    too_large,
)
from minilog.loki.validation import (
    Checked,
    EntryLimits,
    LabelLimits,
    Validator,
    grouped,
)
from minilog.model import StreamBatch

__all__ = [
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "TENANT_HEADER",
    "Answer",
    "Faults",
    "PushHandler",
    "PushReceiver",
    "RequestLog",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer to a push request other than the 204: a status, Loki's text, and
    headers (``Retry-After``)."""

    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        return refusal_response(
            RequestRefused(self.status, self.body, headers=self.headers)
        )


#: Called with the accepted streams of one request, awaited before the answer: a
#: slow consumer slows the client. It returns ``None`` (answer 204, or Loki's 400 for
#: what the checks refused), or an ``Answer`` to give instead.
PushHandler = Callable[[list[StreamBatch]], Awaitable[Answer | None]]

#: Bytes the push requests in flight may hold together: bodies, their decompressed
#: form and the decoded entries until the handler took them (minilog's
#: ``max_inflight_push_requests_bytes``, named after Mimir's distributor limit).
DEFAULT_MAX_INFLIGHT_BYTES = 64 << 20

TENANT_HEADER = "X-Scope-OrgID"
# A body past this is decompressed, decoded and checked on a worker thread: a 64 KiB
# snappy body can declare over a megabyte, tens of milliseconds of decoding.
_INLINE_DECODE_MAX = 64 << 10
# gzip and deflate inflate a thousandfold: past this, a body always goes to a thread.
_INLINE_INFLATE_MAX = 1 << 10
# Worker threads for decoding: the receiver's own, so pushes cannot take the shared
# default executor the writer encodes and the positions are saved on.
_DECODE_THREADS = 2
_log = logging.getLogger(__name__)


@dataclass
class _Rule:
    answer: Answer
    remaining: int | None


class Faults:
    """Scripted misbehaviour for tests: error answers, hangs, a ``/ready`` status.

    Rules apply in the order they were added; a rule with ``times=None`` holds until
    :meth:`clear`. A request answered by a rule is counted but not handed on; a hung
    request proceeds normally once released (answered 503 if the server is closing).
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self._released: asyncio.Event | None = None
        #: The status of ``GET /ready`` (Loki answers 503 while it starts).
        self.ready_status = 200

    def respond(
        self,
        status: int,
        body: str = "",
        times: int | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` push requests (all, if None) with ``status``,
        ``body`` (its reason phrase when empty) and ``headers`` (``Retry-After``)."""
        if times is not None and times <= 0:
            raise ValueError("times must be positive or None")
        self._rules.append(_Rule(Answer(status, body, dict(headers or {})), times))

    def hang(self) -> None:
        """Make push requests wait, unanswered, until :meth:`clear` (or shutdown)."""
        if self._released is None or self._released.is_set():
            self._released = asyncio.Event()

    def clear(self) -> None:
        """Drop every rule and release hanging requests, which then proceed normally.
        ``/ready`` answers 200 again."""
        self._rules.clear()
        self.ready_status = 200
        if self._released is not None:
            self._released.set()
            self._released = None

    @property
    def hanging(self) -> bool:
        return self._released is not None

    async def wait_released(self) -> None:
        """Return at once, or once a hang is cleared."""
        released = self._released
        if released is not None:
            await released.wait()

    def next_answer(self) -> Answer | None:
        """The scripted answer for the push request at hand (counting it), if any."""
        if not self._rules:
            return None
        rule = self._rules[0]
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining == 0:
                self._rules.pop(0)
        return rule.answer


@dataclass
class RequestLog:
    """What push requests arrived: how many, their statuses, the last one's headers."""

    count: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    last_headers: Mapping[str, str] = field(default_factory=CIMultiDict)
    last_path: str = ""


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
        max_label_names_per_series: int = LabelLimits.max_label_names_per_series,
        max_label_name_length: int = LabelLimits.max_label_name_length,
        max_label_value_length: int = LabelLimits.max_label_value_length,
        entry_limits: EntryLimits | None = None,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        server_limits: ServerLimits | None = None,
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._max_size = max_recv_msg_size
        self._prefix = path_prefix.rstrip("/")
        self._validator = Validator(
            LabelLimits(
                max_label_names_per_series,
                max_label_name_length,
                max_label_value_length,
            ),
            entry_limits if entry_limits is not None else EntryLimits(),
        )
        self._budget = Budget(max_inflight_bytes)
        self._guard = ConnectionGuard(server_limits or ServerLimits())
        self._server: GuardedServer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
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

    @property
    def refused_requests(self) -> Counter[str]:
        """Requests refused for the memory budget or their size, by reason."""
        return self._budget.refused

    @property
    def entry_limits(self) -> EntryLimits:
        """Loki's per-entry checks; may be replaced while running."""
        return self._validator.entry_limits

    @entry_limits.setter
    def entry_limits(self, limits: EntryLimits) -> None:
        self._validator.entry_limits = limits

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
        await self.on_ready()
        status = self.faults.ready_status
        text = "ready\n" if 200 <= status < 300 else reason_phrase(status) + "\n"
        return web.Response(status=status, text=text, content_type="text/plain")

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
        await self.on_request(request)
        charge = Charge(self._budget)
        try:
            return await self._push_checked(request, route, charge)
        except RequestRefused as exc:
            return refusal_response(exc)
        finally:
            charge.release()

    async def on_request(self, request: web.Request) -> None:
        """Hook for subclasses (``FakeLoki`` records): a push request arrived, its
        headers read, its body not yet (nothing is checked yet)."""

    async def on_ready(self) -> None:
        """Hook for subclasses (``FakeLoki`` records): ``GET /ready`` arrived."""

    async def _read_body(
        self, request: web.Request, charge: Charge, max_size: int
    ) -> Body:
        """The whole body, charged before it is read: by its Content-Length (read
        into one buffer of that size), or chunk by chunk when it has none (twice:
        the growing buffer may be copied when it grows)."""
        length = request.content_length
        if length is not None and length > max_size:
            raise RequestRefused(413, too_large(length, max_size))
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
                    raise RequestRefused(
                        413, too_large(len(grown) + len(chunk), max_size)
                    )
                charge.grow(2 * len(chunk))
                grown += chunk
        charge.shrink(charge.held - len(grown))
        return grown

    async def _push_checked(
        self, request: web.Request, route: str, charge: Charge
    ) -> web.Response:
        max_size = self._max_size
        try:
            body = await self._read_body(request, charge, max_size)
        except RequestRefused as exc:
            exc.close = True  # the rest of the body is not wanted
            raise
        except (ConnectionError, web.RequestPayloadError) as exc:
            # The client went away, or its body stalled past server_read_timeout and
            # the guard closed the connection: nobody is left to answer.
            _log.debug("loki.source.api: push body not received: %s", exc)
            raise RequestRefused(400, f"reading the request body: {exc}") from None

        await self.faults.wait_released()
        if self._closing:
            raise RequestRefused(503, "receiver is shutting down")
        answer = self.faults.next_answer()
        if answer is not None:
            raise RequestRefused(
                answer.status,
                answer.body or reason_phrase(answer.status),
                headers=answer.headers,
            )

        tenant = request.headers.get(TENANT_HEADER, "")
        if tenant:
            check_tenant(tenant)
        encoding = request.headers.get("Content-Encoding", "").strip()
        if encoding not in ("", "snappy", "gzip", "deflate"):
            raw_encoding = request.headers["Content-Encoding"]
            raise RequestRefused(
                400, f'Content-Encoding "{raw_encoding}" not supported'
            )
        content_type = request.headers.get("Content-Type", "")

        # The worker takes the only reference to the body, so that it can free it
        # (and its charge) as soon as the decompressed form exists.
        holder: list[Body] = [body]
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
        holder: list[Body],
        encoding: str,
        route: str,
        content_type: str,
        tenant: str,
        charge: Charge,
    ) -> Checked:
        """Decompress, decode and validate one request (on the loop or a thread)."""
        parsed = decode_request(
            holder,
            encoding,
            route,
            content_type,
            charge,
            max_size=self._max_size,
            count_only=self._handler is None,
        )
        return self._validator.check(*parsed, tenant)

    async def _accept(self, checked: Checked) -> web.Response:
        """Hand the accepted streams on, then answer 204 or Loki's grouped 400 (or
        what the handler answers instead)."""
        if checked.batches and self._handler is not None:
            try:
                answer = await self._handler(checked.batches)
            except Exception as exc:
                # A failing consumer must not take the server down; Loki answers 500
                # when the write behind the distributor fails.
                _log.exception("loki.source.api: forwarding pushed entries failed")
                raise RequestRefused(500, str(exc) or type(exc).__name__) from exc
            if answer is not None:
                return answer.response()
        self.entries_total += checked.accepted
        self._m_entries.inc(checked.accepted)
        if checked.discarded:
            self.discarded.update(checked.discarded)
        if checked.errors:
            raise RequestRefused(400, grouped(checked.errors))
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
        for reason, n in sorted(receiver.refused_requests.items()):
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
