"""``stage.cri``: lines in the CRI log format (containerd, CRI-O), partial lines joined.

Owns the parser of ``<time> <stream> <flags> <content>`` (as lenient as Alloy's: any
first word as the time, flags optional) and the per-stream buffer of partial (``P``)
lines, which waits for the stream's full (``F``) line. Pure.
"""

from __future__ import annotations

import re
from typing import Any, Final

from prometheus_client import Counter

from minilog.model import Delivery, LogEntry
from minilog.process.core import (
    Segment,
    combine_deliveries,
    hand_on,
    labels_key,
    new_entry,
)
from minilog.process.gotime import TimestampParser
from minilog.process.lines import truncate_bytes
from minilog.process.stage import Stage, emit_grouped, set_labels

__all__ = ["CriStage", "parse_cri"]

_STREAM: Final = ("stream",)
#: Go's ``unicode.IsSpace``, which ends the time field.
_SPACES: Final = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


_FIRST_SPACE: Final = re.compile("[" + "".join(sorted(_SPACES)) + "]")


def parse_cri(line: str) -> tuple[str, str, str, str] | None:
    """(time, stream, flag, content) of a CRI line, or None; as Alloy's ``ParseCRI``:
    the time is the text before the first whitespace, then exactly one space, the
    stream, one space, an optional ``P``/``F`` flag (``F`` when absent) and one
    optional space."""
    m = _FIRST_SPACE.search(line)
    if m is None:
        return None  # no space after the time: not CRI
    i = m.start()
    if line[i] != " ":
        return None
    timestamp = line[:i]
    if line.startswith("stdout ", i + 1):
        stream = "stdout"
    elif line.startswith("stderr ", i + 1):
        stream = "stderr"
    else:
        return None
    rest = line[i + 8 :]
    flag = "F"
    if rest[:1] in ("P", "F"):
        flag = rest[0]
        rest = rest[1:]
    if rest[:1] == " ":
        rest = rest[1:]
    return timestamp, stream, flag, rest


class _Partial:
    """A stream's partial line so far: the latest entry of it and what it holds."""

    __slots__ = ("deliveries", "entry", "extracted", "labels", "seed")

    def __init__(
        self,
        labels: dict[str, str],
        entry: LogEntry,
        extracted: dict[str, Any] | None,
        seed: Any,
    ) -> None:
        self.labels = labels
        self.entry = entry
        self.extracted = extracted
        self.seed = seed
        self.deliveries: list[Delivery] = []

    def hold(self, delivery: Delivery | None) -> None:
        if delivery is not None and not any(d is delivery for d in self.deliveries):
            delivery.retain()
            self.deliveries.append(delivery)

    def segment(self) -> Segment:
        extracted = None if self.extracted is None else [self.extracted]
        return Segment(
            self.labels,
            [self.entry],
            extracted,
            self.seed,
            combine_deliveries(self.deliveries),
        )


def _keep(items: list[list[int] | Segment], index: int) -> None:
    """Add ``index`` to the run of kept entries at the end of ``items``."""
    if items and isinstance(items[-1], list):
        items[-1].append(index)
    else:
        items.append([index])


class CriStage(Stage):
    """``stage.cri``: the CRI fields into the extracted map (``time``, ``stream``,
    ``flags``, ``content``), the content as the line, the time (RFC 3339) as the entry
    time and the stream as the ``stream`` label.

    Partial lines (``P``) of a stream wait, joined, for its next full line (``F``),
    which completes them (it keeps the full line's time and extracted values). When
    ``max_partial_lines`` streams wait and another partial line comes, all those waiting
    are sent as they are (counted in ``loki_process_cri_partial_lines_flushed_total``).
    With ``max_partial_line_size_truncate``, a joined line is cut to
    ``max_partial_line_size`` bytes (``loki_process_cri_lines_truncated_total``). Lines
    that are not CRI pass unchanged. Unlike Alloy, waiting partial lines are sent at
    shutdown instead of being lost.
    """

    name = "stage.cri"

    def __init__(
        self,
        parse_time: TimestampParser,
        max_partial_lines: int,
        max_partial_line_size: int,
        truncate: bool,
        flushed: Counter,
        truncated: Counter,
    ) -> None:
        self._parse_time = parse_time
        self._max_partial = max_partial_lines
        self._max_size = max_partial_line_size
        self._truncate = truncate
        self._flushed = flushed
        self._truncated = truncated
        self._partials: dict[tuple[tuple[str, str], ...], _Partial] = {}

    def _cut(self, line: str) -> str:
        if not self._truncate:
            return line
        short = truncate_bytes(line, self._max_size)
        if short is None:
            return line
        self._truncated.inc()
        return short

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        ovs = seg.overlays()
        entries = list(seg.entries)
        keys: list[tuple[str | None, ...]] = []
        # What goes out, in order: runs of this segment's entries (indexes) and
        # segments of their own (completed or flushed partial lines).
        items: list[list[int] | Segment] = []
        delivery = seg.delivery
        streams: dict[str, tuple[dict[str, str], Any]] = {}
        for i, entry in enumerate(seg.entries):
            parsed = parse_cri(entry.line)
            if parsed is None:
                keys.append((None,))
                _keep(items, i)
                continue
            timestamp, stream, flag, content = parsed
            ov = ovs[i]
            ov["flags"] = flag
            ov["stream"] = stream
            ov["content"] = content
            ov["time"] = timestamp
            ts = self._parse_time(timestamp, now_ns)
            if ts is None:
                ts = entry.timestamp_ns
            cached = streams.get(stream)
            if cached is None:
                labels = set_labels(seg.labels, _STREAM, (stream,))
                cached = streams[stream] = (labels, labels_key(labels))
            labels, key = cached
            if flag == "P":
                if len(self._partials) >= self._max_partial:
                    self._flushed.inc(len(self._partials))
                    items.extend(p.segment() for p in self._partials.values())
                    self._partials = {}
                previous = self._partials.get(key)
                line = content if previous is None else previous.entry.line + content
                partial = _Partial(
                    labels,
                    new_entry((ts, self._cut(line), entry.structured_metadata)),
                    ov,
                    seg.seed,
                )
                if previous is not None:
                    partial.deliveries = previous.deliveries
                partial.hold(delivery)
                self._partials[key] = partial
                continue
            previous = self._partials.pop(key, None)
            if previous is None:
                entries[i] = new_entry((ts, content, entry.structured_metadata))
                keys.append((stream,))
                _keep(items, i)
                continue
            done = _Partial(
                labels,
                new_entry(
                    (
                        ts,
                        self._cut(previous.entry.line + content),
                        entry.structured_metadata,
                    )
                ),
                ov,
                seg.seed,
            )
            done.deliveries = previous.deliveries
            done.hold(delivery)
            items.append(done.segment())
        runs = [item for item in items if isinstance(item, list)]
        hand_on(delivery, len(runs))  # one reference per run of this segment's entries
        key_of = {}
        k = 0
        for run in runs:
            for i in run:
                key_of[i] = keys[k]
                k += 1
        for item in items:
            if isinstance(item, Segment):
                out.append(item)
                continue
            part = Segment(
                seg.labels,
                [entries[i] for i in item],
                [ovs[i] for i in item],
                seg.seed,
                delivery,
            )
            emit_grouped(part, [key_of[i] for i in item], _STREAM, out)

    def flush(self, now_ns: int, force: bool) -> list[Segment]:
        if not force or not self._partials:
            return []
        due = [p.segment() for p in self._partials.values()]
        self._partials = {}
        return due
