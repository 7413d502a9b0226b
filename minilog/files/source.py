"""``loki.source.file``: the supervisor that keeps one tailer per target file.

Owns target reconciliation (one tailer per ``__path__``), the inotify watcher the
tailers share and which positions are stale (files that no longer exist). The task
group, crash restarts, idle tailers, saves and the drain are every tailing source's
(``minilog.tailing``). A tailer is ``tailer``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry

from minilog.docker.frames import DEFAULT_MAX_LINE_SIZE
from minilog.files.lines import Codec, lookup_encoding
from minilog.files.match import PATH_LABEL
from minilog.files.metrics import FileMetrics, FileRow
from minilog.files.positions import FilePositions
from minilog.files.tailer import FileTailer, FileTargetInfo, TailerOptions
from minilog.fswatch import DirectoryWatcher
from minilog.ledger import JOIN_WINDOW_S
from minilog.model import LogsReceiver
from minilog.tailing import DRAIN_TIMEOUT_S, TailerSupervisor

__all__ = ["DEFAULT_POLL_S", "FileSource"]

_log = logging.getLogger(__name__)

#: Alloy's ``file_watch`` defaults: poll every 250 ms, backing off to 250 ms.
DEFAULT_POLL_S: Final = 0.25


class FileSource:
    """Tails the files of ``targets`` (each with ``__path__``), forwards their lines.

    Args:
        forward_to: receivers, sent to in order.
        positions: committed positions, saved as soon as they move and at close.
        encoding: the files' encoding ("" is UTF-8); see ``lines.lookup_encoding``.
        compression: "", "gz", "z" (zlib) or "bz2": files are read once, decompressed.
        initial_delay_s: with ``compression``, wait this long before reading a file.
        tail_from_end: a file without a position starts after its last whole line.
        min_poll_s, max_poll_s: ``file_watch``: how often a file at its end is checked
            (doubling from min to max while nothing changes); inotify wakes a tailer
            sooner.
        max_line_size: longer lines are cut and counted.
        inotify: wake tailers on directory events (polling alone when False).
        join_window_s: how long a read whose delivery is pending takes in the reads
            that follow (``ledger.JOIN_WINDOW_S``); 0: one delivery per read.

    Call ``update_targets`` with the targets, ``run()`` in a task and ``aclose()`` to
    stop. A file whose target goes away keeps its position while the file exists, so
    it resumes if the target comes back (Alloy forgets it and reads the file again
    from the start); positions of files that no longer exist are dropped.
    """

    def __init__(
        self,
        forward_to: Sequence[LogsReceiver],
        *,
        positions: FilePositions,
        registry: CollectorRegistry | None = None,
        metrics: FileMetrics | None = None,
        encoding: str = "",
        compression: str = "",
        initial_delay_s: float = 0.0,
        tail_from_end: bool = False,
        min_poll_s: float = DEFAULT_POLL_S,
        max_poll_s: float = DEFAULT_POLL_S,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        inotify: bool = True,
        join_window_s: float = JOIN_WINDOW_S,
    ) -> None:
        if metrics is None:
            metrics = FileMetrics(
                registry if registry is not None else CollectorRegistry()
            )
        self._metrics = metrics
        metrics.sources.add(self)
        codec: Codec = lookup_encoding(encoding)
        watcher = DirectoryWatcher() if inotify else None
        # A tailer that returns has read its (compressed) file to the end: it is done.
        self._supervisor: TailerSupervisor[FileTailer] = TailerSupervisor(
            name="FileSource",
            positions=positions,
            crashes=metrics.crashes,
            log=_log,
            describe=lambda path: f"file {path}",
            task_name=lambda path: f"file-tailer {path}",
            sweep=self._drop_missing_positions,
            sweep_name="file positions",
            watcher=watcher,
        )
        self._opts = TailerOptions(
            forward_to=list(forward_to),
            positions=positions,
            metrics=metrics,
            codec=codec,
            compression=compression,
            initial_delay_s=initial_delay_s,
            tail_from_end=tail_from_end,
            min_poll_s=min(min_poll_s, max_poll_s),
            max_poll_s=max_poll_s,
            max_line_size=max_line_size,
            watcher=watcher,
            on_settled=self._supervisor.on_settled,
            join_window_s=join_window_s,
        )
        self._positions = positions
        # The supervisor's own dict: reconciled here, supervised there.
        self._tailers = self._supervisor.tailers

    # -- targets --

    def update_targets(self, targets: Sequence[Mapping[str, str]]) -> None:
        """Reconcile tailers with ``targets``; the first target of a path wins."""
        desired: dict[str, Mapping[str, str]] = {}
        for target in targets:
            path = target.get(PATH_LABEL, "")
            if not path:
                _log.debug("target without %s skipped: %s", PATH_LABEL, target)
                continue
            desired.setdefault(os.path.normpath(path), target)
        for path, labels in desired.items():
            tailer = self._tailers.get(path)
            if tailer is None:
                tailer = self._supervisor.take_idle(path) or FileTailer(
                    self._opts, path, labels
                )
                self._tailers[path] = tailer
            tailer.set_labels(labels)
            self._supervisor.start(path, tailer)
        for path in [p for p in self._tailers if p not in desired]:
            tailer = self._tailers.pop(path)
            if tailer.task is not None:
                tailer.task.cancel()
            self._supervisor.retire(path, tailer)

    def targets_info(self) -> list[FileTargetInfo]:
        return [t.info() for t in self._tailers.values()]

    def file_rows(self) -> Iterator[FileRow]:
        for tailer in list(self._tailers.values()):
            yield tailer.row()

    # -- lifetime --

    async def run(self) -> None:
        """Tail until cancelled (or ``aclose()``); saves positions on the way out."""
        await self._supervisor.run()

    async def aclose(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop tailing, wait up to ``drain_timeout_s`` for deliveries in flight, then
        save positions. Idempotent."""
        await self._supervisor.aclose(drain_timeout_s)

    async def _drop_missing_positions(self) -> None:
        """Drop positions of files that no longer exist and no tailer reads."""
        unread = [p for p in self._positions.ids() if not self._supervisor.tails(p)]
        gone = await asyncio.to_thread(_missing, unread)
        for path in gone:
            if path not in self._tailers:
                self._positions.remove(path)


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]
