"""The metrics of ``loki.source.file``: Alloy's ``loki_source_file_*`` and minilog's
own.

``FileMetrics`` registers them once on the registry it is given; the component keeps
one for its life and hands it to every ``FileSource`` it builds. The per-path gauges
(bytes read, file size) are read from the live tailers at scrape time.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["FileMetrics", "FileRow", "FilesView"]

#: One tailed file as the per-path gauges show it: path, bytes read (the read
#: offset), the file's size.
FileRow = tuple[str, int, int]


class FilesView(Protocol):
    """A running source, as its metrics read it at scrape time."""

    def file_rows(self) -> Iterable[FileRow]: ...


class FileMetrics:
    """The source's metrics on one registry, shared by the sources built on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sources: weakref.WeakSet[FilesView] = weakref.WeakSet()
        self.read_lines = Counter(
            "loki_source_file_read_lines",
            "Number of lines read.",
            ["path"],
            registry=registry,
        )
        self.active = Gauge(
            "loki_source_file_files_active_total",
            "Number of active files.",
            registry=registry,
        )
        self.mutated = Counter(
            "minilog_source_file_mutated_lines_total",
            "Lines changed before sending, by reason (invalid_encoding, truncated).",
            ["reason"],
            registry=registry,
        )
        self.crashes = Counter(
            "minilog_source_file_tailer_crashes_total",
            "Tailer crashes caught and restarted by the supervisor.",
            registry=registry,
        )
        self.resume_misses = Counter(
            "minilog_source_file_resume_misses_total",
            "Saved positions that could not be resumed: the file was replaced, "
            "rotated away or truncated while the agent was down and its old content "
            "was not found; the file now at the path is read from its start.",
            registry=registry,
        )
        registry.register(_FileCollector(self.sources))


class _FileCollector(Collector):
    """Alloy's per-path gauges, read from the tailers at scrape time."""

    def __init__(self, sources: weakref.WeakSet[FilesView]) -> None:
        self._sources = sources

    def describe(self) -> list[Metric]:
        return list(self._families([]))

    def collect(self) -> Iterator[Metric]:
        rows: dict[str, FileRow] = {}
        for source in list(self._sources):
            for row in source.file_rows():
                rows.setdefault(row[0], row)
        yield from self._families(list(rows.values()))

    @staticmethod
    def _families(rows: list[FileRow]) -> Iterator[Metric]:
        read = GaugeMetricFamily(
            "loki_source_file_read_bytes_total",
            "Number of bytes read.",
            labels=["path"],
        )
        total = GaugeMetricFamily(
            "loki_source_file_file_bytes_total",
            "Number of bytes total.",
            labels=["path"],
        )
        for path, offset, size in rows:
            read.add_metric([path], float(offset))
            total.add_metric([path], float(size))
        yield read
        yield total
