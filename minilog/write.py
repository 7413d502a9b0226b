"""``loki.write``: fan-out to endpoints, each with its own bounded queue and send loop.

Owns ``EndpointConfig`` (Alloy's ``endpoint`` arguments and defaults), the ``Writer``
``LogsReceiver``, backpressure, backlog compaction, the retry loop around
``push.LokiPusher``, delivery settlement, drain on close and the ``loki_write_*``
metrics. Batching rules live in ``batch.py``, HTTP in ``push.py``, the wire format in
``encode.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import TracebackType
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minilog.batch import Batch, Batcher, entries_size
from minilog.encode import compress, encode_push_request
from minilog.errors import (
    ClosedError,
    ConfigError,
    PushError,
    RateLimitedError,
    WouldBlockError,
)
from minilog.model import LogEntry, StreamBatch
from minilog.push import Backoff, BasicAuth, LokiPusher, TLSConfig

__all__ = [
    "DROP_REASONS",
    "ENTRY_OVERHEAD_BYTES",
    "EndpointConfig",
    "WriteMetrics",
    "Writer",
]

_log = logging.getLogger("minilog.write")

#: Alloy's drop reasons, pre-initialised per tenant; ``drain_timeout`` is minilog's own
#: (entries still queued when ``aclose`` gave up).
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

_ONE_CREDENTIAL = (
    "at most one of basic_auth, bearer_token & bearer_token_file must be configured"
)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One ``endpoint`` block of ``loki.write``: Alloy's names, Alloy's defaults.

    Durations are seconds, sizes bytes. ``queue_capacity`` is Alloy's
    ``queue_config.capacity`` and ``drain_timeout`` its ``queue_config.drain_timeout``.
    ``name`` defaults to the first 6 hex digits of a SHA-256 of the configuration.
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
            problems.append(f"endpoint url {self.url!r} must be an http(s) URL")
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
            text = repr(
                [
                    (f.name, getattr(self, f.name))
                    for f in fields(self)
                    if f.name != "name"
                ]
            )
            object.__setattr__(
                self, "name", hashlib.sha256(text.encode()).hexdigest()[:6]
            )

    @property
    def host(self) -> str:
        """The ``host`` metric label: the URL's host[:port]."""
        return urlsplit(self.url).netloc


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


class _Endpoint:
    """One endpoint: a Batcher with capped bytes (open, ready, in flight), a sender."""

    def __init__(
        self,
        config: EndpointConfig,
        metrics: WriteMetrics,
        *,
        max_streams: int,
        clock: Callable[[], float],
        random_source: Callable[[], float],
    ) -> None:
        self.config = config
        self.host = config.host
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
        self._space = _Waiters()
        self._progress = _Waiters()
        self._wakeup = asyncio.Event()
        self._compact_wakeup = asyncio.Event()
        self._compactor: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: Batch | None = None
        self.done_seq = 0
        self.closed = False
        self.draining = False

    # -- intake

    def has_room(self) -> bool:
        return (
            self.queued_bytes + self._working_set < self.capacity
            and not self._compaction_behind()
        )

    def _compaction_behind(self) -> bool:
        """Whether more ready batches wait uncompressed than the compactor handles.

        A producer faster than the encoder would otherwise fill the whole queue with
        entries as Python objects; the allocator keeps that high-water mark after they
        are compacted, and the compressed bodies then come on top of it.
        """
        ready = self.batcher.ready_batches()
        behind = sum(1 for batch in ready[1:] if batch.body is None and batch.streams)
        return behind > _MAX_UNCOMPACTED

    def put_nowait(self, batch: StreamBatch) -> None:
        if self.closed:
            raise ClosedError("loki.write is closed")
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
                body = _encode_body(batch.stream_items())
            except Exception:  # noqa: BLE001 - the sender encodes it again and reports
                continue
            held = _held(batch)
            batch.body = body
            batch.streams = {}
            self.queued_bytes -= held - _held(batch)

    async def put(self, batch: StreamBatch) -> None:
        while not self.has_room():
            if self.closed:
                raise ClosedError("loki.write is closed")
            if self._inflight is None and not self.batcher.ready_count:
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

    # -- sending

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"loki.write endpoint {self.config.name}"
            )
            self._task.add_done_callback(self._task_done)
            self._compactor = asyncio.get_running_loop().create_task(
                self._run_compactor(), name=f"loki.write compactor {self.config.name}"
            )
            self._compactor.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _log.error(
                "endpoint %s send loop failed", self.host, exc_info=task.exception()
            )

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

    async def _deliver(self, batch: Batch) -> None:
        self._inflight = batch
        host, tenant = self.host, batch.tenant
        self.metrics.see_tenant(host, tenant)
        try:
            body = batch.body if batch.body is not None else await self._encode(batch)
        except Exception:  # noqa: BLE001 - a bug in encoding must not kill the send loop
            _log.exception(
                "cannot encode batch for %s, dropping %d entries",
                host,
                batch.entry_count,
            )
            self._finish(batch, "ingester_error", batch.size_bytes)
            return
        size = len(body)
        self.metrics.encoded_bytes.labels(host).inc(size)
        self.metrics.request_size.labels(host, tenant).observe(size)
        config = self.config
        backoff = Backoff(
            config.min_backoff_period,
            config.max_backoff_period,
            config.max_backoff_retries,
            random=self._random,
        )
        attempts = 0
        while True:
            attempts += 1
            started = time.perf_counter()
            try:
                status = await self.pusher.push(body, tenant=tenant)
            except PushError as exc:
                self.metrics.request_duration.labels(
                    str(exc.status or -1), host, tenant
                ).observe(time.perf_counter() - started)
                reason = (
                    "rate_limited"
                    if isinstance(exc, RateLimitedError)
                    else "ingester_error"
                )
                if isinstance(exc, RateLimitedError) and not config.retry_on_http_429:
                    _log.warning(
                        "dropping batch for %s (tenant %r): %s", host, tenant, exc
                    )
                elif not exc.retriable:
                    _log.error(
                        "dropping batch for %s (tenant %r): %d entries not retried: %s",
                        host,
                        tenant,
                        batch.entry_count,
                        exc,
                    )
                elif (
                    config.max_backoff_retries
                    and attempts >= config.max_backoff_retries
                ):
                    _log.error(
                        "final error sending batch to %s (tenant %r), no retries left, "
                        "dropping data: %s",
                        host,
                        tenant,
                        exc,
                    )
                else:
                    delay = backoff.next_delay()
                    self.metrics.batch_retries.labels(host, tenant).inc()
                    _log.warning(
                        "error sending batch to %s (tenant %r), retry in %.3fs: %s",
                        host,
                        tenant,
                        delay,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    continue
                self._finish(batch, reason, size)
                return
            except asyncio.CancelledError:
                self.metrics.request_duration.labels("-1", host, tenant).observe(
                    time.perf_counter() - started
                )
                raise
            self.metrics.request_duration.labels(str(status), host, tenant).observe(
                time.perf_counter() - started
            )
            self.metrics.sent_entries.labels(host, tenant).inc(batch.entry_count)
            self.metrics.sent_bytes.labels(host, tenant).inc(size)
            self._finish(batch, None, 0)
            return

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
                    held = _held(batch)
                    batch.body = body
                    batch.streams = {}
                    # The queue now holds the compressed bytes: room for more lines.
                    self.queued_bytes -= held - _held(batch)
                    self._space.wake_all()

    async def _encode(self, batch: Batch) -> bytes:
        streams = batch.stream_items()
        if batch.entry_count >= _THREAD_ENCODE_ENTRIES:
            return await asyncio.to_thread(_encode_body, streams)
        return _encode_body(streams)

    def _finish(
        self, batch: Batch, drop_reason: str | None, dropped_bytes: int
    ) -> None:
        if drop_reason is not None:
            self.metrics.dropped(
                self.host, batch.tenant, drop_reason, batch.entry_count, dropped_bytes
            )
        self._inflight = None
        self.queued_bytes -= _held(batch)
        self.done_seq = batch.seq
        batch.settle()
        self._space.wake_all()
        self._progress.wake_all()

    # -- flush and close

    async def flush(self) -> None:
        """Wait until every entry accepted so far has been sent or finally dropped."""
        if self.closed and self._task is None:
            return  # drained already: nothing is left to wait for
        self.batcher.cut_all()
        target = self.batcher.cut_count
        if self.done_seq >= target:
            return
        self.start()
        self._wakeup.set()
        while self.done_seq < target:
            await self._progress.wait()

    def stop_intake(self) -> None:
        self.closed = True
        self._space.wake_all()

    async def drain(self, drain_timeout: float) -> None:
        """Send what is queued within ``drain_timeout``; abandon and count the rest."""
        self.draining = True
        self.batcher.cut_all()
        if self.batcher.ready_count or self._inflight is not None:
            self.start()
            self._wakeup.set()
            target = self.batcher.cut_count
            try:
                async with asyncio.timeout(drain_timeout):
                    while self.done_seq < target:
                        await self._progress.wait()
            except TimeoutError:
                pass
        tasks = [t for t in (self._task, self._compactor) if t is not None]
        self._task = self._compactor = None
        if tasks:
            for task in tasks:
                task.cancel()
            # wait() never raises: a loop that died of a bug was logged by its
            # done-callback.
            await asyncio.wait(tasks)
        leftovers = self.batcher.take_all()
        if self._inflight is not None:
            leftovers.insert(0, self._inflight)
            self._inflight = None
        for batch in leftovers:
            self.metrics.dropped(
                self.host,
                batch.tenant,
                "drain_timeout",
                batch.entry_count,
                batch.size_bytes,
            )
            self.queued_bytes -= _held(batch)
            batch.settle(abandoned=True)
        if leftovers:
            _log.warning(
                "drain timeout for %s: abandoned %d entries",
                self.host,
                sum(batch.entry_count for batch in leftovers),
            )
        self.done_seq = self.batcher.cut_count
        self._progress.wake_all()
        await self.pusher.aclose()


def _held(batch: Batch) -> int:
    """What a batch counts against ``queue_capacity``: the memory its entries take as
    Python objects, or its encoded body once compacted."""
    held = batch.size_bytes + batch.entry_count * ENTRY_OVERHEAD_BYTES
    if batch.body is None:
        return held
    return min(held, len(batch.body))


def _encode_body(streams: Sequence[tuple[str, Sequence[LogEntry]]]) -> bytes:
    return compress(encode_push_request(streams))


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
    accepted the entries or they were finally dropped, or as abandoned at close).

    Args:
        endpoints: at least one; names must be unique.
        external_labels: added to every batch; the batch's own labels win.
        max_streams: per-batch stream limit (0 = unlimited).
        registry: where the ``loki_write_*`` metrics go (a private registry if
            ``None``).
        clock: monotonic seconds, for batch ages.
        random: jitter source for the retry backoff.
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
        """Bytes held per endpoint name (open, ready and in-flight batches)."""
        return {e.config.name: e.queued_bytes for e in self._endpoints}

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
        """Queue ``batch`` on every endpoint, waiting while a queue is full.

        Raises:
            ClosedError: the writer is closed (the delivery is then released as
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
                if endpoint.has_room():
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
            WouldBlockError: some endpoint's queue is full; ``queue_is_full`` is counted
                for those endpoints, nothing was queued and the delivery reference stays
                yours.
            ClosedError: the writer is closed.
        """
        batch = self._prepare(batch)
        full = [endpoint for endpoint in self._endpoints if not endpoint.has_room()]
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
