"""The metrics of ``loki.source.docker``: Alloy's ``loki_source_docker_target_*`` and
minilog's own.

``SourceMetrics`` registers them once on the registry it is given; the component
keeps one for its life and hands it to every ``DockerSource`` it builds, so a source
replaced by a reload counts on in the same series (as Alloy's do). Per-container
series and the gauges over all tailers are read from the live sources at scrape time.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "DROPPED_BY_RELABEL",
    "DROPPED_NO_LABELS",
    "SourceMetrics",
    "TargetRow",
    "TargetsView",
]

#: ``minilog_source_docker_dropped_entries_total`` reasons: a relabel rule dropped the
#: stream, or it was left without any label.
DROPPED_BY_RELABEL: Final = "relabel_dropped"
DROPPED_NO_LABELS: Final = "no_labels"

#: One target as the per-container gauges show it: container name, short ID, whether
#: its stream is followed, its lag in seconds.
TargetRow = tuple[str, str, bool, float]


class TargetsView(Protocol):
    """A running source, as its metrics read it at scrape time."""

    def target_rows(self) -> Iterable[tuple[str, TargetRow]]:
        """``(container id, row)`` per tailer."""
        ...

    def max_lag(self) -> float: ...

    def positions_unsaved_for(self, now: float) -> float: ...


class SourceMetrics:
    """The source's metrics on one registry, shared by the sources built on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        #: Sources counting into these metrics (a reload's new one, the old one
        #: finishing), read at scrape time.
        self.sources: weakref.WeakSet[TargetsView] = weakref.WeakSet()
        sources = self.sources
        self.entries = Counter(
            "loki_source_docker_target_entries_total",
            "Total number of successful entries sent to the Docker target.",
            registry=registry,
        )
        self.parsing_errors = Counter(
            "loki_source_docker_target_parsing_errors_total",
            "Total number of parsing errors while receiving Docker messages.",
            registry=registry,
        )
        self.targets = Gauge(
            "minilog_source_docker_targets",
            "Containers targeted after dedupe by container ID.",
            registry=registry,
        )
        self.active = Gauge(
            "minilog_source_docker_tailers_active",
            "Tailers currently following a container's log stream.",
            registry=registry,
        )
        self.lag = Gauge(
            "minilog_source_docker_lag_seconds",
            "Now minus the newest acknowledged entry timestamp, over tailers with "
            "entries in flight (0 when everything read is acknowledged).",
            registry=registry,
        )
        self.lag.set_function(
            lambda: max((s.max_lag() for s in list(sources)), default=0.0)
        )
        self.mutated = Counter(
            "minilog_source_docker_mutated_lines_total",
            "Lines changed before sending, by reason (invalid_utf8, truncated).",
            ["reason"],
            registry=registry,
        )
        self.dropped = Counter(
            "minilog_source_docker_dropped_entries_total",
            "Entries acknowledged without sending, by reason "
            "(relabel_dropped, no_labels).",
            ["reason"],
            registry=registry,
        )
        for reason in (DROPPED_BY_RELABEL, DROPPED_NO_LABELS):
            self.dropped.labels(reason)
        self.resumes = Counter(
            "minilog_source_docker_resumes_total",
            "Streams resumed from a position, by how: window (since + tail, cheap), "
            "since (dockerd scans the whole log), window_missed (fell back to since), "
            "file (the json-file read from disk).",
            ["mode"],
            registry=registry,
        )
        self.file_gaps = Counter(
            "minilog_source_docker_file_gaps_total",
            "Times the json-file path found that Docker had rotated away (deleted) "
            "log records before they were read (after a stop of the agent, or past "
            "the max-file rotated files it holds open): lines may be lost (how many, "
            "no file tells). Logged once per container with the time span.",
            registry=registry,
        )
        self.file_gap_seconds = Counter(
            "minilog_source_docker_file_gap_seconds_total",
            "Sum of the time spans of those gaps: from the last record read to the "
            "oldest record Docker kept after it.",
            registry=registry,
        )
        self.crashes = Counter(
            "minilog_source_docker_tailer_crashes_total",
            "Tailer crashes caught and restarted by the supervisor.",
            registry=registry,
        )
        self.positions_age = Gauge(
            "minilog_source_docker_positions_age_seconds",
            "How far the positions file lags the acknowledged positions: seconds "
            "since the oldest acknowledgement it does not hold yet (0 while it holds "
            "them all; grows while saves fail).",
            registry=registry,
        )
        self.positions_age.set_function(
            lambda: max(
                (s.positions_unsaved_for(time.monotonic()) for s in list(sources)),
                default=0.0,
            )
        )
        registry.register(_TargetCollector(sources))


class _TargetCollector(Collector):
    """Per-container gauges, read from the tailers at scrape time: whether each target's
    stream is followed, and its read lag. Alloy has no per-target series for Docker;
    these carry the container's name and short ID."""

    def __init__(self, sources: weakref.WeakSet[TargetsView]) -> None:
        self._sources = sources

    def describe(self) -> list[Metric]:
        return list(self._families([]))

    def collect(self) -> Iterator[Metric]:
        rows: list[TargetRow] = []
        seen: set[str] = set()
        for source in list(self._sources):
            for container_id, row in source.target_rows():
                if container_id in seen:
                    continue  # a reload's new source and the old one, briefly
                seen.add(container_id)
                rows.append(row)
        yield from self._families(rows)

    @staticmethod
    def _families(rows: Sequence[TargetRow]) -> Iterator[Metric]:
        labels = ["container", "container_id"]
        running = GaugeMetricFamily(
            "minilog_source_docker_target_running",
            "1 while the target's log stream is followed, 0 while its container is "
            "stopped or the stream is being reopened.",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "minilog_source_docker_target_lag_seconds",
            "Now minus the newest acknowledged entry timestamp of the target while "
            "newer entries are in flight (0 when everything read is acknowledged).",
            labels=labels,
        )
        for name, short_id, is_running, lag_s in rows:
            running.add_metric([name, short_id], 1.0 if is_running else 0.0)
            lag.add_metric([name, short_id], lag_s)
        yield running
        yield lag
