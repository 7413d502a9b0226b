"""One endpoint's queue: the byte budget, encode-on-fill, compaction and held streams.

The producer side of an endpoint, as aiokafka's ``MessageAccumulator`` is its
producer's: ``put`` admits a ``StreamBatch`` while the queue is below
``queue_capacity`` and waits otherwise (``put_nowait`` refuses instead), a
``batch.Batcher`` cuts batches, and ready batches wait in a FIFO for the sender,
either as entries or, once encoded, as their compressed request (``Encoded``): a
backlog then costs a fraction of its entries' memory. What Loki refused for now (a 429
naming a stream) waits here too, per stream (``Held``), and a ``put`` of that stream
waits until it is released. The sender (``sender.py``) takes work from here, settles
it, and breaks the queue when it dies, which fails every waiting producer.

No I/O: encoding is the encoder passed in; only its thread hand-off and the waiters
touch asyncio.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from minilog.backoff import Backoff
from minilog.errors import BrokenError, ClosedError
from minilog.loki.wire import compress, encode_push_request_buffer
from minilog.model import Delivery, LogEntry, StreamBatch, entries_size
from minilog.write.batch import Batch, Batcher, DeliveryRefs, DropCallback
from minilog.write.config import EndpointConfig

__all__ = [
    "DELIVERY_OVERHEAD_BYTES",
    "ENTRY_OVERHEAD_BYTES",
    "THREAD_ENCODE_ENTRIES",
    "Accumulator",
    "ConfirmedStreams",
    "Encoded",
    "Encoder",
    "Held",
    "Pending",
    "encode_body",
    "entries_cost",
    "leading_chunk",
]

#: Encodes a push request: ``(labels, entries)`` pairs to protobuf bytes.
Encoder = Callable[[Sequence[tuple[str, Sequence[LogEntry]]]], bytes | bytearray]

#: What one queued entry costs beyond its line bytes in CPython: the LogEntry tuple
#: with its GC header (80), the str header (49), the int timestamp (32), a list slot
#: (8) and allocator rounding.
#: Counting it keeps the queue's real memory under ``queue_capacity`` (line bytes alone
#: let a queue of short lines take several times its bound).
ENTRY_OVERHEAD_BYTES = 200
#: What one delivery reference held here keeps allocated until it settles: the
#: ``Delivery`` (64 bytes), what its callback keeps of the source's read (for
#: ``loki.source.docker`` and ``loki.source.file`` the ledger's ``Chunk``, 80, and its
#: position, 32) and the slots pointing at them (32, and the stream's newest delivery).
#: A batch keeps one per delivery and stream; uncounted, a source making one delivery
#: per read of a few lines left records in a stalled queue that took as much memory as
#: the compressed lines they covered.
DELIVERY_OVERHEAD_BYTES = 256
#: Batches with more entries are encoded in a worker thread, so a 1 MiB batch cannot
#: stall the loop for its whole encode (the thread yields the GIL every switch
#: interval).
THREAD_ENCODE_ENTRIES = 2000
#: Ready batches allowed to wait uncompressed behind the next one before ``put`` waits.
_MAX_UNCOMPACTED = 2
#: A batch filled to at least this many line bytes is encoded as soon as it is full.
_ENCODE_ON_FILL_MIN_BYTES = 32 << 10
#: Streams Loki accepted within this long are taken to exist on its side (its
#: ``chunk_idle_period`` forgets idle streams after 30 minutes by default).
_CONFIRMED_FOR_S = 600.0
_CONFIRMED_MAX = 65536


def encode_body(
    streams: Sequence[tuple[str, Sequence[LogEntry]]],
    encode: Encoder = encode_push_request_buffer,
) -> bytes:
    """A push request as it is sent: encoded, then snappy-compressed."""
    return compress(encode(streams))


@dataclass(slots=True, eq=False)
class Encoded:
    """A ready batch that waits as its compressed request: the entries are gone, the
    stream keys and the delivery references stay."""

    tenant: str
    seq: int
    keys: tuple[str, ...]
    body: bytes
    entry_count: int
    size_bytes: int
    refs: DeliveryRefs

    @classmethod
    def of(cls, batch: Batch, body: bytes) -> Encoded:
        return cls(
            batch.tenant,
            batch.seq,
            batch.stream_keys(),
            body,
            batch.entry_count,
            batch.size_bytes,
            batch.refs,
        )

    def stream_keys(self) -> tuple[str, ...]:
        return self.keys

    def take_deliveries(self, keys: set[str] | frozenset[str]) -> list[Delivery]:
        return self.refs.take(keys)

    def settle(self, *, abandoned: bool = False) -> None:
        self.refs.settle(abandoned=abandoned)


#: What waits for the sender: a batch of entries, or its encoded request.
Pending = Batch | Encoded


def cost(item: Pending) -> int:
    """What a queued item counts against ``queue_capacity``: the memory its entries
    take as Python objects, or its encoded body once compacted, and what its delivery
    references keep alive."""
    held = item.size_bytes + item.entry_count * ENTRY_OVERHEAD_BYTES
    refs = len(item.refs) * DELIVERY_OVERHEAD_BYTES
    if isinstance(item, Batch):
        return held + refs
    return min(held, len(item.body)) + refs


def entries_cost(entries: Sequence[LogEntry]) -> int:
    if not entries:
        return 0
    return entries_size(entries) + len(entries) * ENTRY_OVERHEAD_BYTES


def leading_chunk(entries: list[LogEntry], limit: int) -> list[LogEntry]:
    """The first entries of ``entries`` within ``limit`` bytes (at least one)."""
    total = 0
    for index, entry in enumerate(entries):
        total += entries_size((entry,))
        if total > limit and index:
            return entries[:index]
    return entries


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
class Held:
    """Entries of one stream Loki refused for now, retried on their own.

    ``seq`` is the oldest batch they came from (``flush`` waits for it); ``charged``
    what the entries count against ``queue_capacity`` (the delivery references stay
    counted as they were in their batch, until released).
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

    def merge(self, other: Held) -> None:
        self.entries.extend(other.entries)
        self.deliveries.extend(other.deliveries)
        self.charged += other.charged
        self.pending += other.pending
        self.seq = min(self.seq, other.seq)


class ConfirmedStreams:
    """When Loki last accepted each stream, per tenant.

    Loki's ingester reports only the last stream of a request that failed: streams it
    took lately go first in a request (a new stream refused over the stream limit is
    then the one reported), and a refusal naming no stream is pinned on the streams
    not confirmed lately.
    """

    __slots__ = ("_clock", "_seen")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: dict[str, dict[str, float]] = {}

    def confirm(self, tenant: str, keys: Sequence[str]) -> None:
        seen = self._seen.get(tenant)
        if seen is None:
            seen = self._seen[tenant] = {}
        elif len(seen) >= _CONFIRMED_MAX:
            seen.clear()
        now = self._clock()
        for key in keys:
            seen[key] = now

    def unconfirmed(self, tenant: str, keys: Sequence[str]) -> set[str]:
        seen = self._seen.get(tenant) or {}
        horizon = self._clock() - _CONFIRMED_FOR_S
        return {key for key in keys if seen.get(key, -1e18) < horizon}

    def ordered(self, batch: Batch) -> list[tuple[str, list[LogEntry]]]:
        """The batch's streams, those Loki accepted lately first."""
        items = batch.stream_items()
        seen = self._seen.get(batch.tenant)
        if seen and len(items) > 1:
            horizon = self._clock() - _CONFIRMED_FOR_S
            items.sort(key=lambda item: seen.get(item[0], -1e18) < horizon)
        return items


class Accumulator:
    """One endpoint's bounded queue: open batches, ready ones, the one in flight and
    held streams, all counted against ``queue_capacity``.

    Args:
        config: the endpoint (``batch_size``, ``batch_wait``, ``tenant_id``,
            ``queue_capacity``, ``adaptive_batching``, ``batch_linger``).
        max_streams: per-batch stream limit (0 = unlimited).
        clock: monotonic seconds.
        on_drop: told of entries dropped here, as ``(tenant, reason, entries,
            bytes)``.
        encode: the push-request encoder (compression is added here).
    """

    __slots__ = (
        "_encode",
        "_endpoint",
        "_on_drop",
        "_progress",
        "_ready",
        "_space",
        "_working_set",
        "batcher",
        "broken",
        "capacity",
        "closed",
        "compact_event",
        "confirmed",
        "done_seq",
        "held",
        "held_event",
        "held_incoming",
        "inflight",
        "queued_bytes",
        "ready_event",
        "settled_entries",
    )

    def __init__(
        self,
        config: EndpointConfig,
        *,
        max_streams: int,
        clock: Callable[[], float],
        on_drop: DropCallback,
        encode: Encoder = encode_push_request_buffer,
    ) -> None:
        self._endpoint = f"{config.name} ({config.display_url})"
        self.capacity = config.queue_capacity
        self.queued_bytes = 0
        # Batches being filled, sent and encoded live as Python objects, and the
        # allocator keeps their memory once they are compressed or gone: that working
        # set is set aside from the capacity, so compressed bodies cannot come on top.
        # A third: with a quarter, outages still peaked 0.1-0.6 MB over the bound
        # (``minilog bench outage kill``).
        self._working_set = min(
            config.queue_capacity // 3,
            (_MAX_UNCOMPACTED + 3) * config.batch_size * 4,
        )
        self.batcher = Batcher(
            batch_size=config.batch_size,
            batch_wait=config.batch_wait,
            max_streams=max_streams,
            tenant_id=config.tenant_id,
            clock=clock,
            on_drop=on_drop,
            linger=config.batch_linger if config.adaptive_batching else None,
        )
        self._on_drop = on_drop
        self._encode = encode
        self._ready: deque[Pending] = deque()
        self._space = _Waiters()
        self._progress = _Waiters()
        #: Set when the sender has work: a ready batch, or an open one to time.
        self.ready_event = asyncio.Event()
        #: Set when ready batches queue up behind the next one (compaction).
        self.compact_event = asyncio.Event()
        #: Set when a held stream was added or became due.
        self.held_event = asyncio.Event()
        self.inflight: Pending | None = None
        #: Streams Loki refused for now, by (tenant, stream key); ``put`` of a batch
        #: for one of them waits until it is released.
        self.held: dict[tuple[str, str], Held] = {}
        #: Entries refused for a held stream while its own retry was in flight.
        self.held_incoming: dict[tuple[str, str], Held] = {}
        self.confirmed = ConfirmedStreams(clock)
        self.settled_entries = 0
        #: ``seq`` of the last batch settled (``flush`` waits for its target).
        self.done_seq = 0
        self.closed = False
        #: Why the queue cannot be used any more (the sender died of a bug).
        self.broken: BaseException | None = None

    # -- state

    @property
    def pending_entries(self) -> int:
        return self.batcher.added_entries - self.settled_entries

    @property
    def held_stream_count(self) -> int:
        return len(self.held)

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def cut_count(self) -> int:
        """Batches cut so far: ``flush`` waits until every one of them settled."""
        return self.batcher.cut_count

    # -- intake

    def has_room(self) -> bool:
        return (
            self.queued_bytes + self._working_set < self.capacity
            and not self._compaction_behind()
        )

    def holds(self, batch: StreamBatch) -> bool:
        """Whether the batch's stream is held (Loki refused it for now)."""
        if not self.held:
            return False
        key, tenant = self.batcher.stream_key(batch.labels)
        return (tenant, key) in self.held

    def accepts(self, batch: StreamBatch) -> bool:
        """Room in the queue, the batch's stream is not held, the queue is open."""
        if self.closed or not self.has_room():
            return False
        return not self.holds(batch)

    def _compaction_behind(self) -> bool:
        """Whether more ready batches wait uncompressed than the compactor handles.

        A producer faster than the encoder would otherwise fill the whole queue with
        entries as Python objects; the allocator keeps that high-water mark after they
        are compacted, and the compressed bodies then come on top of it.
        """
        if len(self._ready) <= _MAX_UNCOMPACTED + 1:
            return False  # too few to be behind: the common case, on every put
        ready = list(self._ready)
        behind = sum(
            1 for item in ready[1:] if isinstance(item, Batch) and item.streams
        )
        return behind > _MAX_UNCOMPACTED

    def check_usable(self) -> None:
        """Raise ``BrokenError`` (the sender died) or ``ClosedError`` (closed)."""
        if self.broken is not None:
            raise BrokenError(
                f"loki.write endpoint {self._endpoint} stopped: "
                f"{type(self.broken).__name__}: {self.broken}"
            )
        if self.closed:
            raise ClosedError("loki.write is closed")

    def put_nowait(self, batch: StreamBatch) -> None:
        """Queue ``batch`` now (the caller checked ``accepts``).

        Raises:
            BrokenError, ClosedError: see ``check_usable``; nothing was queued.
        """
        if self.closed:  # closed, or broken (which closes it)
            self.check_usable()
        batcher = self.batcher
        was_open = batcher.open_count
        added_before = batcher.added_entries
        refs_before = batcher.added_refs
        size = batcher.add(batch)
        added = batcher.added_entries - added_before
        refs = batcher.added_refs - refs_before
        self.queued_bytes += (
            size + added * ENTRY_OVERHEAD_BYTES + refs * DELIVERY_OVERHEAD_BYTES
        )
        cut = self._collect()
        if cut:
            self._encode_filled(cut)
        # Wake the sender for a ready batch, or to arm the age timer of a new open
        # batch.
        ready = len(self._ready)
        if ready or batcher.open_count != was_open:
            self.ready_event.set()
            if ready > 1:
                self.compact_event.set()

    async def put(self, batch: StreamBatch) -> None:
        """Queue ``batch``, waiting while the queue is full or its stream is held."""
        while not self.accepts(batch):
            self.check_usable()
            if not self.has_room() and self.inflight is None and not self._ready:
                # Only open batches fill the queue (a capacity near batch_size): send
                # them now rather than after batch_wait, or the producer idles.
                self.cut_all()
                self.ready_event.set()
            await self._space.wait()
        self.put_nowait(batch)

    def count_dropped(self, batch: StreamBatch, reason: str) -> None:
        _, tenant = self.batcher.stream_key(batch.labels)
        self._on_drop(tenant, reason, len(batch.entries), entries_size(batch.entries))

    # -- the ready FIFO

    def _collect(self) -> int:
        """Move batches the batcher made ready to the FIFO; how many."""
        batcher = self.batcher
        moved = 0
        while (batch := batcher.pop_ready()) is not None:
            self._ready.append(batch)
            moved += 1
        return moved

    def take_next(self) -> Pending | None:
        """The oldest ready item, now in flight; ``None`` when nothing is ready."""
        item = self._ready.popleft() if self._ready else None
        if item is not None:
            self.inflight = item
        return item

    def next_deadline(self, *, early: bool = False) -> float | None:
        return self.batcher.next_deadline(early=early)

    def cut_expired(self, *, early: bool = False) -> int:
        cut = self.batcher.cut_expired(early=early)
        self._collect()
        return cut

    def cut_all(self) -> int:
        cut = self.batcher.cut_all()
        self._collect()
        return cut

    # -- encoding and compaction

    def _compact(self, batch: Batch, body: bytes) -> bool:
        """Let ``batch`` wait as ``body``; False when it left the FIFO meanwhile."""
        ready = self._ready
        for index, item in enumerate(ready):
            if item is batch:
                before = cost(batch)
                encoded = Encoded.of(batch, body)
                ready[index] = encoded
                # The queue now holds the compressed bytes: room for more lines.
                self.queued_bytes -= before - cost(encoded)
                return True
        return False

    def _encode_filled(self, count: int) -> None:
        """Encode the ``count`` batches that filling just made ready, here and now.

        A batch waits as its compressed body rather than as entries (a tenth of the
        memory, or less): the work is the sender's anyway, done once, and the
        producer that filled the batch pays for it, which also paces it. Small
        batches (a small ``batch_size``) stay entries: there is little to save.
        """
        for item in list(self._ready)[-count:]:
            if (
                not isinstance(item, Batch)
                or item.size_bytes < _ENCODE_ON_FILL_MIN_BYTES
            ):
                continue
            try:
                body = encode_body(self.confirmed.ordered(item), self._encode)
            except Exception:  # noqa: BLE001 - the sender encodes it again and reports
                continue
            self._compact(item, body)

    async def encode(self, batch: Batch) -> bytes:
        """The batch's compressed request; a large one is encoded off the loop."""
        streams = self.confirmed.ordered(batch)
        if batch.entry_count >= THREAD_ENCODE_ENTRIES:
            return await asyncio.to_thread(encode_body, streams, self._encode)
        return encode_body(streams, self._encode)

    async def encode_streams(self, streams: list[tuple[str, list[LogEntry]]]) -> bytes:
        """A held stream's request (large ones off the loop, as ``encode``)."""
        if sum(len(entries) for _, entries in streams) >= THREAD_ENCODE_ENTRIES:
            return await asyncio.to_thread(encode_body, streams, self._encode)
        return encode_body(streams, self._encode)

    async def run_compactor(self) -> None:
        """Encode batches queued behind the next one: a backlog holds compressed bytes.

        Entries as Python objects take two to three times their line bytes, a compressed
        request a fraction of them: memory stays well inside ``queue_capacity`` when
        Loki is slow or down. The next batch is left alone (the sender is about to take
        it), so a healthy endpoint never encodes twice.
        """
        while True:
            await self.compact_event.wait()
            self.compact_event.clear()
            for item in list(self._ready)[1:]:
                if not isinstance(item, Batch) or not item.streams:
                    continue
                try:
                    body = await self.encode(item)
                except Exception:  # noqa: BLE001 - encoded (and reported) when sent
                    continue
                if self._compact(item, body):
                    self._space.wake_all()

    # -- settlement

    def finish(self, item: Pending, *, settled: int | None = None) -> None:
        """The sender is done with ``item``: Loki took it, refused it, or part of it
        is held (``settled`` entries left the queue)."""
        self.inflight = None
        self.queued_bytes -= cost(item)
        self.settled_entries += item.entry_count if settled is None else settled
        self.done_seq = item.seq
        item.settle()
        self._space.wake_all()
        self._progress.wake_all()

    def settled_through(self, target: int) -> bool:
        """Whether every batch up to ``target`` was settled, held parts included."""
        if self.done_seq < target:
            return False
        helds = (*self.held.values(), *self.held_incoming.values())
        return all(held.seq > target for held in helds)

    async def wait_progress(self) -> None:
        """Until something settled (or the queue broke)."""
        await self._progress.wait()

    def wake_all(self) -> None:
        self._space.wake_all()
        self._progress.wake_all()

    # -- held streams

    def hold(self, held: Held) -> None:
        """Keep ``held`` for a retry of its own; merged into what is held already."""
        held.charged = entries_cost(held.entries)
        held.pending = len(held.entries)
        self.queued_bytes += held.charged
        ident = (held.tenant, held.key)
        current = self.held.get(ident)
        if current is None:
            self.held[ident] = held
        elif current.inflight:
            incoming = self.held_incoming.get(ident)
            if incoming is None:
                self.held_incoming[ident] = held
            else:
                incoming.merge(held)
        else:
            current.merge(held)
        self.held_event.set()

    def due_held(self) -> list[Held]:
        """Held streams not being retried right now."""
        return [held for held in self.held.values() if not held.inflight]

    def release_held(self, held: Held) -> None:
        """A retry of ``held`` ended: settle what left it, merge what came meanwhile."""
        ident = (held.tenant, held.key)
        incoming = self.held_incoming.pop(ident, None)
        # What left the stream (stored, or refused for good) leaves the queue.
        self.settled_entries += held.pending - len(held.entries)
        held.pending = len(held.entries)
        charged = entries_cost(held.entries)
        self.queued_bytes -= held.charged - charged
        held.charged = charged
        if not held.entries:
            deliveries, held.deliveries = held.deliveries, []
            # Moved here from their batch, whose cost they stayed counted in.
            self.queued_bytes -= len(deliveries) * DELIVERY_OVERHEAD_BYTES
            for delivery in deliveries:
                delivery.release()
            if incoming is None:
                del self.held[ident]
            else:
                self.held[ident] = incoming
        elif incoming is not None:
            held.merge(incoming)
        self.wake_all()
        self.held_event.set()
        # No request of the endpoint is in flight any more: a batch past its linger
        # may leave now.
        self.ready_event.set()

    # -- closing

    def close(self) -> None:
        """No more intake; producers waiting for room are told."""
        self.closed = True
        self._space.wake_all()

    def break_(self, exc: BaseException) -> None:
        """The sender died of ``exc``: every waiting and later producer fails."""
        if self.broken is None:
            self.broken = exc
        self.closed = True
        self.wake_all()

    def abandon_all(self) -> int:
        """Give up every queued, in-flight and held entry; returns how many."""
        leftovers: list[Pending] = [*self._ready, *self.batcher.take_all()]
        self._ready.clear()
        if self.inflight is not None:
            leftovers.insert(0, self.inflight)
            self.inflight = None
        count = 0
        for item in leftovers:
            self._on_drop(
                item.tenant, "drain_timeout", item.entry_count, item.size_bytes
            )
            self.queued_bytes -= cost(item)
            self.settled_entries += item.entry_count
            count += item.entry_count
            item.settle(abandoned=True)
        helds = [*self.held.values(), *self.held_incoming.values()]
        self.held.clear()
        self.held_incoming.clear()
        for held in helds:
            size = entries_size(held.entries) if held.entries else 0
            self._on_drop(held.tenant, "drain_timeout", len(held.entries), size)
            self.queued_bytes -= (
                held.charged + len(held.deliveries) * DELIVERY_OVERHEAD_BYTES
            )
            self.settled_entries += held.pending
            count += len(held.entries)
            for delivery in held.deliveries:
                delivery.release(abandoned=True)
        self.done_seq = self.batcher.cut_count
        self.wake_all()
        return count
