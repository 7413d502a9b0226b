"""Figures from what Loki acknowledged: per line, when and how many times.

Pure. :class:`Acks` holds, per generator and sequence number, Docker's timestamp of the
line, the first moment Loki acknowledged it and how many times it did (arrays indexed
by sequence number: a million lines take ~20 MB). From that: lines sent twice,
throughput over time, write-to-acknowledged latency, and how long a backlog built up
during a fault took to clear.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping, Sequence

from minilog.bench.counting import Tally

__all__ = ["Acks", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Acks:
    def __init__(self, written: Mapping[str, int]) -> None:
        self.written = dict(written)
        self._ts: dict[str, array[int]] = {}
        self._first: dict[str, array[int]] = {}
        self._times: dict[str, array[int]] = {}
        for gen, n in written.items():
            self._ts[gen] = array("q", bytes(8 * (n + 1)))
            self._first[gen] = array("q", bytes(8 * (n + 1)))
            self._times[gen] = array("i", bytes(4 * (n + 1)))
        self.foreign = 0
        self.unexpected = 0

    def add(self, gen: str, seq: int, ts_ns: int, ack_ns: int) -> None:
        first = self._first.get(gen)
        if first is None:
            self.foreign += 1
            return
        if not 1 <= seq < len(first):
            self.unexpected += 1
            return
        self._times[gen][seq] += 1
        if first[seq] == 0 or ack_ns < first[seq]:
            first[seq] = ack_ns
            self._ts[gen][seq] = ts_ns

    def tally(self) -> Tally:
        """The acknowledged lines as a :class:`Tally` (duplicates included)."""
        tally = Tally(self.written)
        for gen, times in self._times.items():
            for seq in range(1, len(times)):
                for _ in range(times[seq]):
                    tally.add(gen, seq)
        return tally

    def delivered(self, gens: Iterable[str] | None = None) -> int:
        return sum(
            1
            for gen in (self.written if gens is None else gens)
            for n in self._times[gen][1:]
            if n
        )

    def duplicated(self, gens: Iterable[str] | None = None) -> int:
        return sum(
            n - 1
            for gen in (self.written if gens is None else gens)
            for n in self._times[gen][1:]
            if n > 1
        )

    def first_acks(self, gens: Iterable[str] | None = None) -> list[int]:
        out: list[int] = []
        for gen in self.written if gens is None else gens:
            out.extend(t for t in self._first[gen][1:] if t)
        return out

    def last_ack_ns(self, gens: Iterable[str] | None = None) -> int:
        acks = self.first_acks(gens)
        return max(acks) if acks else 0

    def throughput(self, t0_ns: int, bin_s: float = 1.0) -> list[tuple[float, float]]:
        """``(s since t0, lines/s)``: distinct lines first acknowledged per bin."""
        acks = self.first_acks()
        if not acks:
            return []
        bins: dict[int, int] = {}
        width = int(bin_s * 1e9)
        for t in acks:
            k = (t - t0_ns) // width
            bins[k] = bins.get(k, 0) + 1
        lo, hi = min(bins), max(bins)
        return [((k + 0.5) * bin_s, bins.get(k, 0) / bin_s) for k in range(lo, hi + 1)]

    def latencies_s(self, gens: Iterable[str] | None = None) -> list[float]:
        """Docker's timestamp of each line to Loki's first acknowledgement, seconds."""
        out = []
        for gen in self.written if gens is None else gens:
            ts = self._ts[gen]
            for seq, ack in enumerate(self._first[gen]):
                if seq and ack:
                    out.append((ack - ts[seq]) / 1e9)
        return out

    def timestamps(self, gen: str) -> array[int]:
        """Docker's timestamp of each acknowledged line of ``gen`` (0: none)."""
        return self._ts[gen]

    def first_ack_of(self, gen: str, seq: int = 1) -> int:
        first = self._first.get(gen)
        if first is None or not 1 <= seq < len(first):
            return 0
        return first[seq]

    def backlog_cleared_ns(
        self, from_ns: int, to_ns: int, gens: Iterable[str] | None = None
    ) -> int | None:
        """When the last acknowledged line written in ``[from_ns, to_ns]`` was first
        acknowledged; ``None`` when none was (lines never acknowledged count as lost,
        not here)."""
        newest = 0
        for gen in self.written if gens is None else gens:
            ts = self._ts[gen]
            first = self._first[gen]
            for seq in range(1, len(first)):
                if not first[seq]:
                    continue
                if from_ns <= ts[seq] <= to_ns:
                    newest = max(newest, first[seq])
        return newest or None

    def pending_at(self, t_ns: int) -> int:
        """Lines written by ``t_ns`` that Loki first acknowledged after it: the
        backlog at that moment (lines never acknowledged are not counted)."""
        pending = 0
        for gen, first in self._first.items():
            ts = self._ts[gen]
            for seq in range(1, len(first)):
                if first[seq] > t_ns and ts[seq] <= t_ns:
                    pending += 1
        return pending

    def acked_between(self, from_ns: int, to_ns: int) -> int:
        return sum(1 for t in self.first_acks() if from_ns < t <= to_ns)
