"""``loki.write``: fan-out to endpoints, each with its own bounded queue and send loop.

Owns ``EndpointConfig`` (Alloy's ``endpoint`` arguments and defaults), the ``Writer``
``LogsReceiver``, backpressure, backlog compaction, the retry loop around
``push.LokiPusher`` (backoff, ``Retry-After``, probing a down endpoint), what is done
with what Loki refused (drop, count, or hold a stream and retry it alone), delivery
settlement, drain on close and the ``loki_write_*`` metrics. Batching rules live in
``batch.py``, HTTP in ``push.py``, the wire format in ``encode.py``, the meaning of
Loki's error answers in ``refusals.py``.

Delivery rule: an entry is settled only when Loki accepted it or finally refused it
(a 4xx other than 429; a 429 too when ``retry_on_http_429`` is off). An outage
(connection refused or reset, timeout, DNS, 5xx, 429) never drops anything: the batch
is retried until Loki answers, whatever ``max_backoff_retries`` says, and the bounded
queue makes ``send`` wait meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minilog.batch import Batch, Batcher, entries_size
from minilog.encode import (
    compress,
    decode_push_request,
    decompress,
    encode_push_request,
)
from minilog.errors import (
    BrokenError,
    ClientRequestError,
    ClosedError,
    ConfigError,
    DecodeError,
    PushConnectionError,
    PushError,
    RateLimitedError,
    WouldBlockError,
)
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.push import (
    Backoff,
    BasicAuth,
    LokiPusher,
    TLSConfig,
    url_host,
    url_without_userinfo,
)
from minilog.refusals import Refusal, RefusalPlan, parse_refusal, plan_refusal

__all__ = [
    "DROP_REASONS",
    "ENTRY_OVERHEAD_BYTES",
    "PROBE_INTERVAL_S",
    "RATE_LIMITED_MAX_DELAY_S",
    "EndpointConfig",
    "WriteMetrics",
    "Writer",
]

_log = logging.getLogger("minilog.write")

#: Alloy's drop reasons, pre-initialised per tenant; ``drain_timeout`` is minilog's own
#: (entries still queued when ``aclose`` gave up). Entries Loki refuses for a reason
#: Alloy has no name for are counted under Loki's own discard reason
#: (``greater_than_max_sample_age``, ``too_far_in_future``, ``too_far_behind``, ...;
#: see ``refusals.py``), created on first use.
DROP_REASONS = (
    "ingester_error",
    "rate_limited",
    "stream_limited",
    "line_too_long",
    "queue_is_full",
    "drain_timeout",
)

# Batches with more entries are encoded in a worker thread, so a 1 MiB batch cannot
# stall the loop for its whole encode (the thread yields the GIL every switch interval).
_THREAD_ENCODE_ENTRIES = 2000
#: What one queued entry costs beyond its line bytes in CPython: the LogEntry tuple
#: with its GC header (80), the str header (49), the int timestamp (32), a list slot
#: (8) and allocator rounding.
#: Counting it keeps the queue's real memory under ``queue_capacity`` (line bytes alone
#: let a queue of short lines take several times its bound).
ENTRY_OVERHEAD_BYTES = 200
#: How long the first batch after a quiet spell (``batch_wait`` without a new batch)
#: waits: a new container's first lines reach Loki in well under a second even with
#: Alloy's default ``batch_wait`` of 1 s, and steady traffic is batched as before.
IDLE_LINGER_S = 0.05
#: Ready batches allowed to wait uncompressed behind the next one before ``send`` waits.
_MAX_UNCOMPACTED = 2
#: A batch filled to at least this many line bytes is encoded as soon as it is full.
_ENCODE_ON_FILL_MIN_BYTES = 32 << 10
#: While a retry waits longer than this after a connection failure or a 5xx, the
#: endpoint is probed this often (``LokiPusher.probe``), and the push is retried as
#: soon as it answers again: recovery is seen within about a second however long the
#: backoff has grown, without sending batches at a down endpoint.
PROBE_INTERVAL_S = 1.0
#: Longest wait after a 429 without ``Retry-After``. Loki answers a rate limit from
#: its token bucket before storing anything, and the bucket refills continuously:
#: waiting longer only delays the data, and a retry a second costs Loki one refused
#: request. (Alloy backs off to ``max_backoff_period``, minutes.)
RATE_LIMITED_MAX_DELAY_S = 1.0
#: While an endpoint stays down, one summary line this often instead of one per retry.
_RETRY_LOG_INTERVAL_S = 60.0
#: Refused requests logged per endpoint within _REFUSAL_LOG_WINDOW_S; more are counted
#: and summed up in the next line.
_REFUSAL_LOG_BURST = 10
_REFUSAL_LOG_WINDOW_S = 60.0
#: Loki's answer text quoted in a log line, at most.
_LOGGED_BODY_CHARS = 2000
#: Streams Loki accepted within this long are taken to exist on its side (its
#: ``chunk_idle_period`` forgets idle streams after 30 minutes by default).
_CONFIRMED_FOR_S = 600.0
_CONFIRMED_MAX = 65536

_ONE_CREDENTIAL = (
    "at most one of basic_auth, bearer_token & bearer_token_file must be configured"
)


@dataclass(frozen=True, slots=True, repr=False)
class EndpointConfig:
    """One ``endpoint`` block of ``loki.write``: Alloy's names, Alloy's defaults.

    Durations are seconds, sizes bytes. ``queue_capacity`` is Alloy's
    ``queue_config.capacity`` and ``drain_timeout`` its ``queue_config.drain_timeout``.
    ``name`` defaults to the first 6 hex digits of a SHA-256 of the configuration.

    ``max_backoff_retries``: after that many failed attempts in a row the endpoint is
    reported as failing (one error line, ``minilog_write_endpoint_failing``); its
    entries stay queued and are retried every ``max_backoff_period`` at most, sooner
    when a probe sees Loki answer. 0: never reported. (Alloy drops the batch then.)
    ``retry_on_http_429 = false`` drops what Loki refused with a 429, as Alloy does.

    ``repr`` shows no secret: the URL without userinfo, no token, no header value.
    """

    url: str
    name: str = ""
    batch_wait: float = 1.0
    batch_size: int = 1 << 20
    remote_timeout: float = 10.0
    tenant_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    basic_auth: BasicAuth | None = None
    bearer_token: str = ""
    bearer_token_file: str = ""
    tls_config: TLSConfig | None = None
    min_backoff_period: float = 0.5
    max_backoff_period: float = 300.0
    max_backoff_retries: int = 10
    retry_on_http_429: bool = True
    queue_capacity: int = 10 << 20
    drain_timeout: float = 15.0

    def __post_init__(self) -> None:
        problems = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            shown = url_without_userinfo(self.url)
            problems.append(f"endpoint url {shown!r} must be an http(s) URL")
        for name in (
            "batch_wait",
            "remote_timeout",
            "min_backoff_period",
            "max_backoff_period",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"endpoint {name} must be positive")  # noqa: PERF401
        for name in ("batch_size", "queue_capacity"):
            if getattr(self, name) <= 0:
                problems.append(f"endpoint {name} must be positive")  # noqa: PERF401
        if self.max_backoff_retries < 0:
            problems.append("endpoint max_backoff_retries must be >= 0")
        if self.drain_timeout < 0:
            problems.append("endpoint drain_timeout must be >= 0")
        credentials = (self.basic_auth, self.bearer_token, self.bearer_token_file)
        if sum(map(bool, credentials)) > 1:
            problems.append(_ONE_CREDENTIAL)
        if problems:
            raise ConfigError("; ".join(problems))
        if not self.name:
            # Every value counts, secrets too (only the digest is ever shown).
            text = repr(
                [
                    (f.name, _plain(getattr(self, f.name)))
                    for f in fields(self)
                    if f.name != "name"
                ]
            )
            object.__setattr__(
                self, "name", hashlib.sha256(text.encode()).hexdigest()[:6]
            )

    @property
    def host(self) -> str:
        """The ``host`` metric label: the URL's host[:port], without userinfo."""
        return url_host(self.url)

    @property
    def display_url(self) -> str:
        """The URL as logs and debug pages show it: without userinfo."""
        return url_without_userinfo(self.url)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if f.name == "url":
                value = url_without_userinfo(value)
            elif f.name == "bearer_token" and value:
                value = "<secret>"
            elif f.name == "headers":
                value = dict.fromkeys(value, "<secret>")
            shown.append(f"{f.name}={value!r}")
        return f"EndpointConfig({', '.join(shown)})"


def _plain(value: object) -> object:
    return (
        asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
    )


class WriteMetrics:
    """The ``loki_write_*`` families, registered once on the given registry, and
    minilog's queue gauges over the writers that count into them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        #: Writers counting into these metrics (a reload's new one and the old one
        #: draining), for the queue gauges read at scrape time.
        self.writers: weakref.WeakSet[Writer] = weakref.WeakSet()
        registry.register(_QueueCollector(self.writers))
        ht = ("host", "tenant")
        self.sent_entries = Counter(
            "loki_write_sent_entries",
            "Number of log entries sent to the ingester.",
            ht,
            registry=registry,
        )
        self.sent_bytes = Counter(
            "loki_write_sent_bytes", "Number of bytes sent.", ht, registry=registry
        )
        self.encoded_bytes = Counter(
            "loki_write_encoded_bytes",
            "Number of bytes encoded and ready to send.",
            ("host",),
            registry=registry,
        )
        self.dropped_entries = Counter(
            "loki_write_dropped_entries",
            "Number of log entries dropped because failed to be sent to the ingester "
            "after all retries.",
            (*ht, "reason"),
            registry=registry,
        )
        self.dropped_bytes = Counter(
            "loki_write_dropped_bytes",
            "Number of bytes dropped because failed to be sent to the ingester after "
            "all retries.",
            (*ht, "reason"),
            registry=registry,
        )
        self.batch_retries = Counter(
            "loki_write_batch_retries",
            "Number of times batches have had to be retried.",
            ht,
            registry=registry,
        )
        self.request_duration = Histogram(
            "loki_write_request_duration_seconds",
            "Duration of send requests.",
            ("status_code", *ht),
            registry=registry,
        )
        self.endpoint_failing = Gauge(
            "minilog_write_endpoint_failing",
            "1 while an endpoint has failed max_backoff_retries attempts in a row: its "
            "entries are held and retried, not dropped.",
            ("host",),
            registry=registry,
        )
        self.pending_entries = Gauge(
            "minilog_write_pending_entries",
            "Entries queued for an endpoint and not yet accepted or refused by Loki.",
            ("host",),
            registry=registry,
        )
        self.held_streams = Gauge(
            "minilog_write_held_streams",
            "Streams whose entries Loki refused for now (a 429 naming them), retried "
            "on their own while the other streams go on.",
            ("host",),
            registry=registry,
        )
        self._endpoints: dict[str, set[_Endpoint]] = {}
        self.request_size = Histogram(
            "loki_write_request_size_bytes",
            "Number of bytes for encoded requests.",
            ht,
            buckets=(
                1 << 10,
                4 << 10,
                16 << 10,
                64 << 10,
                256 << 10,
                1 << 20,
                4 << 20,
                20 << 20,
            ),
            registry=registry,
        )
        self._seen: set[tuple[str, str]] = set()

    def see_tenant(self, host: str, tenant: str) -> None:
        """Pre-initialise the drop counters of a tenant at 0, as Alloy does."""
        if (host, tenant) in self._seen:
            return
        self._seen.add((host, tenant))
        for reason in DROP_REASONS:
            self.dropped_entries.labels(host, tenant, reason)
            self.dropped_bytes.labels(host, tenant, reason)

    def dropped(
        self, host: str, tenant: str, reason: str, entries: int, size: int
    ) -> None:
        self.see_tenant(host, tenant)
        self.dropped_entries.labels(host, tenant, reason).inc(entries)
        self.dropped_bytes.labels(host, tenant, reason).inc(size)

    def track(self, endpoint: _Endpoint) -> None:
        """Report ``endpoint``'s state in the per-host gauges (read at scrape time)."""
        host = endpoint.host
        live = self._endpoints.get(host)
        if live is None:
            # Writers rebuilt by a reload share a host: the gauges sum them all.
            live = self._endpoints[host] = set()
            self.endpoint_failing.labels(host).set_function(
                lambda: float(any(e.failing for e in list(live)))
            )
            self.pending_entries.labels(host).set_function(
                lambda: float(sum(e.pending_entries for e in list(live)))
            )
            self.held_streams.labels(host).set_function(
                lambda: float(sum(e.held_stream_count for e in list(live)))
            )
        live.add(endpoint)

    def untrack(self, endpoint: _Endpoint) -> None:
        self._endpoints.get(endpoint.host, set()).discard(endpoint)


class _QueueCollector(Collector):
    """``minilog_write_queue_bytes`` against ``minilog_write_queue_capacity_bytes``
    per ``host``: Alloy has no gauge of its queue, and a queue filling up is what an
    outage looks like before anything is dropped."""

    def __init__(self, writers: weakref.WeakSet[Writer]) -> None:
        self._writers = writers

    def describe(self) -> list[Metric]:
        return list(self._families({}, {}))

    def collect(self) -> Iterator[Metric]:
        held: dict[str, int] = {}
        capacity: dict[str, int] = {}
        for writer in list(self._writers):
            for endpoint in writer._endpoints:
                held[endpoint.host] = held.get(endpoint.host, 0) + endpoint.queued_bytes
                if not writer.closed:
                    # A writer draining after a reload holds bytes but no capacity.
                    capacity[endpoint.host] = (
                        capacity.get(endpoint.host, 0) + endpoint.capacity
                    )
        yield from self._families(held, capacity)

    @staticmethod
    def _families(
        held: Mapping[str, int], capacity: Mapping[str, int]
    ) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "minilog_write_queue_bytes",
            "Bytes held in the endpoint's queue (open, ready and in-flight batches), "
            "as counted against queue_config.capacity.",
            labels=["host"],
        )
        for host, value in sorted(held.items()):
            queued.add_metric([host], value)
        limit = GaugeMetricFamily(
            "minilog_write_queue_capacity_bytes",
            "The endpoint's queue_config.capacity: senders wait once the queue holds "
            "this much.",
            labels=["host"],
        )
        for host, value in sorted(capacity.items()):
            limit.add_metric([host], value)
        yield queued
        yield limit


class _Waiters:
    """Futures parked until :meth:`wake_all`; the woken re-check their condition."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._futures.append(future)
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    def wake_all(self) -> None:
        futures, self._futures = self._futures, deque()
        for future in futures:
            if not future.done():
                future.set_result(None)


@dataclass(slots=True)
class _Outage:
    """An endpoint that stopped answering (or answers 5xx/429), until it answers."""

    started: float
    last_logged: float
    attempts: int = 0
    last_error: str = ""
    #: ``max_backoff_retries`` attempts failed: reported once, gauge set.
    failing: bool = False


@dataclass(slots=True)
class _Held:
    """Entries of one stream Loki refused for now, retried on their own.

    ``seq`` is the oldest batch they came from (``flush`` waits for it); ``cost`` what
    they count against ``queue_capacity``.
    """

    tenant: str
    key: str
    entries: list[LogEntry]
    deliveries: list[Delivery]
    seq: int
    #: ``rate_limited``, ``stream_limited``, or ``outage`` once a retry met one.
    reason: str
    backoff: Backoff
    due: float
    #: Bytes charged to the queue, and entries counted as pending, for these entries.
    charged: int = 0
    pending: int = 0
    inflight: bool = False

    def merge(self, other: _Held) -> None:
        self.entries.extend(other.entries)
        self.deliveries.extend(other.deliveries)
        self.charged += other.charged
        self.pending += other.pending
        self.seq = min(self.seq, other.seq)


class _LogBudget:
    """At most ``burst`` lines per ``window`` seconds; the rest are counted."""

    __slots__ = ("_burst", "_clock", "_times", "_window", "suppressed")

    def __init__(self, burst: int, window: float, clock: Callable[[], float]) -> None:
        self._burst = burst
        self._window = window
        self._clock = clock
        self._times: deque[float] = deque()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock()
        while self._times and now - self._times[0] >= self._window:
            self._times.popleft()
        if len(self._times) >= self._burst:
            self.suppressed += 1
            return False
        self._times.append(now)
        return True

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


class _Endpoint:
    """One endpoint: a Batcher with capped bytes (open, ready, in flight, held), a
    sender, a compactor, and the retries of held streams."""

    __slots__ = (
        "_clock",
        "_compact_wakeup",
        "_compactor",
        "_confirmed",
        "_held",
        "_held_incoming",
        "_held_task",
        "_held_wakeup",
        "_inflight",
        "_outage",
        "_probe_interval",
        "_progress",
        "_random",
        "_refusal_log",
        "_settled_entries",
        "_sleep",
        "_space",
        "_task",
        "_wakeup",
        "_working_set",
        "batcher",
        "broken",
        "capacity",
        "closed",
        "config",
        "display_url",
        "done_seq",
        "draining",
        "host",
        "metrics",
        "pusher",
        "queued_bytes",
    )

    def __init__(
        self,
        config: EndpointConfig,
        metrics: WriteMetrics,
        *,
        max_streams: int,
        clock: Callable[[], float],
        random_source: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        probe_interval: float,
    ) -> None:
        self.config = config
        self.host = config.host
        self.display_url = config.display_url
        self.metrics = metrics
        self.capacity = config.queue_capacity
        self.queued_bytes = 0
        # Batches being filled, sent and encoded live as Python objects, and the
        # allocator keeps their memory once they are compressed or gone: that working
        # set is set aside from the capacity, so compressed bodies cannot come on top.
        self._working_set = min(
            config.queue_capacity // 4,
            (_MAX_UNCOMPACTED + 3) * config.batch_size * 4,
        )
        self.batcher = Batcher(
            batch_size=config.batch_size,
            batch_wait=config.batch_wait,
            max_streams=max_streams,
            tenant_id=config.tenant_id,
            clock=clock,
            on_drop=self._on_batcher_drop,
            idle_linger=IDLE_LINGER_S,
        )
        self.pusher = LokiPusher(
            config.url,
            headers=config.headers,
            basic_auth=config.basic_auth,
            bearer_token=config.bearer_token,
            bearer_token_file=config.bearer_token_file,
            tls_config=config.tls_config,
            remote_timeout=config.remote_timeout,
        )
        self._clock = clock
        self._random = random_source
        self._sleep = sleep
        self._probe_interval = probe_interval
        self._space = _Waiters()
        self._progress = _Waiters()
        self._wakeup = asyncio.Event()
        self._compact_wakeup = asyncio.Event()
        self._held_wakeup = asyncio.Event()
        self._compactor: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._held_task: asyncio.Task[None] | None = None
        self._inflight: Batch | None = None
        #: Streams Loki refused for now, by (tenant, stream key); ``send`` of a batch
        #: for one of them waits until it is released.
        self._held: dict[tuple[str, str], _Held] = {}
        #: Entries refused for a held stream while its own retry was in flight.
        self._held_incoming: dict[tuple[str, str], _Held] = {}
        #: When Loki last accepted each stream, per tenant.
        self._confirmed: dict[str, dict[str, float]] = {}
        self._outage: _Outage | None = None
        self._refusal_log = _LogBudget(_REFUSAL_LOG_BURST, _REFUSAL_LOG_WINDOW_S, clock)
        self._settled_entries = 0
        #: Why the endpoint cannot be used any more (a task of it died of a bug).
        self.broken: BaseException | None = None
        self.done_seq = 0
        self.closed = False
        self.draining = False

    # -- state for gauges and the UI

    @property
    def failing(self) -> bool:
        return self._outage is not None and self._outage.failing

    @property
    def pending_entries(self) -> int:
        return self.batcher.added_entries - self._settled_entries

    @property
    def held_stream_count(self) -> int:
        return len(self._held)

    def state(self) -> dict[str, Any]:
        outage = self._outage
        return {
            "name": self.config.name,
            "url": self.display_url,
            "failing": self.failing,
            "down_since_s": None
            if outage is None
            else round(self._clock() - outage.started, 3),
            "pending_entries": self.pending_entries,
            "held_streams": sorted(key for _, key in self._held),
            "queued_bytes": self.queued_bytes,
        }

    # -- intake

    def has_room(self) -> bool:
        return (
            self.queued_bytes + self._working_set < self.capacity
            and not self._compaction_behind()
        )

    def accepts(self, batch: StreamBatch) -> bool:
        """Room in the queue, the batch's stream is not held, the endpoint is open."""
        if self.closed or not self.has_room():
            return False
        return not self._held or not self._holds(batch)

    def _holds(self, batch: StreamBatch) -> bool:
        key, tenant = self.batcher.stream_key(batch.labels)
        return (tenant, key) in self._held

    def _compaction_behind(self) -> bool:
        """Whether more ready batches wait uncompressed than the compactor handles.

        A producer faster than the encoder would otherwise fill the whole queue with
        entries as Python objects; the allocator keeps that high-water mark after they
        are compacted, and the compressed bodies then come on top of it.
        """
        if self.batcher.ready_count <= _MAX_UNCOMPACTED + 1:
            return False  # too few to be behind: the common case, on every send
        ready = self.batcher.ready_batches()
        behind = sum(1 for batch in ready[1:] if batch.body is None and batch.streams)
        return behind > _MAX_UNCOMPACTED

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise BrokenError(
                f"loki.write endpoint {self.config.name} ({self.display_url}) stopped: "
                f"{type(self.broken).__name__}: {self.broken}"
            )
        if self.closed:
            raise ClosedError("loki.write is closed")

    def put_nowait(self, batch: StreamBatch) -> None:
        if self.closed:  # closed, or broken (which closes it)
            self._check_usable()
        was_open = self.batcher.open_count
        was_ready = self.batcher.ready_count
        added_before = self.batcher.added_entries
        size = self.batcher.add(batch)
        added = self.batcher.added_entries - added_before
        self.queued_bytes += size + added * ENTRY_OVERHEAD_BYTES
        ready = self.batcher.ready_count
        if ready > was_ready:
            self._encode_filled(ready - was_ready)
        # Wake the sender for a ready batch, or to arm the age timer of a new open
        # batch.
        if ready or self.batcher.open_count != was_open:
            self._wakeup.set()
            if ready > 1:
                self._compact_wakeup.set()

    def _encode_filled(self, count: int) -> None:
        """Encode the ``count`` batches that filling just made ready, here and now.

        A batch waits as its compressed body rather than as entries (a tenth of the
        memory, or less): the work is the sender's anyway, done once, and the
        producer that filled the batch pays for it, which also paces it. Small
        batches (a small ``batch_size``) stay entries: there is little to save.
        """
        for batch in self.batcher.ready_batches()[-count:]:
            if batch.body is not None or batch.size_bytes < _ENCODE_ON_FILL_MIN_BYTES:
                continue
            try:
                body = _encode_body(self._ordered_items(batch))
            except Exception:  # noqa: BLE001 - the sender encodes it again and reports
                continue
            cost = _cost(batch)
            batch.compact(body)
            self.queued_bytes -= cost - _cost(batch)

    async def put(self, batch: StreamBatch) -> None:
        while not self.accepts(batch):
            self._check_usable()
            if (
                not self.has_room()
                and self._inflight is None
                and not self.batcher.ready_count
            ):
                # Only open batches fill the queue (a capacity near batch_size): send
                # them now rather than after batch_wait, or the producer idles.
                self.batcher.cut_all()
                self._wakeup.set()
            await self._space.wait()
        self.put_nowait(batch)

    def count_dropped(self, batch: StreamBatch, reason: str) -> None:
        _, tenant = self.batcher.stream_key(batch.labels)
        self.metrics.dropped(
            self.host, tenant, reason, len(batch.entries), entries_size(batch.entries)
        )

    def _on_batcher_drop(
        self, tenant: str, reason: str, entries: int, size: int
    ) -> None:
        self.metrics.dropped(self.host, tenant, reason, entries, size)

    # -- tasks

    def start(self) -> None:
        if self._task is None and self.broken is None:
            loop = asyncio.get_running_loop()
            name = self.config.name
            self._task = loop.create_task(
                self._run(), name=f"loki.write endpoint {name}"
            )
            self._compactor = loop.create_task(
                self._run_compactor(), name=f"loki.write compactor {name}"
            )
            self._held_task = loop.create_task(
                self._run_held(), name=f"loki.write held streams {name}"
            )
            for task in (self._task, self._compactor, self._held_task):
                task.add_done_callback(self._task_done)
            self.metrics.track(self)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug: whoever waits for room, or for a flush, would wait forever.
        if self.broken is None:
            self.broken = task.exception()
        self.closed = True
        _log.error(
            "loki.write endpoint %s (%s): %s failed; sends to it fail from now on",
            self.config.name,
            self.display_url,
            task.get_name(),
            exc_info=task.exception(),
        )
        self._space.wake_all()
        self._progress.wake_all()

    async def _run(self) -> None:
        batcher = self.batcher
        while True:
            batch = batcher.pop_ready()
            if batch is not None:
                await self._deliver(batch)
                continue
            if self.draining and batcher.cut_all():
                continue
            self._wakeup.clear()
            deadline = batcher.next_deadline()
            if deadline is None:
                await self._wakeup.wait()
                continue
            delay = deadline - self._clock()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
            batcher.cut_expired()

    # -- sending a batch

    async def _deliver(self, batch: Batch) -> None:
        self._inflight = batch
        host, tenant = self.host, batch.tenant
        self.metrics.see_tenant(host, tenant)
        try:
            body = batch.body if batch.body is not None else await self._encode(batch)
        except Exception:  # noqa: BLE001 - a bug in encoding must not kill the send loop
            _log.exception(
                "cannot encode batch for %s, dropping %d entries",
                self.display_url,
                batch.entry_count,
            )
            self.metrics.dropped(
                host, tenant, "ingester_error", batch.entry_count, batch.size_bytes
            )
            self._finish(batch)
            return
        size = len(body)
        self.metrics.encoded_bytes.labels(host).inc(size)
        self.metrics.request_size.labels(host, tenant).observe(size)
        backoff = self._backoff()
        while True:
            answer = await self._attempt(body, tenant)
            if answer is None:
                self._answered()
                self._confirm(tenant, batch.stream_keys())
                self.metrics.sent_entries.labels(host, tenant).inc(batch.entry_count)
                self.metrics.sent_bytes.labels(host, tenant).inc(size)
                self._finish(batch)
                return
            exc, refusal = answer
            if self._is_outage(refusal):
                await self._back_off(exc, backoff, tenant)
                continue
            plan = None
            if refusal is not None and not refusal.whole:
                plan = plan_refusal(
                    refusal,
                    self._streams_of(batch, body),
                    hold_retriable=self.config.retry_on_http_429,
                    unconfirmed=self._unconfirmed(tenant, batch.stream_keys()),
                )
                if plan.retry_whole:
                    await self._back_off(exc, backoff, tenant)
                    continue
            self._answered()
            assert refusal is not None  # outage-type answers were retried above
            self._refused(batch, size, exc, refusal, plan)
            return

    async def _attempt(
        self, body: bytes, tenant: str
    ) -> tuple[PushError, Refusal | None] | None:
        """One push: ``None`` when Loki took it all, else the error and, for a 4xx,
        what Loki says it refused."""
        started = time.perf_counter()
        host = self.host
        try:
            status = await self.pusher.push(body, tenant=tenant)
        except PushError as exc:
            self.metrics.request_duration.labels(
                str(exc.status or -1), host, tenant
            ).observe(time.perf_counter() - started)
            refusal = None
            if exc.status is not None and isinstance(
                exc, (RateLimitedError, ClientRequestError)
            ):
                refusal = parse_refusal(exc.status, exc.response_text)
            return exc, refusal
        except asyncio.CancelledError:
            self.metrics.request_duration.labels("-1", host, tenant).observe(
                time.perf_counter() - started
            )
            raise
        self.metrics.request_duration.labels(str(status), host, tenant).observe(
            time.perf_counter() - started
        )
        return None

    def _is_outage(self, refusal: Refusal | None) -> bool:
        """Retry the whole request: no answer, a 5xx, or Loki's flow control for the
        whole request (unless ``retry_on_http_429`` is off)."""
        if refusal is None:
            return True
        return refusal.whole and refusal.retriable and self.config.retry_on_http_429

    def _streams_of(self, batch: Batch, body: bytes) -> dict[str, list[LogEntry]]:
        if batch.body is None:
            return batch.streams
        try:
            # Compacted: the request itself holds the entries (the error path only).
            return dict(decode_push_request(decompress(body)))
        except DecodeError:
            _log.exception("cannot decode a batch this process encoded")
            return {}

    def _refused(
        self,
        batch: Batch,
        size: int,
        exc: PushError,
        refusal: Refusal,
        plan: RefusalPlan | None,
    ) -> None:
        """Settle a batch Loki refused in whole or in part: count what it refused,
        count the rest as sent, hold what it refused for now."""
        host, tenant = self.host, batch.tenant
        if plan is None or not plan.understood:
            reason = refusal.reason if refusal.understood else _fallback_reason(exc)
            self.metrics.dropped(host, tenant, reason, batch.entry_count, size)
            self._log_refusal(
                "dropping batch for %s (tenant %r): %d entries refused (%s): %s%s",
                self.display_url,
                tenant,
                batch.entry_count,
                reason,
                exc,
                ""
                if refusal.understood and (plan is None or plan.understood)
                else _quoted(exc),
            )
            self._finish(batch)
            return
        for reason, (count, dropped_bytes) in plan.dropped.items():
            self.metrics.dropped(host, tenant, reason, count, dropped_bytes)
        held_entries = plan.held_entries
        stored = max(0, batch.entry_count - plan.dropped_entries - held_entries)
        if stored:
            self.metrics.sent_entries.labels(host, tenant).inc(stored)
            self.metrics.sent_bytes.labels(host, tenant).inc(size)
        self._confirm(
            tenant,
            [
                key
                for key in batch.stream_keys()
                if key not in plan.held and key not in plan.unstored
            ],
        )
        for key, entries in plan.held.items():
            deliveries = batch.take_deliveries(frozenset((key,)))
            self._hold(
                tenant, key, entries, deliveries, batch.seq, plan.held_reasons[key], exc
            )
        dropped = ", ".join(f"{n} {reason}" for reason, (n, _) in plan.dropped.items())
        self._log_refusal(
            "Loki refused part of a batch for %s (tenant %r): %s dropped, %d held for "
            "a retry of their own (%s), %d stored: %s",
            self.display_url,
            tenant,
            dropped or "none",
            held_entries,
            ", ".join(plan.held) or "no stream",
            stored,
            exc,
        )
        self._finish(batch, settled=batch.entry_count - held_entries)

    def _log_refusal(self, message: str, *args: object) -> None:
        if not self._refusal_log.allow():
            return
        suppressed = self._refusal_log.take_suppressed()
        if suppressed:
            message += " (%d more refused requests not logged)"
            args = (*args, suppressed)
        _log.warning(message, *args)

    def _finish(self, batch: Batch, *, settled: int | None = None) -> None:
        self._inflight = None
        self.queued_bytes -= _cost(batch)
        self._settled_entries += batch.entry_count if settled is None else settled
        self.done_seq = batch.seq
        batch.settle()
        self._space.wake_all()
        self._progress.wake_all()

    # -- confirmed streams (Loki reports only the last stream that failed)

    def _confirm(self, tenant: str, keys: Sequence[str]) -> None:
        confirmed = self._confirmed.get(tenant)
        if confirmed is None:
            confirmed = self._confirmed[tenant] = {}
        elif len(confirmed) >= _CONFIRMED_MAX:
            confirmed.clear()
        now = self._clock()
        for key in keys:
            confirmed[key] = now

    def _unconfirmed(self, tenant: str, keys: Sequence[str]) -> set[str]:
        confirmed = self._confirmed.get(tenant) or {}
        horizon = self._clock() - _CONFIRMED_FOR_S
        return {key for key in keys if confirmed.get(key, -1e18) < horizon}

    def _ordered_items(self, batch: Batch) -> list[tuple[str, list[LogEntry]]]:
        """The batch's streams, those Loki accepted lately first.

        Loki's ingester answers for the last stream of a request only: a new stream
        refused (over the stream limit) before a stream that is fine would go unseen.
        New streams last make such a refusal the answer.
        """
        items = batch.stream_items()
        confirmed = self._confirmed.get(batch.tenant)
        if confirmed and len(items) > 1:
            horizon = self._clock() - _CONFIRMED_FOR_S
            items.sort(key=lambda item: confirmed.get(item[0], -1e18) < horizon)
        return items

    # -- outages: retry, probe, log once

    def _backoff(self) -> Backoff:
        config = self.config
        return Backoff(
            config.min_backoff_period,
            config.max_backoff_period,
            random=self._random,
        )

    def _retry_delay(self, exc: PushError, backoff: Backoff) -> tuple[float, bool]:
        """Seconds to wait before the next attempt, and whether probing may end it."""
        delay = backoff.next_delay()
        if exc.retry_after is not None and exc.status in (429, 503):
            # The server said when: honoured, within max_backoff_period.
            return max(0.0, min(exc.retry_after, self.config.max_backoff_period)), False
        if isinstance(exc, RateLimitedError):
            return min(delay, RATE_LIMITED_MAX_DELAY_S), False
        return delay, True

    async def _back_off(self, exc: PushError, backoff: Backoff, tenant: str) -> None:
        delay, probe = self._retry_delay(exc, backoff)
        self._failed(exc, delay, tenant)
        if probe and delay > self._probe_interval:
            # A refused connection is a failed probe already; a 5xx is not (a probe
            # may not see what made it fail).
            await self._wait_probing(delay, isinstance(exc, PushConnectionError))
        else:
            await self._sleep(delay)

    async def _wait_probing(self, delay: float, seen_down: bool) -> None:
        """Sleep ``delay`` seconds, or less: until a probe sees the endpoint answer
        again after one saw it down."""
        deadline = self._clock() + delay
        timeout = min(self.config.remote_timeout, max(self._probe_interval, 1.0))
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            # A little jitter: agents that lost the same Loki do not all come back at
            # the same instant.
            step = self._probe_interval * (0.9 + 0.2 * self._random())
            await self._sleep(min(remaining, step))
            if self._clock() >= deadline:
                return
            if await self.pusher.probe(timeout):
                if seen_down:
                    _log.debug("%s answers again: retrying now", self.display_url)
                    return
                # Up from the start: the probe cannot see what fails; back off.
                await self._sleep(max(0.0, deadline - self._clock()))
                return
            seen_down = True

    def _failed(self, exc: PushError, delay: float, tenant: str) -> None:
        now = self._clock()
        outage = self._outage
        if outage is None:
            outage = self._outage = _Outage(started=now, last_logged=now)
            self._log_outage_start(exc)
        outage.attempts += 1
        outage.last_error = str(exc)
        self.metrics.batch_retries.labels(self.host, tenant).inc()
        limit = self.config.max_backoff_retries
        if limit and outage.attempts >= limit and not outage.failing:
            outage.failing = True
            outage.last_logged = now
            _log.error(
                "loki.write endpoint %s (%s) failing: %d attempts in a row failed "
                "(max_backoff_retries = %d), last: %s. %d entries are held, not "
                "dropped, and retried at least every %gs (sooner once it answers)",
                self.config.name,
                self.display_url,
                outage.attempts,
                limit,
                exc,
                self.pending_entries,
                self.config.max_backoff_period,
            )
        elif now - outage.last_logged >= _RETRY_LOG_INTERVAL_S:
            outage.last_logged = now
            _log.warning(
                "loki.write endpoint %s (%s) still failing after %.0fs (%d attempts): "
                "%s; %d entries held, next try in %.3gs",
                self.config.name,
                self.display_url,
                now - outage.started,
                outage.attempts,
                exc,
                self.pending_entries,
                delay,
            )
        else:
            _log.debug(
                "error sending batch to %s (tenant %r), retry in %.3fs: %s",
                self.display_url,
                tenant,
                delay,
                exc,
            )

    def _log_outage_start(self, exc: PushError) -> None:
        if isinstance(exc, PushConnectionError):
            _log.warning(
                "loki.write endpoint %s cannot reach %s: %s. Its entries are held, not "
                "dropped, and retried until Loki answers: check the endpoint's url "
                "and that Loki runs and can be reached from here",
                self.config.name,
                self.display_url,
                exc,
            )
        else:
            _log.warning(
                "loki.write endpoint %s: %s %s. Its entries are held, not dropped, "
                "and retried until Loki accepts them",
                self.config.name,
                self.display_url,
                exc,
            )

    def _answered(self) -> None:
        """Loki answered (accepted, or refused for good): an outage is over."""
        outage = self._outage
        if outage is None:
            return
        self._outage = None
        _log.info(
            "loki.write endpoint %s (%s) answers again after %.1fs down (%d failed "
            "attempts); %d entries held meanwhile are being sent",
            self.config.name,
            self.display_url,
            self._clock() - outage.started,
            outage.attempts,
            self.pending_entries,
        )
        # Held streams that waited out the outage need not wait longer.
        for held in self._held.values():
            if held.reason == "outage":
                held.due = self._clock()
        self._held_wakeup.set()

    # -- held streams

    def _hold(
        self,
        tenant: str,
        key: str,
        entries: list[LogEntry],
        deliveries: list[Delivery],
        seq: int,
        reason: str,
        exc: PushError,
    ) -> None:
        """Keep ``entries`` of stream ``key`` for a retry of their own (own backoff)."""
        backoff = self._backoff()
        held = _Held(
            tenant,
            key,
            list(entries),
            deliveries,
            seq,
            reason,
            backoff,
            due=self._clock() + self._held_delay(exc, backoff, reason),
            charged=_entries_cost(entries),
            pending=len(entries),
        )
        self.queued_bytes += held.charged
        ident = (tenant, key)
        current = self._held.get(ident)
        if current is None:
            self._held[ident] = held
        elif current.inflight:
            incoming = self._held_incoming.get(ident)
            if incoming is None:
                self._held_incoming[ident] = held
            else:
                incoming.merge(held)
        else:
            current.merge(held)
        self._held_wakeup.set()

    def _held_delay(self, exc: PushError, backoff: Backoff, reason: str) -> float:
        delay = backoff.next_delay()
        if exc.retry_after is not None:
            return max(0.0, min(exc.retry_after, self.config.max_backoff_period))
        if reason == "rate_limited":
            # A stream's rate limit refills in seconds; the stream limit frees a slot
            # only when some stream goes idle: that one backs off in full.
            return min(delay, RATE_LIMITED_MAX_DELAY_S)
        return delay

    async def _run_held(self) -> None:
        while True:
            waiting = [held for held in self._held.values() if not held.inflight]
            if not waiting:
                self._held_wakeup.clear()
                await self._held_wakeup.wait()
                continue
            held = min(waiting, key=lambda item: item.due)
            delay = held.due - self._clock()
            if delay > 0:
                self._held_wakeup.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._held_wakeup.wait()
                except TimeoutError:
                    pass
                continue
            held.inflight = True
            try:
                await self._retry_held(held)
            finally:
                held.inflight = False
                self._after_held(held)

    async def _retry_held(self, held: _Held) -> None:
        """Push the oldest ``batch_size`` of a held stream's entries once.

        A chunk at a time: Loki (with ``shard_streams``, its default) takes or refuses
        a stream's entries of one push as a whole against the stream's rate limit, so
        a held backlog larger than the limit's burst would never pass in one push.
        """
        tenant, key = held.tenant, held.key
        chunk = _leading_chunk(held.entries, self.config.batch_size)
        rest = held.entries[len(chunk) :]
        streams = [(key, chunk)]
        if len(chunk) >= _THREAD_ENCODE_ENTRIES:
            body = await asyncio.to_thread(_encode_body, streams)
        else:
            body = _encode_body(streams)
        size = len(body)
        answer = await self._attempt(body, tenant)
        if answer is None:
            self._answered()
            self._confirm(tenant, (key,))
            self.metrics.sent_entries.labels(self.host, tenant).inc(len(chunk))
            self.metrics.sent_bytes.labels(self.host, tenant).inc(size)
            held.entries = rest
            held.due = self._clock()  # the next chunk, if any, at once
            return
        exc, refusal = answer
        if self._is_outage(refusal):
            delay, _ = self._retry_delay(exc, held.backoff)
            self._failed(exc, delay, tenant)
            held.reason = "outage"
            held.due = self._clock() + delay
            return
        plan = None
        if refusal is not None and not refusal.whole:
            plan = plan_refusal(
                refusal,
                {key: chunk},
                hold_retriable=self.config.retry_on_http_429,
            )
            if plan.retry_whole:
                held.due = self._clock() + self._held_delay(
                    exc, held.backoff, held.reason
                )
                return
        self._answered()
        assert refusal is not None  # outage-type answers were handled above
        if plan is None or not plan.understood:
            reason = refusal.reason if refusal.understood else _fallback_reason(exc)
            self.metrics.dropped(
                self.host, tenant, reason, len(chunk), entries_size(chunk)
            )
            self._log_refusal(
                "dropping held entries of %s for %s (tenant %r): %d entries refused "
                "(%s): %s%s",
                key,
                self.display_url,
                tenant,
                len(chunk),
                reason,
                exc,
                ""
                if refusal.understood and (plan is None or plan.understood)
                else _quoted(exc),
            )
            held.entries = rest
            held.due = self._clock()
            return
        for reason, (count, dropped_bytes) in plan.dropped.items():
            self.metrics.dropped(self.host, tenant, reason, count, dropped_bytes)
        still = plan.held.get(key, [])
        stored = max(0, len(chunk) - plan.dropped_entries - len(still))
        if stored:
            self.metrics.sent_entries.labels(self.host, tenant).inc(stored)
            self.metrics.sent_bytes.labels(self.host, tenant).inc(size)
        held.entries = still + rest
        if still:
            held.reason = plan.held_reasons[key]
            held.due = self._clock() + self._held_delay(exc, held.backoff, held.reason)
        else:
            held.due = self._clock()

    def _after_held(self, held: _Held) -> None:
        """Settle a held stream that has nothing left, merge what came in meanwhile."""
        ident = (held.tenant, held.key)
        incoming = self._held_incoming.pop(ident, None)
        # What left the stream (stored, or refused for good) leaves the queue.
        self._settled_entries += held.pending - len(held.entries)
        held.pending = len(held.entries)
        charged = _entries_cost(held.entries)
        self.queued_bytes -= held.charged - charged
        held.charged = charged
        if not held.entries:
            deliveries, held.deliveries = held.deliveries, []
            for delivery in deliveries:
                delivery.release()
            if incoming is None:
                del self._held[ident]
            else:
                self._held[ident] = incoming
        elif incoming is not None:
            held.merge(incoming)
        self._space.wake_all()
        self._progress.wake_all()
        self._held_wakeup.set()

    # -- compaction

    async def _run_compactor(self) -> None:
        """Encode batches queued behind the next one: a backlog holds compressed bytes.

        Entries as Python objects take two to three times their line bytes, a compressed
        request a fraction of them: memory stays well inside ``queue_capacity`` when
        Loki is slow or down. The next batch is left alone (the sender is about to take
        it), so a healthy endpoint never encodes twice.
        """
        while True:
            await self._compact_wakeup.wait()
            self._compact_wakeup.clear()
            for batch in self.batcher.ready_batches()[1:]:
                if batch.body is not None or not batch.streams:
                    continue
                try:
                    body = await self._encode(batch)
                except Exception:  # noqa: BLE001 - encoded (and reported) when sent
                    continue
                if batch.body is None:
                    cost = _cost(batch)
                    batch.compact(body)
                    # The queue now holds the compressed bytes: room for more lines.
                    self.queued_bytes -= cost - _cost(batch)
                    self._space.wake_all()

    async def _encode(self, batch: Batch) -> bytes:
        streams = self._ordered_items(batch)
        if batch.entry_count >= _THREAD_ENCODE_ENTRIES:
            return await asyncio.to_thread(_encode_body, streams)
        return _encode_body(streams)

    # -- flush and close

    def _settled_through(self, target: int) -> bool:
        """Whether every batch up to ``target`` was settled, held parts included."""
        if self.done_seq < target:
            return False
        helds = (*self._held.values(), *self._held_incoming.values())
        return all(held.seq > target for held in helds)

    async def flush(self) -> None:
        """Wait until every entry accepted so far has been sent or finally dropped."""
        if self.closed and self._task is None:
            return  # drained already: nothing is left to wait for
        self._check_broken()
        self.batcher.cut_all()
        target = self.batcher.cut_count
        if self._settled_through(target):
            return
        self.start()
        self._wakeup.set()
        while not self._settled_through(target):
            await self._progress.wait()
            self._check_broken()

    def _check_broken(self) -> None:
        if self.broken is not None:
            self._check_usable()

    def stop_intake(self) -> None:
        self.closed = True
        self._space.wake_all()

    async def drain(self, drain_timeout: float) -> None:
        """Send what is queued within ``drain_timeout``; abandon and count the rest."""
        self.draining = True
        self.batcher.cut_all()
        now = self._clock()
        for held in self._held.values():
            held.due = min(held.due, now)  # one more try each, now
        self._held_wakeup.set()
        target = self.batcher.cut_count
        if not self._settled_through(target) and self.broken is None:
            self.start()
            self._wakeup.set()
            try:
                async with asyncio.timeout(drain_timeout):
                    while not self._settled_through(target) and self.broken is None:
                        await self._progress.wait()
            except TimeoutError:
                pass
        tasks = [
            t for t in (self._task, self._compactor, self._held_task) if t is not None
        ]
        self._task = self._compactor = self._held_task = None
        if tasks:
            for task in tasks:
                task.cancel()
            # wait() never raises: a loop that died of a bug was logged by its
            # done-callback.
            await asyncio.wait(tasks)
        abandoned = self._abandon_all()
        if abandoned:
            _log.warning(
                "drain timeout for %s: abandoned %d entries",
                self.display_url,
                abandoned,
            )
        self.done_seq = self.batcher.cut_count
        self._progress.wake_all()
        self.metrics.untrack(self)
        await self.pusher.aclose()

    def _abandon_all(self) -> int:
        """Give up every queued, in-flight and held entry; returns how many."""
        leftovers = self.batcher.take_all()
        if self._inflight is not None:
            leftovers.insert(0, self._inflight)
            self._inflight = None
        count = 0
        for batch in leftovers:
            self.metrics.dropped(
                self.host,
                batch.tenant,
                "drain_timeout",
                batch.entry_count,
                batch.size_bytes,
            )
            self.queued_bytes -= _cost(batch)
            self._settled_entries += batch.entry_count
            count += batch.entry_count
            batch.settle(abandoned=True)
        helds = [*self._held.values(), *self._held_incoming.values()]
        self._held.clear()
        self._held_incoming.clear()
        for held in helds:
            size = entries_size(held.entries) if held.entries else 0
            self.metrics.dropped(
                self.host, held.tenant, "drain_timeout", len(held.entries), size
            )
            self.queued_bytes -= held.charged
            self._settled_entries += held.pending
            count += len(held.entries)
            for delivery in held.deliveries:
                delivery.release(abandoned=True)
        self._space.wake_all()
        return count


def _cost(batch: Batch) -> int:
    """What a batch counts against ``queue_capacity``: the memory its entries take as
    Python objects, or its encoded body once compacted."""
    held = batch.size_bytes + batch.entry_count * ENTRY_OVERHEAD_BYTES
    if batch.body is None:
        return held
    return min(held, len(batch.body))


def _entries_cost(entries: Sequence[LogEntry]) -> int:
    if not entries:
        return 0
    return entries_size(entries) + len(entries) * ENTRY_OVERHEAD_BYTES


def _leading_chunk(entries: list[LogEntry], limit: int) -> list[LogEntry]:
    """The first entries of ``entries`` within ``limit`` bytes (at least one)."""
    total = 0
    for index, entry in enumerate(entries):
        total += entries_size((entry,))
        if total > limit and index:
            return entries[:index]
    return entries


def _encode_body(streams: Sequence[tuple[str, Sequence[LogEntry]]]) -> bytes:
    return compress(encode_push_request(streams))


def _fallback_reason(exc: PushError) -> str:
    """Alloy's reason for a request refused as a whole."""
    return "rate_limited" if isinstance(exc, RateLimitedError) else "ingester_error"


def _quoted(exc: PushError) -> str:
    """Loki's whole answer, for a log line about an answer that was not understood."""
    text = exc.response_text.strip()
    if len(text) > _LOGGED_BODY_CHARS:
        text = text[:_LOGGED_BODY_CHARS] + "..."
    return f" (Loki's answer: {text!r})"


class Writer:
    """Alloy's ``loki.write``: a ``LogsReceiver`` shipping to every configured endpoint.

    Each endpoint has its own queue bounded in bytes (``queue_capacity``: open batches,
    ready batches and the one in flight) and its own send loop, so a dead endpoint never
    slows the others while their queues have room. ``send`` waits while a queue is full
    (lossless backpressure); ``send_nowait`` raises ``WouldBlockError`` instead and
    counts the drop. A batch is admitted while its endpoint's queue is below capacity,
    so a queue ends above it by at most that batch. A batch counts its line and metadata
    bytes (Alloy's measure) until a backlog gets it encoded; from then on it counts its
    compressed size, which leaves room for more lines: an outage buffers several times
    ``queue_capacity`` of logs in about ``queue_capacity`` of memory.

    Delivery: ``send`` takes over the batch's delivery reference whatever happens (it
    retains once per extra endpoint; each endpoint releases its reference when Loki
    accepted the entries or refused them for good, or as abandoned at close). A batch
    Loki took in part is split: the part it refused for now (a 429 naming a stream)
    keeps its references and is retried on its own, while ``send`` of more entries of
    that stream waits; the other streams go on.

    Outages (no answer, 5xx, 429) never drop entries: they are retried until Loki
    answers, ``max_backoff_retries`` only says when the endpoint is reported failing.

    Args:
        endpoints: at least one; names must be unique.
        external_labels: added to every batch; the batch's own labels win.
        max_streams: per-batch stream limit (0 = unlimited).
        registry: where the ``loki_write_*`` metrics go (a private registry if
            ``None``).
        clock: monotonic seconds, for batch ages and retry deadlines.
        random: jitter source for the retry backoff.
        sleep: how retries wait (``asyncio.sleep``).
        probe_interval: seconds between probes of a down endpoint.
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        *,
        external_labels: Mapping[str, str] | None = None,
        max_streams: int = 0,
        registry: CollectorRegistry | None = None,
        metrics: WriteMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        probe_interval: float = PROBE_INTERVAL_S,
    ) -> None:
        if not endpoints:
            raise ConfigError("at least one endpoint config must be provided")
        names = [endpoint.name for endpoint in endpoints]
        if len(set(names)) != len(names):
            raise ConfigError(
                "duplicate endpoint configs are not allowed, found duplicate names"
            )
        if max_streams < 0:
            raise ConfigError("max_streams must be >= 0")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = metrics if metrics is not None else WriteMetrics(self.registry)
        self._external = dict(external_labels or {})
        self._endpoints = [
            _Endpoint(
                e,
                self.metrics,
                max_streams=max_streams,
                clock=clock,
                random_source=random,
                sleep=sleep,
                probe_interval=probe_interval,
            )
            for e in endpoints
        ]
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self.metrics.writers.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def queued_bytes(self) -> dict[str, int]:
        """Bytes held per endpoint name (open, ready, in-flight and held entries)."""
        return {e.config.name: e.queued_bytes for e in self._endpoints}

    def endpoint_states(self) -> list[dict[str, Any]]:
        """Each endpoint's state for debug pages: name, URL (no userinfo), whether it
        is failing, pending entries, held streams. Never a credential."""
        return [endpoint.state() for endpoint in self._endpoints]

    async def start(self) -> None:
        """Start the send loops (``send`` also starts them on first use)."""
        for endpoint in self._endpoints:
            endpoint.start()

    def _prepare(self, batch: StreamBatch) -> StreamBatch:
        if self._closed:
            raise ClosedError("loki.write is closed")
        if self._external:
            return StreamBatch(
                {**self._external, **batch.labels}, batch.entries, batch.delivery
            )
        return batch

    async def send(self, batch: StreamBatch) -> None:
        """Queue ``batch`` on every endpoint, waiting while a queue is full or the
        batch's stream is held.

        Raises:
            ClosedError: the writer is closed (the delivery is then released as
                abandoned).
            BrokenError: an endpoint's send loop died of a bug (also released as
                abandoned).
        """
        if self._closed:
            batch.settle(abandoned=True)
            raise ClosedError("loki.write is closed")
        batch = self._prepare(batch)
        endpoints = self._endpoints
        delivery = batch.delivery
        if delivery is not None and len(endpoints) > 1:
            delivery.retain(len(endpoints) - 1)
        handed = 0
        try:
            waiting = []
            for endpoint in endpoints:
                endpoint.start()
                # accepts(), inlined: this is the path of every line.
                if endpoint.has_room() and not (
                    endpoint._held and endpoint._holds(batch)
                ):
                    endpoint.put_nowait(batch)
                    handed += 1
                else:
                    waiting.append(endpoint)
            for endpoint in waiting:
                await endpoint.put(batch)
                handed += 1
        finally:
            if delivery is not None:
                for _ in range(len(endpoints) - handed):
                    delivery.release(abandoned=True)

    def send_nowait(self, batch: StreamBatch) -> None:
        """Queue ``batch`` on every endpoint now, or on none.

        Raises:
            WouldBlockError: some endpoint's queue is full (or holds the batch's
                stream); ``queue_is_full`` is counted for those endpoints, nothing was
                queued and the delivery reference stays yours.
            ClosedError: the writer is closed. BrokenError: an endpoint's send loop
                died of a bug.
        """
        batch = self._prepare(batch)
        for endpoint in self._endpoints:
            if endpoint.broken is not None:
                endpoint.put_nowait(batch)  # raises BrokenError, queues nothing
        full = [endpoint for endpoint in self._endpoints if not endpoint.accepts(batch)]
        if full:
            for endpoint in full:
                endpoint.count_dropped(batch, "queue_is_full")
            raise WouldBlockError("loki.write queue is full")
        if batch.delivery is not None and len(self._endpoints) > 1:
            batch.delivery.retain(len(self._endpoints) - 1)
        for endpoint in self._endpoints:
            endpoint.start()
            endpoint.put_nowait(batch)

    def count_dropped(self, batch: StreamBatch, reason: str) -> None:
        """Count entries dropped before they reached the writer (e.g. a full facade
        buffer)."""
        batch = StreamBatch({**self._external, **batch.labels}, batch.entries)
        for endpoint in self._endpoints:
            endpoint.count_dropped(batch, reason)

    async def flush(self) -> None:
        """Wait until everything queued so far was sent (or finally dropped), on every
        endpoint."""
        await asyncio.gather(*(endpoint.flush() for endpoint in self._endpoints))

    async def aclose(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, send what is queued within the drain timeout, abandon the
        rest.

        ``drain_timeout`` overrides each endpoint's own. Idempotent: a second call waits
        for the first to finish.
        """
        if self._close_task is None:
            self._closed = True
            for endpoint in self._endpoints:
                endpoint.stop_intake()
            self._close_task = asyncio.get_running_loop().create_task(
                self._drain_all(drain_timeout)
            )
        # Shielded so a cancelled caller cannot cut the drain short and leak deliveries.
        await asyncio.shield(self._close_task)

    async def _drain_all(self, drain_timeout: float | None) -> None:
        await asyncio.gather(
            *(
                endpoint.drain(
                    endpoint.config.drain_timeout
                    if drain_timeout is None
                    else drain_timeout
                )
                for endpoint in self._endpoints
            )
        )

    async def __aenter__(self) -> Writer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
