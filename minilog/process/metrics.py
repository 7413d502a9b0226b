"""``stage.metrics``: counters, gauges and histograms from log entries, per label set.

Owns the custom metric collectors (one series per entry label set, dropped after
``max_idle_duration`` without updates, as Alloy's) and the stage that updates them once
per segment where it can. Collectors register on the injected registry only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from minilog._go import format_float, parse_duration_ns
from minilog.process.core import (
    MISSING,
    Segment,
    extracted_value,
    go_string,
    labels_key,
)
from minilog.process.stage import Stage

__all__ = ["MetricSpec", "MetricsStage", "SeriesCollector", "go_float"]

_NS: Final = 1_000_000_000
_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_GO_FLOAT: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\Z",
    re.IGNORECASE,
)

Key = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One ``metric.counter``/``metric.gauge``/``metric.histogram`` block, validated."""

    kind: str  # "counter", "gauge" or "histogram"
    name: str  # with its prefix
    description: str
    source: str
    value: str
    action: str
    match_all: bool
    count_entry_bytes: bool
    buckets: tuple[float, ...]
    max_idle_ns: int


def go_float(value: Any) -> float | None:
    """Alloy's ``getFloat``: numbers, bools as 1/0, numeric or duration strings."""
    if value is True:
        return 1.0
    if value is False:
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if _GO_FLOAT.match(value):
            return float(value)
        try:
            return parse_duration_ns(value.strip()) / _NS
        except ValueError:
            return None
    return None


class SeriesCollector:
    """A metric whose series are keyed by whole label sets (Alloy's ``metric`` package).

    A ``prometheus_client`` collector: ``collect`` reports every live series under the
    metric's own name, as Alloy does. A series not updated for ``max_idle_duration``
    (whole seconds, as Alloy counts them) is dropped, on scrape and as entries pass.
    A counter whose name does not end in ``_total`` is typed ``untyped``: the Python
    client's text format would otherwise rename it ``<name>_total``.
    """

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        family = spec.name
        kind = spec.kind
        if kind == "counter":
            if family.endswith("_total"):
                family = family[: -len("_total")]
            else:
                kind = "unknown"
        self._family = family
        self._kind = kind
        self._max_idle_s = spec.max_idle_ns // _NS
        self._values: dict[Key, float] = {}
        self._histograms: dict[Key, list[float]] = {}  # bucket counts, then sum, count
        self._updated: dict[Key, int] = {}  # Unix seconds
        # The pipeline's time at the last update, and the monotonic clock then: a
        # scrape's "now" is the pipeline's time plus what passed since.
        self._seen = (0, 0)

    def _touch(self, key: Key, now_ns: int) -> None:
        self._updated[key] = now_ns // _NS
        self._seen = (now_ns, time.monotonic_ns())

    def now_ns(self) -> int:
        """The pipeline's time now, as far as this collector can tell."""
        at, mono = self._seen
        return at + (time.monotonic_ns() - mono)

    def add(self, key: Key, amount: float, now_ns: int) -> None:
        self._values[key] = self._values.get(key, 0.0) + amount
        self._touch(key, now_ns)

    def set(self, key: Key, value: float, now_ns: int) -> None:
        self._values[key] = value
        self._touch(key, now_ns)

    def observe(self, key: Key, values: Iterable[float], now_ns: int) -> None:
        buckets = self.spec.buckets
        state = self._histograms.get(key)
        if state is None:
            state = self._histograms[key] = [0.0] * (len(buckets) + 2)
        for value in values:
            for i, bound in enumerate(buckets):
                if value <= bound:
                    state[i] += 1
            state[-2] += value
            state[-1] += 1
        self._touch(key, now_ns)

    def expire(self, now_ns: int) -> None:
        """Forget series not updated for ``max_idle_duration``."""
        now_s = now_ns // _NS
        limit = self._max_idle_s
        stale = [key for key, at in self._updated.items() if now_s - at >= limit]
        for key in stale:
            del self._updated[key]
            self._values.pop(key, None)
            self._histograms.pop(key, None)

    def describe(self) -> list[Metric]:
        return [Metric(self._family, self.spec.description, self._kind)]

    def collect(self) -> list[Metric]:
        if self._updated:
            self.expire(self.now_ns())
        spec = self.spec
        metric = Metric(self._family, spec.description, self._kind)
        if spec.kind == "histogram":
            for key, state in self._histograms.items():
                labels = dict(key)
                for bound, count in zip(spec.buckets, state, strict=False):
                    le = {**labels, "le": format_float(bound)}
                    metric.add_sample(spec.name + "_bucket", le, count)
                total = {**labels, "le": "+Inf"}
                metric.add_sample(spec.name + "_bucket", total, state[-1])
                metric.add_sample(spec.name + "_sum", labels, state[-2])
                metric.add_sample(spec.name + "_count", labels, state[-1])
            return [metric]
        for key, value in self._values.items():
            metric.add_sample(spec.name, dict(key), value)
        return [metric]


def register_collector(
    registry: CollectorRegistry, spec: MetricSpec
) -> SeriesCollector:
    """A collector for ``spec`` registered on ``registry`` (``ValueError`` if taken)."""
    collector = SeriesCollector(spec)
    registry.register(collector)
    return collector


class MetricsStage(Stage):
    """``stage.metrics``: updates its metrics from each entry; entries pass unchanged.

    A series is keyed by the entry's labels at this stage (internal ``__`` labels
    left out). ``match_all`` counters add a whole segment at once.
    """

    name = "stage.metrics"
    #: How often idle series are looked for.
    SWEEP_NS: ClassVar[int] = _NS

    def __init__(self, collectors: Sequence[SeriesCollector]) -> None:
        self._collectors = tuple(collectors)
        self._swept_ns = 0

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        key = labels_key(
            {k: v for k, v in seg.labels.items() if not k.startswith("__")}
        )
        for collector in self._collectors:
            self._update(collector, seg, key, now_ns)
        if now_ns - self._swept_ns >= self.SWEEP_NS:
            self._swept_ns = now_ns
            for collector in self._collectors:
                collector.expire(now_ns)
        out.append(seg)

    def _update(
        self, collector: SeriesCollector, seg: Segment, key: Key, now_ns: int
    ) -> None:
        spec = collector.spec
        if spec.match_all:
            # Every entry counts, whatever the extracted map holds.
            if spec.count_entry_bytes:
                size = sum(len(e.line.encode()) for e in seg.entries)
                collector.add(key, float(size), now_ns)
            elif spec.action == "inc":
                collector.add(key, float(len(seg.entries)), now_ns)
            # "add" without count_entry_bytes has no value to add: Alloy adds nothing.
            return
        values = list(self._matching(spec, seg))
        if not values:
            return
        to_float = go_float
        if spec.kind == "histogram":
            floats = [f for f in map(to_float, values) if f is not None]
            if floats:
                collector.observe(key, floats, now_ns)
            return
        action = spec.action
        if action == "inc":
            collector.add(key, float(len(values)), now_ns)
        elif action == "dec":
            collector.add(key, -float(len(values)), now_ns)
        elif action == "set":
            for value in values:
                f = to_float(value)
                if f is not None:
                    collector.set(key, f, now_ns)
        else:
            total = 0.0
            changed = False
            for value in values:
                f = to_float(value)
                # A counter only grows: Alloy would panic where minilog skips.
                if f is not None and not (spec.kind == "counter" and f < 0):
                    total += f
                    changed = True
            if changed:
                collector.add(key, -total if action == "sub" else total, now_ns)

    def _matching(self, spec: MetricSpec, seg: Segment) -> Iterable[Any]:
        """The source values of the entries that update ``spec``."""
        seed: Mapping[str, str] = seg.seed
        ex = seg.extracted
        for i in range(len(seg.entries)):
            value = extracted_value(ex[i] if ex is not None else {}, seed, spec.source)
            if value is MISSING:
                continue
            if spec.value and go_string(value) != spec.value:
                continue
            yield value


def is_valid_metric_name(name: str) -> bool:
    return _METRIC_NAME.match(name) is not None
