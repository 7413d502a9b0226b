"""``local.file``: a file's content as an export, re-read when it changes.

What people use to keep passwords and tokens out of ``config.alloy``
(``password = local.file.pw.content``). With ``is_secret = true`` the export is a
``Secret``: the UI, its JSON and the logs show ``(secret)``, and a ``string`` argument
refuses it, as in Alloy.

Change detection, as Alloy's: ``detector = "fsnotify"`` (the default) watches the
file's directory with inotify (``minilog.fswatch``, as the file tailers) and also
re-reads every ``poll_frequency``, which is how Alloy recovers a watch lost to a deleted
file (the watch is asked for again at every poll tick);
``"poll"`` re-reads every ``poll_frequency`` only. The directory, not the file, is
watched, so a replace by rename (editors, Kubernetes secret volumes swapping a
symlink) is seen too. Every event leads to a read after a short pause (Alloy's 30 ms,
so a writer's partial write is not exported); dependents are re-evaluated only when
the content changed. A file that cannot be read makes the component unhealthy with the
reason and keeps the last content exported; reading it again makes it healthy.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from prometheus_client import Gauge

from minilog.components.arguments import positioned
from minilog.components.base import Component, ComponentOptions, register
from minilog.config.ast import Block
from minilog.config.schema import attr
from minilog.config.stdlib import Secret
from minilog.errors import MinilogError
from minilog.fswatch import DirectoryWatcher

__all__ = ["DETECTORS", "LocalFile", "LocalFileArgs", "read_content"]

#: Alloy's ``detector`` values ("" means the default).
DETECTORS: Final = ("fsnotify", "poll")

#: Pause between a change event and the read (Alloy's ``waitReadPeriod``).
_WAIT_READ_S: Final = 0.03


@dataclass(frozen=True, kw_only=True)
class LocalFileArgs:
    """``local.file``'s arguments, Alloy's names and defaults."""

    filename: str = attr("string", required=True)
    detector: str = attr("string", "fsnotify")
    poll_frequency: float = attr("duration", 60.0)
    is_secret: bool = attr("bool", False)


def read_content(filename: str) -> str:
    """The file's text; an unreadable file raises ``MinilogError`` worded as Go's
    ``os.ReadFile`` error (``open /x: no such file or directory``)."""
    try:
        data = Path(filename).read_bytes()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        reason = reason[:1].lower() + reason[1:]
        # Go opens a directory fine and fails on the read.
        op = "read" if exc.errno == errno.EISDIR else "open"
        raise MinilogError(f"{op} {filename}: {reason}") from None
    return data.decode("utf-8", errors="replace")


def _directory_of(filename: str) -> str:
    """The directory to watch: a replace by rename changes it, not the file's inode."""
    return os.path.dirname(os.path.abspath(filename))


@register
class LocalFile(Component[LocalFileArgs]):
    """Exports ``content``: the file's text, a ``Secret`` when ``is_secret``."""

    name = "local.file"
    args_class = LocalFileArgs
    phase = "discovery"

    @classmethod
    def check_args(cls, args: LocalFileArgs, block: Block) -> None:
        if args.detector not in ("", *DETECTORS):
            raise positioned(
                block,
                f'unrecognized detector "{args.detector}", expected fsnotify or poll',
            )
        if args.poll_frequency <= 0:
            raise positioned(block, "poll_frequency must be greater than 0")

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"content": ""}

    @classmethod
    def validation_exports(
        cls, component_id: str, args: LocalFileArgs
    ) -> Mapping[str, Any]:
        # A secret placeholder, so that validation refuses it where Alloy would.
        return {"content": Secret("") if args.is_secret else ""}

    def __init__(self, opts: ComponentOptions, args: LocalFileArgs) -> None:
        super().__init__(opts, args)
        self._last_accessed = Gauge(
            "local_file_timestamp_last_accessed_unix_seconds",
            "The last successful access in unix seconds",
            registry=opts.registry,
        )
        self._content = self._read_or_raise(args)
        self._exports: dict[str, Any] = {"content": self._wrap(self._content, args)}
        self.set_health("healthy", "read file")
        self._restart = asyncio.Event()
        self._wake = asyncio.Event()
        self._watch_events = 0  # wake-ups by a change notification (the UI shows it)

    @staticmethod
    def _wrap(content: str, args: LocalFileArgs) -> str:
        return Secret(content) if args.is_secret else content

    def _read_or_raise(self, args: LocalFileArgs) -> str:
        try:
            content = read_content(args.filename)
        except MinilogError as exc:
            raise MinilogError(f"failed to read file: {exc}") from None
        self._last_accessed.set(time.time())
        return content

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def update(self, args: LocalFileArgs) -> None:
        # As Alloy: read at once, so a bad file name is reported by the update.
        content = self._read_or_raise(args)
        self.clear_problem("read", "read file")
        old = self.args
        self.args = args
        self._publish(content)
        if (args.filename, args.detector, args.poll_frequency) != (
            old.filename,
            old.detector,
            old.poll_frequency,
        ):
            self._restart.set()

    def _publish(self, content: str) -> None:
        exported = self._wrap(content, self.args)
        previous = self._exports["content"]
        self._content = content
        if exported == previous and type(exported) is type(previous):
            return
        self._exports = {"content": exported}
        self.opts.on_exports()

    async def _reread(self) -> None:
        filename = self.args.filename
        try:
            content = await asyncio.to_thread(read_content, filename)
        except MinilogError as exc:
            message = f"failed to read file: {exc}"
            if not self.has_problem("read"):
                self.log.error(
                    "failed to read file", extra={"path": filename, "err": str(exc)}
                )
            self.report_problem("read", message)
            return
        self._last_accessed.set(time.time())
        if self.has_problem("read"):
            self.log.info("read file again", extra={"path": filename})
        self.clear_problem("read", "read file")
        self._publish(content)

    async def run(self) -> None:
        while True:
            self._restart.clear()
            args = self.args
            directory = _directory_of(args.filename)
            watcher = DirectoryWatcher() if args.detector != "poll" else None
            try:
                while not self._restart.is_set():
                    if watcher is not None:
                        # Asked again at every poll tick, as Alloy re-adds its watch:
                        # the directory may have appeared (or come back) meanwhile.
                        watcher.subscribe(directory, self._wake)
                    woken = await self._wait(args.poll_frequency)
                    if self._restart.is_set():
                        break
                    if woken:
                        self._watch_events += 1
                        # Let a writer finish before reading (Alloy's 30 ms).
                        await asyncio.sleep(_WAIT_READ_S)
                    self._wake.clear()
                    await self._reread()
            finally:
                if watcher is not None:
                    watcher.unsubscribe(directory, self._wake)
                    await watcher.aclose()

    async def _wait(self, poll_s: float) -> bool:
        """Until a change event, a restart or ``poll_s``: whether an event woke us."""
        wake = asyncio.create_task(self._wake.wait())
        restart = asyncio.create_task(self._restart.wait())
        try:
            done, _ = await asyncio.wait(
                {wake, restart}, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wake.cancel()
            restart.cancel()
        return wake in done

    def debug_info(self) -> Any:
        return {
            "filename": self.args.filename,
            "detector": self.args.detector,
            "watch_events": self._watch_events,
        }
