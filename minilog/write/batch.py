"""Batching for ``loki.write``: one open batch per tenant, bounded by bytes and age.

Pure logic (no I/O, no asyncio; the clock is a parameter). Owns stream keys (canonical
label text without ``__*`` labels), tenant selection, Alloy's size and ``max_streams``
rules and the delivery references a batch carries (``DeliveryRefs``). A ``Batch`` only
ever holds entries: what waits encoded is the accumulator's (``accumulator.Encoded``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from minilog.labels import TENANT_LABEL, format_labels
from minilog.model import Delivery, LogEntry, StreamBatch, entries_size, entry_size
from minilog.write.config import EndpointConfig

__all__ = [
    "Batch",
    "Batcher",
    "DeliveryRefs",
    "DropCallback",
]

#: ``on_drop(tenant, reason, entries, bytes)``.
DropCallback = Callable[[str, str, int, int], None]

# Label sets repeat (one per container stream), so their stream keys are memoised; the
# cap only stops a source with unbounded label values from growing the memo forever.
_KEY_CACHE_MAX = 8192


class DeliveryRefs:
    """The delivery references a batch holds, each with the stream key it covers, so
    that a batch Loki took only in part can keep the references of what it refused.

    One reference per delivery and stream is enough: a piece of a stream whose
    delivery the batch already holds for that stream gives its reference back at once
    (a source whose reads join one delivery then leaves one per batch, not one per
    read, in a queue that Loki does not empty).
    """

    __slots__ = ("_deliveries", "_keys", "_newest")

    def __init__(self) -> None:
        self._deliveries: list[Delivery] = []
        self._keys: list[str] = []
        # The delivery last added for each stream.
        self._newest: dict[str, Delivery] = {}

    def __len__(self) -> int:
        return len(self._deliveries)

    def add(self, delivery: Delivery, key: str) -> bool:
        """Take over one reference to ``delivery`` for the stream ``key``; False when
        it was folded into the one already held."""
        if self._newest.get(key) is delivery:
            # The reference held for this stream settles only with the batch, so this
            # release never settles the delivery.
            delivery.release()
            return False
        self._newest[key] = delivery
        self._deliveries.append(delivery)
        self._keys.append(key)
        return True

    def take(self, keys: set[str] | frozenset[str]) -> list[Delivery]:
        """Remove and return the references of the streams in ``keys``."""
        taken: list[Delivery] = []
        kept: list[Delivery] = []
        kept_keys: list[str] = []
        for delivery, key in zip(self._deliveries, self._keys, strict=True):
            if key in keys:
                taken.append(delivery)
            else:
                kept.append(delivery)
                kept_keys.append(key)
        self._deliveries, self._keys = kept, kept_keys
        for key in keys:
            self._newest.pop(key, None)
        return taken

    def settle(self, *, abandoned: bool = False) -> None:
        """Release every reference held (once)."""
        deliveries, self._deliveries = self._deliveries, []
        self._keys = []
        self._newest = {}
        for delivery in deliveries:
            delivery.release(abandoned=abandoned)


@dataclass(slots=True, eq=False)
class Batch:
    """Entries of one tenant ready to become one push request.

    ``streams`` maps the canonical label text to the entries of that stream, in arrival
    order. ``refs`` holds one delivery reference per piece of a ``StreamBatch`` in this
    batch. ``seq`` numbers batches in the order they became ready.
    """

    tenant: str
    #: Monotonic time at which the batch is due to be sent even if not full
    #: (``batch_wait`` after it opened).
    due: float
    #: Monotonic time from which it may leave early, when the sender is idle
    #: (``batch_linger`` after it opened; ``due`` without adaptive batching).
    early: float = math.inf
    streams: dict[str, list[LogEntry]] = field(default_factory=dict)
    size_bytes: int = 0
    entry_count: int = 0
    refs: DeliveryRefs = field(default_factory=DeliveryRefs)
    seq: int = 0

    def stream_items(self) -> list[tuple[str, list[LogEntry]]]:
        """The ``(labels, entries)`` pairs the encoder takes."""
        return list(self.streams.items())

    def stream_keys(self) -> tuple[str, ...]:
        """The canonical label text of every stream in the batch."""
        return tuple(self.streams)

    def add_stream(self, key: str, entries: list[LogEntry], size: int) -> None:
        """Append ``entries`` (``size`` bytes) to the stream ``key``."""
        stream = self.streams.get(key)
        if stream is None:
            self.streams[key] = list(entries)
        else:
            stream.extend(entries)
        self.size_bytes += size
        self.entry_count += len(entries)

    def take_deliveries(self, keys: set[str] | frozenset[str]) -> list[Delivery]:
        """Remove and return the delivery references of the streams in ``keys``."""
        return self.refs.take(keys)

    def settle(self, *, abandoned: bool = False) -> None:
        """Release every delivery reference this batch holds (once)."""
        self.refs.settle(abandoned=abandoned)


class Batcher:
    """Alloy's per-shard batching: one open batch per tenant plus a FIFO of ready
    batches, and minilog's early rule.

    A batch becomes ready when adding the next entry would take it over ``batch_size``
    (so it exceeds the size only when its first entry alone does), when it is older than
    ``batch_wait`` (:meth:`cut_expired`), or on :meth:`cut_all`. With a ``linger``
    (adaptive batching) it may also leave once it is ``linger`` old, but only when the
    caller says leaving early costs nothing (``cut_expired(early=True)``: no request in
    flight, no backoff): ``batch_wait`` stays the bound on how long an entry waits.
    Work is done per ``StreamBatch``: one key lookup and one size pass; entries are
    walked one by one only when a batch overflows in the middle of a ``StreamBatch``.

    Args:
        batch_size: soft byte bound of a batch (line and metadata bytes).
        batch_wait: seconds after which an open batch is ready.
        max_streams: distinct streams allowed in one batch; 0 is unlimited. A new stream
            past the limit is dropped (reason ``stream_limited``), as Alloy does.
        tenant_id: tenant of entries without a ``__tenant_id__`` label.
        clock: monotonic seconds.
        on_drop: told of entries dropped here, as ``(tenant, reason, entries, bytes)``.
        linger: seconds after which an open batch may leave early; ``None``: never
            (exact Alloy batching). Capped at ``batch_wait``.
    """

    def __init__(
        self,
        *,
        batch_size: int = EndpointConfig.batch_size,
        batch_wait: float = EndpointConfig.batch_wait,
        max_streams: int = 0,
        tenant_id: str = "",
        clock: Callable[[], float] = time.monotonic,
        on_drop: DropCallback | None = None,
        linger: float | None = EndpointConfig.batch_linger,
    ) -> None:
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.linger = None if linger is None else min(linger, batch_wait)
        self.max_streams = max_streams
        self.tenant_id = tenant_id
        self._clock = clock
        self._on_drop = on_drop
        self._open: dict[str, Batch] = {}
        self._ready: deque[Batch] = deque()
        self._keys: dict[tuple[tuple[str, str], ...], tuple[str, str | None]] = {}
        self.cut_count = 0
        #: Entries ever added (dropped ones excluded), and delivery references kept
        #: (folded ones excluded): callers weigh what ``add`` took.
        self.added_entries = 0
        self.added_refs = 0

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def stream_key(self, labels: dict[str, str]) -> tuple[str, str]:
        """``(canonical label text without __* labels, tenant)`` of a label set."""
        items = tuple(labels.items())
        cached = self._keys.get(items)
        if cached is None:
            public = {k: v for k, v in items if not k.startswith("__")}
            cached = (format_labels(public), labels.get(TENANT_LABEL) or None)
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[items] = cached
        key, tenant = cached
        return key, tenant if tenant is not None else self.tenant_id

    def add(self, batch: StreamBatch) -> int:
        """Add a stream batch; returns the bytes now held for it (0 if it was dropped).

        Takes over the batch's delivery reference: it is split across the batches the
        entries land in, or released at once when every entry was dropped or there were
        none.
        """
        entries = batch.entries
        delivery = batch.delivery
        if not entries:
            if delivery is not None:
                delivery.release()
            return 0
        key, tenant = self.stream_key(batch.labels)
        size = entries_size(entries)
        current = self._open.get(tenant)
        if current is None:
            current = self._new_batch(tenant)
        if current.size_bytes + size > self.batch_size:
            return self._add_split(current, key, entries, delivery)
        stream = current.streams.get(key)
        if stream is None:
            if self.max_streams and len(current.streams) >= self.max_streams:
                self._drop(tenant, "stream_limited", len(entries), size, delivery)
                return 0
            current.streams[key] = stream = []
        stream.extend(entries)
        current.size_bytes += size
        current.entry_count += len(entries)
        self.added_entries += len(entries)
        if delivery is not None and current.refs.add(delivery, key):
            self.added_refs += 1
        if current.size_bytes >= self.batch_size:
            # Exactly full: only empty lines could still join, so send it now.
            self._cut(tenant)
        return size

    def _add_split(
        self,
        current: Batch,
        key: str,
        entries: list[LogEntry],
        delivery: Delivery | None,
    ) -> int:
        # The slow path, entry by entry: this StreamBatch overflows the open batch.
        tenant = current.tenant
        first_size = entry_size(entries[0])
        if current.entry_count and current.size_bytes + first_size > self.batch_size:
            self._cut(tenant)
            current = self._new_batch(tenant)
        elif (
            self.max_streams
            and key not in current.streams
            and len(current.streams) >= self.max_streams
        ):
            self._drop(
                tenant,
                "stream_limited",
                len(entries),
                entries_size(entries),
                delivery,
            )
            return 0
        pieces = 0
        total = 0
        start = 0
        used = current.size_bytes
        for index, entry in enumerate(entries):
            one = first_size if index == 0 else entry_size(entry)
            if used + one > self.batch_size and used and index > start:
                if delivery is not None and pieces:
                    delivery.retain()  # one reference per piece
                total += self._append(
                    current, key, entries[start:index], used, delivery
                )
                pieces += 1
                self._cut(tenant)
                current = self._new_batch(tenant)
                start = index
                used = 0
            used += one
        if delivery is not None and pieces:
            delivery.retain()
        total += self._append(current, key, entries[start:], used, delivery)
        if current.size_bytes >= self.batch_size:
            self._cut(tenant)
        return total

    def _append(
        self,
        batch: Batch,
        key: str,
        entries: list[LogEntry],
        used: int,
        delivery: Delivery | None,
    ) -> int:
        added = used - batch.size_bytes
        stream = batch.streams.get(key)
        if stream is None:
            batch.streams[key] = list(entries)
        else:
            stream.extend(entries)
        batch.size_bytes = used
        batch.entry_count += len(entries)
        self.added_entries += len(entries)
        if delivery is not None and batch.refs.add(delivery, key):
            self.added_refs += 1
        return added

    def _drop(
        self,
        tenant: str,
        reason: str,
        entries: int,
        size: int,
        delivery: Delivery | None,
    ) -> None:
        if self._on_drop is not None:
            self._on_drop(tenant, reason, entries, size)
        if delivery is not None:
            delivery.release()

    def _new_batch(self, tenant: str) -> Batch:
        now = self._clock()
        due = now + self.batch_wait
        early = due if self.linger is None else now + self.linger
        batch = Batch(tenant=tenant, due=due, early=early)
        self._open[tenant] = batch
        return batch

    def _cut(self, tenant: str) -> None:
        batch = self._open.pop(tenant)
        self.cut_count += 1
        batch.seq = self.cut_count
        self._ready.append(batch)

    def ready_batches(self) -> list[Batch]:
        """A snapshot of the ready batches, oldest first."""
        return list(self._ready)

    def pop_ready(self) -> Batch | None:
        """The oldest ready batch, or ``None``."""
        return self._ready.popleft() if self._ready else None

    def next_deadline(self, *, early: bool = False) -> float | None:
        """Clock time at which the first open batch becomes ready (``early``: may
        leave early), or ``None`` if none is open."""
        if not self._open:
            return None
        if early:
            return min(batch.early for batch in self._open.values())
        return min(batch.due for batch in self._open.values())

    def cut_expired(self, *, early: bool = False) -> int:
        """Make every open batch older than ``batch_wait`` ready, and with ``early``
        every one older than the linger too; returns how many."""
        if not self._open:
            return 0
        now = self._clock()
        expired = [
            tenant
            for tenant, batch in self._open.items()
            if batch.due <= now or (early and batch.early <= now)
        ]
        for tenant in expired:
            self._cut(tenant)
        return len(expired)

    def cut_all(self) -> int:
        """Make every open batch ready (flush, shutdown); returns how many."""
        tenants = list(self._open)
        for tenant in tenants:
            self._cut(tenant)
        return len(tenants)

    def take_all(self) -> list[Batch]:
        """Remove and return every batch, ready ones first (for abandoning at
        shutdown)."""
        self.cut_all()
        batches = list(self._ready)
        self._ready.clear()
        return batches
