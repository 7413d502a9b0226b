"""Waking readers of files when the directories they read change: inotify, with polling
as the floor (the one module that speaks to the kernel's inotify).

Shared by the file tailers of ``loki.source.file``, the json-file tailers of
``loki.source.docker`` and ``local.file``; owned by neither boundary package. A reader
at the end of its file waits for the next change; inotify tells of a write, a rename, a
creation or a deletion in the file's directory at once (a new line is read within
milliseconds, where polling alone costs a poll interval). Events are only hints: every
reader still polls at its own frequency, so a file system without inotify events (NFS,
a FUSE mount, an exhausted ``max_user_watches``, a system without inotify) only costs
latency, never lines.

The library is ``asyncinotify``: one inotify descriptor per watcher on the event loop
(no thread), any number of directories on it, events delivered to asyncio events. A
source with a thousand tailers costs one descriptor and one task; ``watchfiles`` (which
``local.file`` used before) runs a thread and an inotify instance per watch, and
``max_user_instances`` is 128 by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Final

from asyncinotify import Inotify, Mask, Watch

__all__ = ["DirectoryWatcher"]

_log = logging.getLogger(__name__)

_MASK: Final = (
    Mask.MODIFY
    | Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.CLOSE_WRITE
    | Mask.ATTRIB
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
)


class DirectoryWatcher:
    """One inotify instance shared by a source's tailers (or one ``local.file``).

    ``subscribe(directory, event)`` sets ``event`` on every change in ``directory``
    until ``unsubscribe``. Without inotify (or when a directory cannot be watched)
    subscribing does nothing and the tailers poll; subscribing again retries the watch
    (a directory that did not exist may exist now).
    """

    def __init__(self) -> None:
        self._inotify: Inotify | None = None
        self._watches: dict[str, Watch] = {}
        self._subscribers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    def _ensure(self) -> Inotify | None:
        if self._inotify is None and not self._warned:
            try:
                self._inotify = Inotify()
            # asyncinotify imports everywhere but finds no inotify_init1 off Linux.
            except (OSError, RuntimeError, AttributeError) as exc:
                self._warned = True
                _log.warning("inotify is not available (%s): polling files only", exc)
                return None
            self._task = asyncio.get_running_loop().create_task(
                self._pump(self._inotify), name="inotify"
            )
        return self._inotify

    def subscribe(self, directory: str, event: asyncio.Event) -> None:
        directory = os.path.normpath(directory)
        subscribers = self._subscribers.setdefault(directory, set())
        subscribers.add(event)
        if directory in self._watches:
            return
        inotify = self._ensure()
        if inotify is None:
            return
        try:
            self._watches[directory] = inotify.add_watch(Path(directory), _MASK)
        except OSError as exc:
            _log.debug("cannot watch %s (%s): polling it", directory, exc)

    def unsubscribe(self, directory: str, event: asyncio.Event) -> None:
        directory = os.path.normpath(directory)
        subscribers = self._subscribers.get(directory)
        if subscribers is None:
            return
        subscribers.discard(event)
        if subscribers:
            return
        del self._subscribers[directory]
        watch = self._watches.pop(directory, None)
        if watch is not None and self._inotify is not None:
            # The directory may be gone already (the kernel dropped the watch).
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._inotify.rm_watch(watch)

    async def _pump(self, inotify: Inotify) -> None:
        async for event in inotify:
            if event.mask & Mask.IGNORED:
                # The directory went away: forget its watch, wake its tailers.
                for directory, watch in list(self._watches.items()):
                    if watch is event.watch:
                        del self._watches[directory]
            if event.mask & Mask.Q_OVERFLOW:
                for subscribers in self._subscribers.values():
                    for waiter in subscribers:
                        waiter.set()
                continue
            target = event.watch
            if target is None:
                continue
            for waiter in self._subscribers.get(str(target.path), ()):
                waiter.set()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._watches.clear()
