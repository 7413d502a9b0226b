"""Shared helpers of the ``loki.process`` stage tests (``tests/process/``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.process import Pipeline, build_pipeline

__all__ = [
    "FIRSTLINE",
    "LABELS",
    "NOW",
    "ORDER",
    "TRACE",
    "S",
    "Settled",
    "Stages",
    "batch",
    "dropped",
    "lines_of",
    "multiline",
    "ns",
    "only",
    "output_of",
    "run",
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
