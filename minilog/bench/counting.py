"""Exact loss and duplicate counting, and paging through ``query_range`` without gaps.

Pure logic: :class:`Tally` takes what each generator wrote and every ``(gen, seq)``
observed (in Loki's answers, or in the pushes Loki acknowledged) and says per generator
how many lines are missing and how many were seen more than once. :class:`PageCursor`
walks a time range forward page by page; the I/O that fetches a page lives in
``lokiapi``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "GenCount",
    "PageCursor",
    "Tally",
]


@dataclass(frozen=True)
class GenCount:
    """One generator's figures: ``delivered`` counts distinct sequence numbers."""

    gen: str
    written: int
    delivered: int
    lost: int
    duplicated: int
    unexpected: int  # numbers beyond what it wrote (or < 1): never counted delivered


class Tally:
    """Counts ``(gen, seq)`` observations against what each generator wrote."""

    def __init__(self, written: Mapping[str, int]) -> None:
        self._written = dict(written)
        self._seen: dict[str, Counter[int]] = {gen: Counter() for gen in written}
        self.foreign = 0  # observations of generators this tally does not know

    def add(self, gen: str, seq: int) -> None:
        seen = self._seen.get(gen)
        if seen is None:
            self.foreign += 1
            return
        seen[seq] += 1

    def add_all(self, observed: Iterable[tuple[str, int]]) -> None:
        for gen, seq in observed:
            self.add(gen, seq)

    def count(self, gen: str) -> GenCount:
        written = self._written[gen]
        seen = self._seen[gen]
        valid = [n for seq, n in seen.items() if 1 <= seq <= written]
        delivered = len(valid)
        return GenCount(
            gen=gen,
            written=written,
            delivered=delivered,
            lost=written - delivered,
            duplicated=sum(n - 1 for n in valid),
            unexpected=sum(n for seq, n in seen.items() if not 1 <= seq <= written),
        )

    def counts(self) -> list[GenCount]:
        return [self.count(gen) for gen in sorted(self._written)]

    def missing(self, gen: str, limit: int = 5) -> list[int]:
        """Up to ``limit`` missing sequence numbers of ``gen``, lowest first."""
        seen = self._seen[gen]
        out = []
        for seq in range(1, self._written[gen] + 1):
            if seq not in seen:
                out.append(seq)
                if len(out) >= limit:
                    break
        return out


class PageCursor:
    """Forward paging over ``[start_ns, end_ns]`` that loses and doubles nothing.

    Each page starts at the newest timestamp of the previous one (``query_range``'s
    start is inclusive), so entries sharing that timestamp may straddle the border. A
    page that starts at ``t`` holds every entry at ``t`` (it is sorted by time and not
    full before ``t`` is past), so its entries at ``t`` replace those held back from the
    previous page: nothing is counted twice, and true duplicates Loki holds at ``t`` are
    all kept. A page full of a single timestamp cannot move on; the limit is doubled and
    the page asked again. Only the entries at the border are held in memory.
    """

    def __init__(self, start_ns: int, end_ns: int, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.limit = limit
        self.done = start_ns > end_ns
        self.pages = 0

    def feed(self, entries: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Take one page (``(ts_ns, line)`` for the current ``start_ns``/``limit``) and
        return the entries now final, oldest first; ``done`` says when to stop."""
        if self.done:
            raise RuntimeError("the cursor is done")
        self.pages += 1
        page = sorted(entries, key=lambda e: e[0])
        if page and page[0][0] < self.start_ns:
            raise ValueError("a page holds entries older than its start")
        if len(page) >= self.limit and page[0][0] == page[-1][0]:
            # Only one timestamp: more entries may share it. Ask again with more room.
            self.limit *= 2
            return []
        if len(page) < self.limit:
            self.done = True
            return page
        newest = page[-1][0]
        self.start_ns = newest
        # Entries at ``newest`` come again, all of them, at the head of the next page.
        return [e for e in page if e[0] < newest]
