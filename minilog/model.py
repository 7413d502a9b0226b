"""Value types shared by every stage of the pipeline: entries, batches, delivery tokens,
and what entries weigh (Alloy's measure of a batch).

The unit that moves between components is a ``StreamBatch``: one label set and the
entries read for it in one go, so labels are computed once per batch, never per line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple, Protocol

__all__ = [
    "Delivery",
    "LogEntry",
    "LogsReceiver",
    "Metadata",
    "StreamBatch",
    "entries_size",
    "entry_size",
]

#: Structured metadata of one entry: (name, value) pairs, in the order they were added.
Metadata = tuple[tuple[str, str], ...]


class LogEntry(NamedTuple):
    """One log line with its timestamp in Unix nanoseconds."""

    timestamp_ns: int
    line: str
    structured_metadata: Metadata = ()


class Delivery:
    """A reference-counted acknowledgement for entries in flight.

    The reference travels with the batch: whoever holds a ``StreamBatch`` owns one
    reference to its delivery, and handing the batch on hands the reference on. A
    component that fans one batch out to N receivers calls ``retain(N - 1)`` first; one
    that splits a batch in two retains once more; one that discards a batch (filtered
    out) calls ``release()``.

    The writer releases only when Loki accepted the entries or refused them for good
    (a 4xx other than 429, or a 429 with ``retry_on_http_429`` off): both settle them.
    An outage (no connection, timeout, 5xx, 429) never does, however long it lasts:
    the entries stay queued and are retried. When Loki takes a batch only in part, the
    writer keeps the references of what it refused for now until that is accepted too,
    so a delivery settles once every entry it covers is. Only entries given up at
    shutdown are ``abandoned``; the callback then receives ``False``, so the source
    does not advance past them and reads them again on its next start.
    """

    __slots__ = ("_abandoned", "_callback", "_pending")

    def __init__(self, callback: Callable[[bool], None] | None = None) -> None:
        self._pending = 1
        self._abandoned = False
        self._callback = callback

    @property
    def pending(self) -> int:
        return self._pending

    def retain(self, n: int = 1) -> None:
        if self._pending <= 0:
            raise RuntimeError("retain() on a settled Delivery")
        self._pending += n

    def release(self, *, abandoned: bool = False) -> None:
        if self._pending <= 0:
            raise RuntimeError("release() on a settled Delivery")
        if abandoned:
            self._abandoned = True
        self._pending -= 1
        if self._pending == 0 and self._callback is not None:
            callback, self._callback = self._callback, None
            callback(not self._abandoned)


@dataclass(slots=True)
class StreamBatch:
    """Entries that share one label set.

    ``labels`` is the full set, internal ``__``-prefixed names included; the writer
    strips those (``__tenant_id__`` picks the tenant) before the labels reach Loki.
    """

    labels: dict[str, str]
    entries: list[LogEntry]
    delivery: Delivery | None = field(default=None)

    def settle(self, *, abandoned: bool = False) -> None:
        """Release this batch's delivery reference, if it carries one."""
        if self.delivery is not None:
            self.delivery.release(abandoned=abandoned)


class LogsReceiver(Protocol):
    """What Alloy calls a ``LogsReceiver``: a component's input (``forward_to``).

    ``send`` may wait: that is backpressure, and it reaches the sources.
    """

    async def send(self, batch: StreamBatch) -> None: ...


_LINE = itemgetter(1)
_METADATA = itemgetter(2)


def entries_size(entries: Sequence[LogEntry]) -> int:
    """Bytes Alloy counts for ``entries``: UTF-8 line bytes plus metadata name and value
    bytes.

    One pass over the batch in C: the lines are joined once and their length taken, and
    the UTF-8 encode is only paid when some line is not ASCII (``isascii`` is O(1) in
    CPython).
    """
    if len(entries) == 1:
        return entry_size(entries[0])
    text = "".join(map(_LINE, entries))
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if any(map(_METADATA, entries)):
        meta = "".join(name + value for entry in entries for name, value in entry[2])
        size += (
            len(meta) if meta.isascii() else len(meta.encode("utf-8", "surrogatepass"))
        )
    return size


def entry_size(entry: LogEntry) -> int:
    line = entry[1]
    size = len(line) if line.isascii() else len(line.encode("utf-8", "surrogatepass"))
    if not entry[2]:
        return size
    for name, value in entry[2]:
        size += len(name.encode("utf-8", "surrogatepass"))
        size += len(value.encode("utf-8", "surrogatepass"))
    return size
