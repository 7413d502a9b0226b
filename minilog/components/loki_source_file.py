"""``loki.source.file``: tails the files named by ``targets`` (``files.FileSource``).

Owns the positions file (``<storage>/<id>/positions.json``, converted from
``legacy_positions_file`` when it does not exist yet), the ``file_match`` block (globs
resolved here every ``sync_period``) and the reset rule: a change of ``encoding``,
``decompression``, ``file_watch`` or ``tail_from_end`` replaces the source (the old one
stops first and records its positions); a change of ``targets``, ``forward_to`` or
``file_match`` is applied in place. Health: unhealthy, with the reason, while the
positions file cannot be saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from minilog.components.arguments import positioned
from minilog.components.base import Component, ComponentOptions, register
from minilog.components.tailing import (
    positions_debug_info,
    positions_health,
    run_until_replaced,
)
from minilog.config.ast import Block
from minilog.config.schema import attr, block
from minilog.files.lines import lookup_encoding
from minilog.files.match import match_targets
from minilog.files.metrics import FileMetrics
from minilog.files.positions import FilePosition, FilePositions, read_legacy_positions
from minilog.files.source import DEFAULT_POLL_S, FileSource
from minilog.model import LogsReceiver

__all__ = [
    "COMPRESSION_FORMATS",
    "DecompressionArgs",
    "FileMatchArgs",
    "FileWatchArgs",
    "LokiSourceFile",
    "LokiSourceFileArgs",
]

_log = logging.getLogger(__name__)

#: ``decompression.format`` values: gzip, zlib (``z``), bzip2, as in Alloy.
COMPRESSION_FORMATS: Final = ("gz", "z", "bz2")
_ON_POSITIONS_FILE_ERROR: Final = ("skip", "restart_from_end", "restart_from_beginning")


@dataclass(frozen=True, kw_only=True)
class DecompressionArgs:
    """The ``decompression`` block."""

    enabled: bool = attr("bool", required=True)
    format: str = attr("string", required=True)
    initial_delay: float = attr("duration", 0.0)


@dataclass(frozen=True, kw_only=True)
class FileWatchArgs:
    """The ``file_watch`` block: how often a file at its end is checked."""

    min_poll_frequency: float = attr("duration", DEFAULT_POLL_S)
    max_poll_frequency: float = attr("duration", DEFAULT_POLL_S)


@dataclass(frozen=True, kw_only=True)
class FileMatchArgs:
    """The ``file_match`` block: ``__path__`` globs resolved by the component."""

    enabled: bool = attr("bool", False)
    sync_period: float = attr("duration", 10.0)
    ignore_older_than: float = attr("duration", 0.0)


@dataclass(frozen=True, kw_only=True)
class LokiSourceFileArgs:
    """``loki.source.file``'s arguments, Alloy's names and defaults."""

    targets: tuple[Mapping[str, str], ...] = attr("list(map(string))", required=True)
    forward_to: tuple[LogsReceiver, ...] = attr("list(capsule)", required=True)
    encoding: str = attr("string", "")
    tail_from_end: bool = attr("bool", False)
    legacy_positions_file: str = attr("string", "")
    on_positions_file_error: str = attr("string", "restart_from_beginning")
    decompression: DecompressionArgs | None = block(DecompressionArgs)
    file_watch: FileWatchArgs | None = block(FileWatchArgs)
    file_match: FileMatchArgs | None = block(FileMatchArgs)

    @property
    def compression(self) -> str:
        d = self.decompression
        return d.format if d is not None and d.enabled else ""

    @property
    def watch(self) -> FileWatchArgs:
        return self.file_watch or FileWatchArgs()

    @property
    def matching(self) -> FileMatchArgs:
        return self.file_match or FileMatchArgs()

    def resets(self, old: LokiSourceFileArgs) -> bool:
        """Whether going from ``old`` needs a new source."""
        return (
            self.encoding,
            self.decompression,
            self.watch,
            self.tail_from_end,
        ) != (old.encoding, old.decompression, old.watch, old.tail_from_end)


@register
class LokiSourceFile(Component[LokiSourceFileArgs]):
    """Tails every file named by ``targets``; no exports."""

    name = "loki.source.file"
    args_class = LokiSourceFileArgs
    phase = "source"

    @classmethod
    def check_args(cls, args: LokiSourceFileArgs, block: Block) -> None:
        try:
            lookup_encoding(args.encoding)
        except ValueError as exc:
            raise positioned(block, f"encoding: {exc}") from exc
        d = args.decompression
        if d is not None and d.format not in COMPRESSION_FORMATS:
            raise positioned(
                block,
                f"unsupported compression format: {d.format!r} - please use one of "
                + ", ".join(repr(f) for f in COMPRESSION_FORMATS),
            )
        if args.on_positions_file_error not in _ON_POSITIONS_FILE_ERROR:
            raise positioned(
                block,
                "unknown OnPositionsFileError value: " + args.on_positions_file_error,
            )
        if args.matching.sync_period <= 0:
            raise positioned(block, "sync period must be greater than 0")

    def __init__(self, opts: ComponentOptions, args: LokiSourceFileArgs) -> None:
        super().__init__(opts, args)
        self._fanout = self.output_fanout(args.forward_to)
        path = opts.data_path / "positions.json"
        if args.legacy_positions_file:
            _convert_legacy(Path(args.legacy_positions_file), path, self.log)
        self._positions = FilePositions(path, on_save=positions_health(self, path))
        if args.tail_from_end and args.compression:
            self.log.warning(
                "tail_from_end is not supported with decompression: files are read "
                "from their start"
            )
        self._metrics = FileMetrics(opts.registry)
        self._source = self._build(args)
        self._replaced = asyncio.Event()
        self._resync = asyncio.Event()

    def _build(self, args: LokiSourceFileArgs) -> FileSource:
        d = args.decompression
        watch = args.watch
        source = FileSource(
            [self._fanout],
            positions=self._positions,
            metrics=self._metrics,
            encoding=args.encoding,
            compression=args.compression,
            initial_delay_s=d.initial_delay if d is not None and d.enabled else 0.0,
            tail_from_end=args.tail_from_end and not args.compression,
            min_poll_s=watch.min_poll_frequency,
            max_poll_s=watch.max_poll_frequency,
        )
        source.update_targets(self._resolve(args))
        return source

    @staticmethod
    def _resolve(args: LokiSourceFileArgs) -> Sequence[Mapping[str, str]]:
        """The targets as files: globbed with ``file_match``, else as given."""
        matching = args.matching
        if not matching.enabled:
            return args.targets
        return match_targets(
            args.targets, ignore_older_than_s=matching.ignore_older_than
        )

    async def run(self) -> None:
        """Owns the current source and the ``file_match`` sync loop."""
        sync = asyncio.create_task(self._sync_loop(), name=f"{self.id} file_match")
        try:
            while True:
                await run_until_replaced(
                    self._source,
                    self._replaced,
                    name=f"{self.id} source",
                    what="the file source",
                )
                self._source = self._build(self.args)
        finally:
            sync.cancel()
            await asyncio.gather(sync, return_exceptions=True)
            self.set_health("exited", "stopped")

    async def _sync_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.args.matching.sync_period):
                    await self._resync.wait()
            except TimeoutError:
                pass
            self._resync.clear()
            if self.args.matching.enabled:
                targets = await asyncio.to_thread(self._resolve, self.args)
                self._source.update_targets(targets)

    async def finalize(self) -> None:
        with contextlib.suppress(OSError):  # the store logs it (once) and keeps it
            await self._positions.asave()

    async def update(self, args: LokiSourceFileArgs) -> None:
        old, self.args = self.args, args
        self._fanout.set(args.forward_to)
        if not args.resets(old):
            self._source.update_targets(self._resolve(args))
            self._resync.set()
            return
        self._replaced.set()

    def debug_info(self) -> Any:
        return {
            "targets_info": [asdict(i) for i in self._source.targets_info()],
            **positions_debug_info(self._positions),
        }


def _convert_legacy(
    legacy: Path,
    path: Path,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Alloy's conversion: only when the new positions file does not exist (or is
    empty) and the legacy file is valid; the legacy offsets carry no file identity."""
    try:
        if path.stat().st_size > 0:
            log.info(
                "will not convert the legacy positions file as the new positions "
                "file already exists (%s)",
                path,
            )
            return
    except OSError:
        pass
    positions = read_legacy_positions(legacy)
    if positions is None:
        log.info(
            "will not convert the legacy positions file %s as it is not valid or "
            "does not exist",
            legacy,
        )
        return
    store = FilePositions(path)
    for file, offset in positions.items():
        store.put(file, FilePosition(offset))
    try:
        store.save()
    except OSError as exc:
        log.error(
            "error writing positions file %s converted from legacy: %s", path, exc
        )
        return
    log.info("converted the legacy positions file %s to %s", legacy, path)
