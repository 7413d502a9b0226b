"""``loki.source.file``: the supervisor that keeps one tailer per target file.

Owns target reconciliation (one tailer per ``__path__``), the tailers' tasks (one task
group: a crash is counted and restarted), the inotify watcher they share, positions of
files that no longer exist, and the drain at shutdown. A tailer is ``tailer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry

from minilog.backoff import Backoff
from minilog.docker.frames import DEFAULT_MAX_LINE_SIZE
from minilog.docker.ledger import JOIN_WINDOW_S
from minilog.files.lines import Codec, lookup_encoding
from minilog.files.match import PATH_LABEL
from minilog.files.metrics import FileMetrics, FileRow
from minilog.files.positions import FilePositions
from minilog.files.tailer import FileTailer, FileTargetInfo, TailerOptions
from minilog.files.watch import DirectoryWatcher
from minilog.model import LogsReceiver

__all__ = ["DEFAULT_POLL_S", "FileSource"]

_log = logging.getLogger(__name__)

#: Alloy's ``file_watch`` defaults: poll every 250 ms, backing off to 250 ms.
DEFAULT_POLL_S: Final = 0.25
_STALE_CHECK_S: Final = 600.0
_CRASH_BACKOFF_MIN_S: Final = 0.5
_CRASH_BACKOFF_MAX_S: Final = 30.0


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
        self._watcher = DirectoryWatcher() if inotify else None
        self._settled = asyncio.Event()
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
            watcher=self._watcher,
            on_settled=self._on_settled,
            join_window_s=join_window_s,
        )
        self._positions = positions
        self._tailers: dict[str, FileTailer] = {}
        # Stopped tailers whose deliveries are still in flight.
        self._idle: dict[str, FileTailer] = {}
        self._group: asyncio.TaskGroup | None = None
        self._running = False
        self._closed = False
        self._run_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

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
                tailer = self._idle.pop(path, None) or FileTailer(
                    self._opts, path, labels
                )
                self._tailers[path] = tailer
            tailer.set_labels(labels)
            if self._group is not None and not self._closed and tailer.task is None:
                self._spawn(tailer)
        for path in [p for p in self._tailers if p not in desired]:
            tailer = self._tailers.pop(path)
            if tailer.task is not None:
                tailer.task.cancel()
            self._retire(tailer)

    def targets_info(self) -> list[FileTargetInfo]:
        return [t.info() for t in self._tailers.values()]

    def file_rows(self) -> Iterator[FileRow]:
        for tailer in list(self._tailers.values()):
            yield tailer.row()

    # -- lifetime --

    async def run(self) -> None:
        """Tail until cancelled (or ``aclose()``); saves positions on the way out."""
        if self._running or self._closed:
            raise RuntimeError("FileSource.run() called twice or after aclose()")
        self._running = True
        self._run_task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for tailer in self._tailers.values():
                    if tailer.task is None:
                        self._spawn(tailer)
                group.create_task(self._drop_stale_positions(), name="file positions")
                await self._positions.run_flusher()
        finally:
            self._group = None
            self._closed = True
            if self._watcher is not None:
                await self._watcher.aclose()
            await self._save()
            self._stopped.set()

    async def aclose(self, drain_timeout_s: float = 5.0) -> None:
        """Stop tailing, wait up to ``drain_timeout_s`` for deliveries in flight, then
        save positions. Idempotent."""
        if self._run_task is not None and not self._stopped.is_set():
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stopped.wait()
        elif not self._closed:
            self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                while self._in_flight():
                    self._settled.clear()
                    await self._settled.wait()
        await self._save()

    async def _drop_stale_positions(self) -> None:
        """Drop positions of files that no longer exist and no tailer reads."""
        while True:
            unread = [
                p
                for p in self._positions.ids()
                if p not in self._tailers and p not in self._idle
            ]
            gone = await asyncio.to_thread(_missing, unread)
            for path in gone:
                if path not in self._tailers:
                    self._positions.remove(path)
            await asyncio.sleep(_STALE_CHECK_S)

    def _on_settled(self) -> None:
        self._settled.set()
        if self._idle:
            for path in [p for p, t in self._idle.items() if not t.in_flight]:
                del self._idle[path]

    def _in_flight(self) -> int:
        return sum(t.in_flight for t in (*self._tailers.values(), *self._idle.values()))

    async def _save(self) -> None:
        try:
            async with asyncio.timeout(10):
                await self._positions.asave()
        except OSError:
            pass  # the store says so once and keeps save_error
        except TimeoutError:
            _log.error(
                "saving positions file %s took over 10 s; gave up", self._positions.path
            )

    def _spawn(self, tailer: FileTailer) -> None:
        assert self._group is not None
        tailer.task = self._group.create_task(
            self._supervise(tailer), name=f"file-tailer {tailer.path}"
        )

    async def _supervise(self, tailer: FileTailer) -> None:
        """Run ``tailer`` until it finishes (a compressed file read) or is stopped; a
        crash is caught, counted and restarted with backoff."""
        backoff = Backoff(_CRASH_BACKOFF_MIN_S, _CRASH_BACKOFF_MAX_S)
        try:
            while True:
                try:
                    await tailer.run()
                except Exception as exc:  # noqa: BLE001 - counted, logged, restarted
                    self._metrics.crashes.inc()
                    tailer.last_error = f"tailer crashed: {exc!r}"
                    _log.exception("tailer of file %s crashed", tailer.path)
                    await asyncio.sleep(backoff.next_delay())
                    tailer.rewind()
                    continue
                return
        finally:
            tailer.task = None

    def _retire(self, tailer: FileTailer) -> None:
        if tailer.in_flight:
            self._idle[tailer.path] = tailer
        for path in [p for p, t in self._idle.items() if not t.in_flight]:
            del self._idle[path]


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]
