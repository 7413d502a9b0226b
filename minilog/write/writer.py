"""``loki.write``'s ``Writer``: the ``LogsReceiver`` that fans batches out to endpoints.

Each endpoint is ``min_shards`` shards, each an ``accumulator.Accumulator`` (its
bounded queue) and a ``sender.Sender`` (the task that ships it), as aiokafka pairs a
``MessageAccumulator`` with a ``Sender`` under its producer facade. The writer owns
them: it starts their senders, waits for them on ``flush``, and drains them on
``aclose``. It owns the fan-out rules too: a batch goes to one shard of every endpoint
(always the same one for its stream), on every endpoint or (``send_nowait``) on none,
and its delivery reference is split across them.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.errors import ClosedError, ConfigError, WouldBlockError
from minilog.loki.push import PushTransport
from minilog.loki.wire import encode_push_request_buffer
from minilog.model import StreamBatch
from minilog.write.accumulator import Accumulator, Encoder
from minilog.write.config import EndpointConfig, pusher_for
from minilog.write.metrics import WriteMetrics
from minilog.write.sender import PROBE_INTERVAL_S, EndpointHealth, Sender

__all__ = ["TransportFactory", "Writer"]

#: Builds one endpoint's HTTP side from its config (``pusher_for`` by default).
TransportFactory = Callable[[EndpointConfig], PushTransport]


class _Endpoint:
    """One ``endpoint`` block: its shards (a queue and a send loop each), and which
    shard a stream goes to."""

    __slots__ = ("config", "shards")

    def __init__(self, config: EndpointConfig, senders: Sequence[Sender]) -> None:
        self.config = config
        self.shards = [(sender, sender.accumulator) for sender in senders]

    def route(self, labels: dict[str, str]) -> tuple[Sender, Accumulator]:
        shards = self.shards
        if len(shards) == 1:
            return shards[0]
        # By the stream Loki sees (labels without __*, and its tenant), so a stream's
        # entries leave in order from one send loop and its held retries stay in one
        # queue. Alloy hashes every label, __* ones included.
        key, tenant = shards[0][1].batcher.stream_key(labels)
        index = zlib.crc32(f"{tenant}\xff{key}".encode()) % len(shards)
        return shards[index]

    def state(self) -> dict[str, Any]:
        """The endpoint as debug pages show it: its shards' states summed up (the
        outage is the endpoint's, shared by its shards)."""
        states = [sender.state() for sender, _ in self.shards]
        return {
            **states[0],
            "pending_entries": sum(st["pending_entries"] for st in states),
            "held_streams": sorted({k for st in states for k in st["held_streams"]}),
            "queued_bytes": sum(st["queued_bytes"] for st in states),
            "shards": len(states),
        }


class Writer:
    """Alloy's ``loki.write``: a ``LogsReceiver`` shipping to every configured endpoint.

    Each endpoint has ``min_shards`` queues bounded in bytes (``queue_capacity`` each:
    open batches, ready batches and the one in flight) and a send loop per queue, so a
    dead endpoint never slows the others while their queues have room. ``send`` waits
    while a queue is full (lossless backpressure), or drops and counts
    ``queue_is_full`` with ``block_on_overflow = false``; ``send_nowait`` raises
    ``WouldBlockError`` instead of waiting and counts the drop. A batch is admitted
    while its queue is below capacity, so a queue ends above it by at most that batch.
    A batch counts its line and metadata bytes (Alloy's measure) until a backlog gets
    it encoded; from then on it counts its compressed size, which leaves room for more
    lines: an outage buffers several times ``queue_capacity`` of logs in about
    ``queue_capacity`` of memory.

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
        transport: builds each endpoint's HTTP side (a fake in tests).
        encode: the push-request encoder (compression is added after it).
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
        transport: TransportFactory = pusher_for,
        encode: Encoder = encode_push_request_buffer,
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
        self._endpoints: list[_Endpoint] = []
        for config in endpoints:
            health = EndpointHealth(clock)
            shards = config.shards
            senders = [
                Sender(
                    config,
                    Accumulator(
                        config,
                        max_streams=max_streams,
                        clock=clock,
                        on_drop=functools.partial(self.metrics.dropped, config.host),
                        encode=encode,
                    ),
                    self.metrics,
                    transport=transport(config),
                    clock=clock,
                    random=random,
                    sleep=sleep,
                    probe_interval=probe_interval,
                    health=health,
                    task_name=config.name if shards == 1 else f"{config.name}/{i}",
                )
                for i in range(shards)
            ]
            self._endpoints.append(_Endpoint(config, senders))
        self._senders = [s for ep in self._endpoints for s, _ in ep.shards]
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self.metrics.writers.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def queued_bytes(self) -> dict[str, int]:
        """Bytes held per endpoint name (open, ready, in-flight and held entries)."""
        return {
            ep.config.name: sum(acc.queued_bytes for _, acc in ep.shards)
            for ep in self._endpoints
        }

    def queue_sizes(self) -> Iterator[tuple[str, int, int | None]]:
        """``(host, bytes held, capacity)`` per shard; no capacity once closed (a
        writer draining after a reload holds bytes but takes no more)."""
        for sender in self._senders:
            acc = sender.accumulator
            yield sender.host, acc.queued_bytes, None if self._closed else acc.capacity

    def endpoint_states(self) -> list[dict[str, Any]]:
        """Each endpoint's state for debug pages: name, URL (no userinfo), whether it
        is failing, pending entries, held streams, shards. Never a credential."""
        return [ep.state() for ep in self._endpoints]

    async def start(self) -> None:
        """Start the send tasks (``send`` also starts them on first use)."""
        for sender in self._senders:
            sender.start()

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
            BrokenError: an endpoint's send task died of a bug (also released as
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
                sender, acc = endpoint.route(batch.labels)
                sender.start()
                # accepts(), less the closed check put_nowait makes: every line's path.
                if acc.has_room() and not acc.holds(batch):
                    acc.put_nowait(batch)
                elif endpoint.config.block_on_overflow:
                    waiting.append(acc)
                    continue
                else:
                    _overflow(acc, batch)
                handed += 1
            for acc in waiting:
                await acc.put(batch)
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
            ClosedError: the writer is closed. BrokenError: an endpoint's send task
                died of a bug.
        """
        batch = self._prepare(batch)
        routed = [(ep, *ep.route(batch.labels)) for ep in self._endpoints]
        for _, _, acc in routed:
            if acc.broken is not None:
                acc.check_usable()  # raises BrokenError, queues nothing
        full = [
            acc
            for ep, _, acc in routed
            if ep.config.block_on_overflow and not acc.accepts(batch)
        ]
        if full:
            for acc in full:
                acc.count_dropped(batch, "queue_is_full")
            raise WouldBlockError("loki.write queue is full")
        if batch.delivery is not None and len(routed) > 1:
            batch.delivery.retain(len(routed) - 1)
        for ep, sender, acc in routed:
            sender.start()
            if ep.config.block_on_overflow or acc.accepts(batch):
                acc.put_nowait(batch)
            else:
                _overflow(acc, batch)

    def count_dropped(self, batch: StreamBatch, reason: str) -> None:
        """Count entries dropped before they reached the writer (e.g. a full facade
        buffer)."""
        batch = StreamBatch({**self._external, **batch.labels}, batch.entries)
        for ep in self._endpoints:
            ep.shards[0][1].count_dropped(batch, reason)

    async def flush(self) -> None:
        """Wait until everything queued so far was sent (or finally dropped), on every
        endpoint."""
        await asyncio.gather(*(sender.flush() for sender in self._senders))

    async def aclose(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, send what is queued within the drain timeout, abandon the
        rest.

        ``drain_timeout`` overrides each endpoint's own. Idempotent: a second call waits
        for the first to finish.
        """
        if self._close_task is None:
            self._closed = True
            for sender in self._senders:
                sender.accumulator.close()
            self._close_task = asyncio.get_running_loop().create_task(
                self._drain_all(drain_timeout)
            )
        # Shielded so a cancelled caller cannot cut the drain short and leak deliveries.
        await asyncio.shield(self._close_task)

    async def _drain_all(self, drain_timeout: float | None) -> None:
        await asyncio.gather(
            *(
                sender.drain(
                    sender.config.drain_timeout
                    if drain_timeout is None
                    else drain_timeout
                )
                for sender in self._senders
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


def _overflow(acc: Accumulator, batch: StreamBatch) -> None:
    """``block_on_overflow = false`` and no room: the endpoint drops the batch, as
    Alloy does (``queue_is_full``), and its delivery reference settles (the source
    moves on; nothing will send these entries again)."""
    acc.check_usable()
    acc.count_dropped(batch, "queue_is_full")
    if batch.delivery is not None:
        batch.delivery.release()
