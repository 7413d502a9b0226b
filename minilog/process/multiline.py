"""``stage.multiline``: lines joined into blocks, held until the next first line or
``max_wait_time`` (pure: the time comes in as ``now_ns``; the component's timer calls
``flush``).
"""

from __future__ import annotations

import re
from typing import Any

from minilog.model import Delivery, LogEntry
from minilog.process.core import (
    Segment,
    combine_deliveries,
    hand_on,
    labels_key,
)
from minilog.process.stage import (
    Stage,
)

__all__ = ["MultilineStage"]


class _Block:
    """The multiline state of one stream: the block being built and its start line."""

    __slots__ = (
        "deliveries",
        "extracted",
        "first",
        "labels",
        "last_ns",
        "lines",
        "seed",
    )

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.deliveries: list[Delivery] = []
        self.first: LogEntry | None = None
        self.labels: dict[str, str] = {}
        self.seed: Any = {}
        self.extracted: dict[str, Any] | None = None
        self.last_ns = 0


def _collect(flushed: list[Segment], seg: Segment) -> None:
    """Append a sent block, merged into the previous one when they share everything.

    Merging keeps one segment per stream and delivery instead of one per block.
    """
    if flushed:
        last = flushed[-1]
        if (
            last.labels is seg.labels
            and last.seed is seg.seed
            and last.delivery is seg.delivery
            and (last.extracted is None) == (seg.extracted is None)
        ):
            last.entries.extend(seg.entries)
            if last.extracted is not None and seg.extracted is not None:
                last.extracted.extend(seg.extracted)
            if seg.delivery is not None:
                seg.delivery.release()  # both held one; ``last`` keeps its own
            return
    flushed.append(seg)


class MultilineStage(Stage):
    """``stage.multiline``: merge the lines of a block, per stream, into one entry.

    A line matching ``firstline`` starts a block; others join the current one with
    ``\\n`` (with ``trim_newlines``, Alloy v1.12's default, each line's trailing
    ``\\r``/``\\n`` characters are cut first). Until a stream's first start line, lines
    pass through. A block is sent on at the next start line, at ``max_lines``, or when
    no line arrived for ``max_wait`` (``flush``); a stream idle that long is forgotten,
    as Alloy's timer does, so its next lines pass through until a start line. The block
    keeps its start line's time, labels, structured metadata and extracted values (a
    block cut at ``max_lines`` goes on with them). Entries held in a block keep a
    reference to their delivery until the block is sent.
    """

    name = "stage.multiline"
    holds = True

    def __init__(
        self,
        firstline: re.Pattern[str],
        max_lines: int,
        max_wait_ns: int,
        trim_newlines: bool = True,
    ) -> None:
        self._firstline = firstline
        self._max_lines = max_lines
        self._max_wait_ns = max_wait_ns
        self._trim = trim_newlines
        self._streams: dict[tuple[tuple[str, str], ...], _Block] = {}

    @property
    def pending_lines(self) -> int:
        return sum(len(b.lines) for b in self._streams.values())

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        key = labels_key(seg.labels)
        block = self._streams.get(key)
        search = self._firstline.search
        ex = seg.extracted
        delivery = seg.delivery
        passthrough: list[int] = []
        flushed: list[Segment] = []
        trim = self._trim
        for i, entry in enumerate(seg.entries):
            line = entry.line
            if block is not None and now_ns - block.last_ns >= self._max_wait_ns:
                # Alloy's timer would have sent the block and forgotten the stream.
                if block.lines:
                    _collect(flushed, self._send(block))
                del self._streams[key]
                block = None
            is_first = search(line) is not None
            if block is None:
                if not is_first:
                    passthrough.append(i)
                    continue
                block = self._streams[key] = _Block()
            if is_first:
                if block.lines:
                    _collect(flushed, self._send(block))
                block.first = entry
                block.labels = seg.labels
                block.seed = seg.seed
                block.extracted = None if ex is None else ex[i]
            block.lines.append(line.rstrip("\r\n") if trim else line)
            block.last_ns = now_ns
            if delivery is not None and not any(
                d is delivery for d in block.deliveries
            ):
                delivery.retain()
                block.deliveries.append(delivery)
            if len(block.lines) == self._max_lines:  # 0: no limit, as in Alloy
                _collect(flushed, self._send(block))
        if len(passthrough) == len(seg.entries):
            out.append(seg)
        elif passthrough:
            out.append(seg.subset(passthrough))
        else:
            hand_on(
                delivery, 0
            )  # every line is in a block, which holds its own reference
        out.extend(flushed)

    def _send(self, block: _Block) -> Segment:
        """The block as a one-entry segment holding the block's delivery references."""
        first = block.first
        assert first is not None
        entry = LogEntry(
            first.timestamp_ns, "\n".join(block.lines), first.structured_metadata
        )
        extracted = None if block.extracted is None else [dict(block.extracted)]
        delivery = combine_deliveries(block.deliveries)
        block.lines = []
        block.deliveries = []
        return Segment(block.labels, [entry], extracted, block.seed, delivery)

    def flush(self, now_ns: int, force: bool) -> list[Segment]:
        due: list[Segment] = []
        idle: list[tuple[tuple[str, str], ...]] = []
        for key, block in self._streams.items():
            waited = now_ns - block.last_ns
            if waited >= self._max_wait_ns:
                idle.append(key)
            if block.lines and (force or waited >= self._max_wait_ns):
                due.append(self._send(block))
        for key in idle:
            del self._streams[key]
        return due

    def next_deadline_ns(self) -> int | None:
        waiting = [b.last_ns for b in self._streams.values() if b.lines]
        return min(waiting) + self._max_wait_ns if waiting else None
