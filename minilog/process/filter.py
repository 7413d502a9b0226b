"""``loki.process`` stages that drop entries or route them: ``stage.drop``,
``stage.sampling``, ``stage.limit``, ``stage.match`` (pure; drops are counted in
``loki_process_dropped_lines_total``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from prometheus_client import Counter

from minilog.model import LogEntry
from minilog.process.core import (
    MISSING,
    Segment,
    extracted_value,
    go_string,
    hand_on,
)
from minilog.process.parsers import (
    Selector,
)
from minilog.process.stage import (
    Stage,
    earliest_deadline,
    emit_without,
    flush_chain,
    run_chain,
)

__all__ = ["DropStage", "LimitStage", "MatchStage", "SamplingStage"]


class DropStage(Stage):
    """``stage.drop``: drop entries meeting every configured condition (an AND)."""

    name = "stage.drop"

    def __init__(
        self,
        *,
        sources: tuple[str, ...],
        separator: str,
        regex: re.Pattern[str] | None,
        value: str | None,
        older_than_ns: int,
        longer_than: int,
        counter: Counter,
        reason: str,
    ) -> None:
        self._sources = sources
        self._separator = separator
        self._regex = regex
        self._value = value
        self._older_than_ns = older_than_ns
        self._longer_than = longer_than
        self._dropped = counter.labels(reason)

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        dropped = [
            i for i, e in enumerate(seg.entries) if self._should_drop(seg, i, e, now_ns)
        ]
        if dropped:
            self._dropped.inc(len(dropped))
        emit_without(seg, dropped, out)

    def _should_drop(self, seg: Segment, i: int, entry: LogEntry, now_ns: int) -> bool:
        limit = self._longer_than
        if limit:
            line = entry.line
            n = len(line)
            # Go compares the byte length: count UTF-8 bytes only when it can matter.
            if n <= limit and (n * 4 <= limit or len(line.encode()) <= limit):
                return False
        if self._older_than_ns and entry.timestamp_ns >= now_ns - self._older_than_ns:
            return False
        sources = self._sources
        if not sources:
            return self._regex is None or self._regex.search(entry.line) is not None
        ov = seg.extracted[i] if seg.extracted is not None else {}
        seed = seg.seed
        if self._regex is None and self._value is None:
            # Only a source: drop when every named key exists (even with a null value).
            return all(extracted_value(ov, seed, s) is not MISSING for s in sources)
        parts: list[str] = []
        for src in sources:
            value = extracted_value(ov, seed, src)
            if value is MISSING:
                continue
            text = go_string(value)
            if text is None:
                return False
            parts.append(text)
        joined = self._separator.join(parts)
        if self._value is not None:
            return joined == self._value
        assert self._regex is not None
        return self._regex.search(joined) is not None


class SamplingStage(Stage):
    """``stage.sampling``: keep each entry with probability ``rate``; count the rest."""

    name = "stage.sampling"

    def __init__(self, rate: float, dropped: Counter, rng: random.Random) -> None:
        self._rate = rate
        self._dropped = dropped
        self._random = rng.random

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        rate, rnd = self._rate, self._random
        dropped = [i for i in range(len(seg.entries)) if rnd() >= rate]
        if dropped:
            self._dropped.inc(len(dropped))
        emit_without(seg, dropped, out)


class _TokenBucket:
    """``golang.org/x/time/rate.Limiter``'s ``Allow``, for a batch arriving at once."""

    __slots__ = ("_burst", "_last_ns", "_per_ns", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._per_ns = rate / 1e9
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_ns: int | None = None

    def take(self, wanted: int, now_ns: int) -> int:
        """How many of ``wanted`` entries arriving at ``now_ns`` may pass."""
        if self._last_ns is not None and now_ns > self._last_ns:
            elapsed = now_ns - self._last_ns
            self._tokens = min(self._burst, self._tokens + elapsed * self._per_ns)
        if self._last_ns is None or now_ns > self._last_ns:
            self._last_ns = now_ns
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted


class LimitStage(Stage):
    """``stage.limit`` with ``drop = true``: a token bucket (``rate``/s, ``burst``).

    With ``by_label_name``, one bucket per value of that label (at most
    ``max_distinct_labels`` remembered); entries without the label are not limited.
    Alloy's ``drop = false`` blocks the pipeline instead, which a pure stage cannot do.
    """

    name = "stage.limit"

    def __init__(
        self,
        rate: float,
        burst: int,
        by_label: str,
        max_distinct: int,
        dropped: Counter,
        dropped_by_label: Counter | None,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._by_label = by_label
        self._max_distinct = max_distinct
        self._dropped = dropped
        self._dropped_by_label = dropped_by_label
        self._bucket = _TokenBucket(rate, burst)
        # Loki's generational map: at max size the new generation becomes the old one.
        self._new: dict[str, _TokenBucket] = {}
        self._old: dict[str, _TokenBucket] = {}

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        bucket = self._bucket
        value = ""
        if self._by_label:
            found = seg.labels.get(self._by_label)
            if found is None:
                out.append(seg)
                return
            value = found
            bucket = self._bucket_for(value)
        n = len(seg.entries)
        granted = bucket.take(n, now_ns)
        if granted == n:
            out.append(seg)
            return
        self._dropped.inc(n - granted)
        if self._dropped_by_label is not None:
            self._dropped_by_label.labels(self._by_label, value).inc(n - granted)
        emit_without(seg, list(range(granted, n)), out)

    def _bucket_for(self, value: str) -> _TokenBucket:
        bucket = self._new.get(value)
        if bucket is None:
            bucket = self._old.get(value) or _TokenBucket(self._rate, self._burst)
            self._new[value] = bucket
            if len(self._new) >= self._max_distinct:
                self._old, self._new = self._new, {}
                if self._dropped_by_label is not None:
                    self._dropped_by_label.clear()
        return bucket


class MatchStage(Stage):
    """``stage.match``: nested stages for, or drop of, entries a selector matches."""

    name = "stage.match"

    def __init__(
        self,
        selector: Selector,
        stages: Sequence[Stage],
        drop_counter: Counter | None,
    ) -> None:
        self._selector = selector
        self._stages = tuple(stages)
        self._dropped = drop_counter

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        selector = self._selector
        if not selector.matches_labels(seg.labels):
            out.append(seg)
            return
        matched, rest = seg, None
        if selector.filters:
            keeps = selector.keeps_line
            hit = [i for i, e in enumerate(seg.entries) if keeps(e.line)]
            if not hit:
                out.append(seg)
                return
            if len(hit) < len(seg.entries):
                hits = set(hit)
                miss = [i for i in range(len(seg.entries)) if i not in hits]
                matched, rest = seg.subset(hit), seg.subset(miss)
                hand_on(seg.delivery, 2)
        if self._dropped is not None:
            self._dropped.inc(len(matched.entries))
            hand_on(matched.delivery, 0)
        else:
            _reseed(matched)
            out.extend(run_chain(self._stages, [matched], now_ns))
        if rest is not None:
            out.append(rest)

    def flush(self, now_ns: int, force: bool) -> list[Segment]:
        return flush_chain(self._stages, now_ns, force)

    def next_deadline_ns(self) -> int | None:
        return earliest_deadline(self._stages)


def _reseed(seg: Segment) -> None:
    """Seed extracted values with the current labels, as Alloy's nested pipeline."""
    labels = seg.labels
    if labels is not seg.seed:
        seg.seed = {**seg.seed, **labels}
    ex = seg.extracted
    if ex is None or not labels:
        return
    for ov in ex:
        if not ov.keys().isdisjoint(labels):
            for key in labels.keys() & ov.keys():
                ov[key] = labels[key]
