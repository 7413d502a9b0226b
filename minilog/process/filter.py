"""``loki.process`` stages that drop entries or route them: ``stage.drop``,
``stage.sampling``, ``stage.limit``, ``stage.match`` (pure; drops are counted in
``loki_process_dropped_lines_total``).
"""

from __future__ import annotations

import random
import re
from collections import deque
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
    """``golang.org/x/time/rate.Limiter``: ``Allow`` for a batch arriving at once, and
    ``Wait``'s reservations."""

    __slots__ = ("_burst", "_last_ns", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_ns: int | None = None

    def _advance(self, now_ns: int) -> float:
        last = self._last_ns
        if last is None:
            return self._burst
        if now_ns < last:
            last = now_ns
        return min(self._burst, self._tokens + (now_ns - last) / 1e9 * self._rate)

    def take(self, wanted: int, now_ns: int) -> int:
        """How many of ``wanted`` entries arriving at ``now_ns`` may pass
        (``Allow``)."""
        tokens = self._advance(now_ns)
        granted = min(wanted, int(tokens))
        if granted:
            self._tokens = tokens - granted
            self._last_ns = now_ns
        return granted

    def reserve(self, wanted: int, now_ns: int) -> list[int]:
        """When each of ``wanted`` entries arriving at ``now_ns`` may go (``Wait``: a
        token is reserved at once, the wait is how long until the bucket covers it)."""
        tokens = self._advance(now_ns)
        times: list[int] = []
        ns_per_token = 1e9 / self._rate
        for _ in range(wanted):
            tokens -= 1
            times.append(
                now_ns if tokens >= 0 else now_ns + int(-tokens * ns_per_token)
            )
        self._tokens = tokens
        self._last_ns = now_ns
        return times


class _Held:
    """Entries ``stage.limit`` holds until their reserved times."""

    __slots__ = ("segment", "start", "times")

    def __init__(self, segment: Segment, times: list[int]) -> None:
        self.segment = segment
        self.times = times
        self.start = 0


class LimitStage(Stage):
    """``stage.limit``: a token bucket (``rate``/s, ``burst``).

    With ``drop = true``, entries over the limit are dropped and counted
    (``ratelimit_drop_stage``); with ``by_label_name``, one bucket per value of that
    label (at most ``max_distinct_labels`` remembered) and entries without the label are
    not limited. With ``drop = false`` (Alloy's default) each entry waits for its token,
    in order: the stage holds the entries whose reserved time has not come (``flush``
    sends them on when it has), and ``backlog`` tells the component how many wait, so
    that it holds back its sources meanwhile, as Alloy's blocked pipeline does. Entries
    still waiting at shutdown are sent (Alloy drops them).
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
        drop: bool = True,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._by_label = by_label
        self._max_distinct = max_distinct
        self._dropped = dropped
        self._dropped_by_label = dropped_by_label
        self._drop = drop
        self.holds = not drop
        self._bucket = _TokenBucket(rate, burst)
        # Loki's generational map: at max size the new generation becomes the old one.
        self._new: dict[str, _TokenBucket] = {}
        self._old: dict[str, _TokenBucket] = {}
        self._held: deque[_Held] = deque()
        self._backlog = 0

    @property
    def backlog(self) -> int:
        """How many entries wait for a token."""
        return self._backlog

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        if not self._drop:
            self._wait(seg, now_ns, out)
            return
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

    def _wait(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        # Entries reserved earlier go first, so that the order is kept.
        out.extend(self._release(now_ns, force=False))
        times = self._bucket.reserve(len(seg.entries), now_ns)
        if not self._held:
            ready = 0
            while ready < len(times) and times[ready] <= now_ns:
                ready += 1
            if ready == len(times):
                out.append(seg)
                return
            if ready:
                hand_on(seg.delivery, 2)
                out.append(seg.subset(list(range(ready))))
                seg = seg.subset(list(range(ready, len(times))))
                times = times[ready:]
        self._held.append(_Held(seg, times))
        self._backlog += len(times)

    def _release(self, now_ns: int, force: bool) -> list[Segment]:
        due: list[Segment] = []
        held = self._held
        while held:
            item = held[0]
            times = item.times
            end = len(times)
            if not force:
                end = item.start
                while end < len(times) and times[end] <= now_ns:
                    end += 1
                if end == item.start:
                    break
            seg = item.segment
            if item.start == 0 and end == len(times):
                due.append(seg)
                held.popleft()
            else:
                if end == len(times):
                    held.popleft()
                else:
                    hand_on(seg.delivery, 2)  # the rest keeps holding a reference
                due.append(seg.subset(list(range(item.start, end))))
                item.start = end
            self._backlog -= len(due[-1].entries)
            if end < len(times):
                break
        return due

    def flush(self, now_ns: int, force: bool) -> list[Segment]:
        return self._release(now_ns, force)

    def next_deadline_ns(self) -> int | None:
        if not self._held:
            return None
        item = self._held[0]
        return item.times[item.start]

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
        self.holds = any(stage.holds for stage in self._stages)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    @property
    def backlog(self) -> int:
        return sum(stage.backlog for stage in self._stages)

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
