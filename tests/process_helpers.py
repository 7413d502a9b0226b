"""Shared helpers of the ``loki.process`` stage tests (``tests/process/``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.process import Pipeline, build_pipeline
from minilog.process.core import MISSING, Segment
from minilog.process.stage import Stage

__all__ = [
    "FIRSTLINE",
    "LABELS",
    "NOW",
    "ORDER",
    "TRACE",
    "Case",
    "In",
    "Out",
    "S",
    "Settled",
    "Stages",
    "Step",
    "batch",
    "compile_config",
    "dropped",
    "lines_of",
    "multiline",
    "ns",
    "only",
    "output_of",
    "run",
    "run_case",
    "sample",
]

S = 1_000_000_000
NOW = int(datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC).timestamp()) * S
LABELS = {"job": "docker", "container": "shop"}

Stages = Sequence[tuple[str, Mapping[str, Any]]]


def ns(dt: datetime) -> int:
    """Unix nanoseconds of an aware datetime, computed independently of minilog."""
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * S + delta.microseconds * 1000


def batch(
    *lines: str,
    labels: Mapping[str, str] | None = None,
    ts: int = NOW,
    delivery: Delivery | None = None,
) -> StreamBatch:
    return StreamBatch(
        dict(LABELS if labels is None else labels),
        [LogEntry(ts + i, line) for i, line in enumerate(lines)],
        delivery,
    )


def run(
    stages: Stages,
    *lines: str,
    labels: Mapping[str, str] | None = None,
    now: int = NOW,
    registry: CollectorRegistry | None = None,
) -> list[StreamBatch]:
    return build_pipeline(stages, registry=registry).process(
        batch(*lines, labels=labels), now
    )


def only(out: list[StreamBatch]) -> StreamBatch:
    assert len(out) == 1, out
    return out[0]


def lines_of(out: list[StreamBatch]) -> list[str]:
    return [e.line for b in out for e in b.entries]


def output_of(stages: Stages, line: str, key: str = "v") -> str:
    """The line after ``stages`` plus ``stage.output`` of extracted ``key``."""
    return only(run([*stages, ("stage.output", {"source": key})], line)).entries[0].line


class Settled:
    """A delivery callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, ok: bool) -> None:
        self.calls.append(ok)


def dropped(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "loki_process_dropped_lines_total", {"reason": reason}
    )
    return 0.0 if value is None else value


ORDER = '{"level":"info","msg":"order processed","ts":"2026-11-27T10:00:00.123Z"}'


FIRSTLINE = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"
TRACE = [
    "2026-11-27 10:00:00 ERROR order failed",
    "java.lang.IllegalStateException: no stock",
    "\tat shop.Cart.checkout(Cart.java:42)",
    "\tat shop.Api.handle(Api.java:7)",
    "2026-11-27 10:00:01 INFO retrying",
]


def multiline(**args: Any) -> Pipeline:
    return build_pipeline([("stage.multiline", {"firstline": FIRSTLINE, **args})])


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# ------------------------------------------------------------- table-driven cases


@dataclass(frozen=True)
class In:
    """One input entry (a batch is a run of entries with the same labels)."""

    line: str
    labels: Mapping[str, str] = field(default_factory=lambda: dict(LABELS))
    ts: int = NOW
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Out:
    """One expected output entry. ``ts``/``metadata`` None: not checked;
    ``extracted``: keys the entry's extracted map must hold (None: absent)."""

    line: str
    labels: Mapping[str, str] = field(default_factory=lambda: dict(LABELS))
    ts: int | None = None
    metadata: tuple[tuple[str, str], ...] | None = ()
    extracted: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Step:
    """At pipeline time ``NOW + at``: send ``send`` (nothing: only the flush timer
    runs), and expect exactly ``expect`` out (in order per label set)."""

    at: int = 0
    send: tuple[In, ...] = ()
    expect: tuple[Out, ...] = ()


@dataclass(frozen=True)
class Case:
    """A configuration (``stage.*`` blocks, or a whole ``loki.process`` block), what
    goes in and what must come out; ``setup`` stages go first to give the example
    the extracted values it assumes; ``final`` is what ``flush_all`` sends at the end;
    ``metrics`` are samples (name, labels, value) expected after the last step."""

    id: str
    config: str
    steps: tuple[Step, ...]
    setup: str = ""
    final: tuple[Out, ...] = ()
    metrics: tuple[tuple[str, Mapping[str, str], float | None], ...] = ()
    note: str = ""


class _Probe(Stage):
    """Records each entry's extracted map (labels seeded), passing entries on."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, Any]] = {}

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        for i, entry in enumerate(seg.entries):
            ov = seg.extracted[i] if seg.extracted is not None else {}
            merged = {**seg.seed, **ov}
            self.seen[id(entry)] = {k: v for k, v in merged.items() if v is not MISSING}
        out.append(seg)


_COMPONENT = re.compile(r"^\s*loki\.process\s", re.MULTILINE)


def compile_config(
    config: str, setup: str = "", registry: CollectorRegistry | None = None
) -> Pipeline:
    """A pipeline from Alloy text, decoded as the ``loki.process`` component does."""
    from minilog.config import Scope, parse
    from minilog.config.ast import Block
    from minilog.process import decode_stages

    text = config
    if not _COMPONENT.search(config):
        text = f'loki.process "doc" {{\n{setup}\n{config}\n}}'
    file = parse(text, "doc.alloy")
    (block,) = [
        s for s in file.body if isinstance(s, Block) and s.full_name == "loki.process"
    ]
    specs = decode_stages(block.body, Scope())
    return build_pipeline(specs, registry=registry)


def _batches(entries: Sequence[In]) -> list[StreamBatch]:
    out: list[StreamBatch] = []
    for entry in entries:
        labels = dict(entry.labels)
        item = LogEntry(entry.ts, entry.line, entry.metadata)
        if out and out[-1].labels == labels:
            out[-1].entries.append(item)
        else:
            out.append(StreamBatch(labels, [item]))
    return out


def _check(
    got: list[StreamBatch], expect: Sequence[Out], probe: _Probe, where: str
) -> None:
    by_labels: dict[tuple[tuple[str, str], ...], list[Out]] = {}
    for e in expect:
        by_labels.setdefault(tuple(sorted(e.labels.items())), []).append(e)
    got_by: dict[tuple[tuple[str, str], ...], list[LogEntry]] = {}
    for b in got:
        got_by.setdefault(tuple(sorted(b.labels.items())), []).extend(b.entries)
    assert {k: [e.line for e in v] for k, v in got_by.items()} == {
        k: [e.line for e in v] for k, v in by_labels.items()
    }, where
    for key, wanted in by_labels.items():
        for entry, want in zip(got_by[key], wanted, strict=True):
            if want.ts is not None:
                assert entry.timestamp_ns == want.ts, (where, entry)
            if want.metadata is not None:
                assert sorted(entry.structured_metadata) == sorted(want.metadata), (
                    where,
                    entry,
                )
            if want.extracted is not None:
                seen = probe.seen.get(id(entry), {})
                for k, v in want.extracted.items():
                    assert seen.get(k, MISSING if v is None else None) == (
                        MISSING if v is None else v
                    ), (where, k, seen)


def run_case(case: Case) -> CollectorRegistry:
    """Run ``case`` and check every step's output; returns the metrics registry."""
    registry = CollectorRegistry()
    pipeline = compile_config(case.config, case.setup, registry)
    probe = _Probe()
    pipeline = Pipeline([*pipeline.stages, probe])
    for i, step in enumerate(case.steps):
        now = NOW + step.at
        got: list[StreamBatch] = []
        got.extend(pipeline.flush_expired(now))
        for b in _batches(step.send):
            got.extend(pipeline.process(b, now))
        _check(got, step.expect, probe, f"{case.id} step {i}")
    end = NOW + (case.steps[-1].at if case.steps else 0)
    _check(pipeline.flush_all(end), case.final, probe, f"{case.id} final")
    for name, labels, value in case.metrics:
        assert registry.get_sample_value(name, dict(labels)) == value, (name, labels)
    return registry
