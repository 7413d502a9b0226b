"""One container's tailer for ``loki.source.docker``: follow its log, forward it.

Owns the container's lifecycle as the source sees it (alloy-spec §3.3: follow while it
runs, read a stopped one once more per run, stop when it is removed or leaves
discovery), the cheap resume from a position (``since`` plus a ``tail`` window, checked
against a probe), the labels of each stream (stdout, stderr) and the fan-out of each
read chunk with one delivery. Decoding is ``frames``, positions ``ledger``, HTTP
``client``; the supervisor that runs tailers is ``source``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, ParamSpec, Protocol, TypeVar

from minilog.backoff import Backoff
from minilog.docker.client import since_arg
from minilog.docker.frames import (
    Decoded,
    FrameDecoder,
    JsonLogDecoder,
    RawLineSplitter,
    format_timestamp,
    frame_timestamp,
    json_record_timestamp,
    split_frames,
)
from minilog.docker.logfiles import Gap, LogFile, open_from, readable, successors
from minilog.docker.metrics import DROPPED_BY_RELABEL, DROPPED_NO_LABELS, SourceMetrics
from minilog.docker.positions import Positions
from minilog.errors import DockerError
from minilog.fswatch import DirectoryWatcher
from minilog.labels import format_labels
from minilog.ledger import Ledger, Position
from minilog.model import LogsReceiver, StreamBatch, entries_size
from minilog.relabel import RelabelRulesLike, docker_stream_labels

__all__ = [
    "LOGS_FROM",
    "ContainerTailer",
    "DockerLogsAPI",
    "StreamStats",
    "TailerContext",
    "TargetInfo",
]

_log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_T = TypeVar("_T")

_UNREADABLE_RETRY_S: Final = 60.0
#: First delay after a failed inspect or log stream (growing to the inspect interval).
_RETRY_MIN_S: Final = 0.5
# A resume probe larger than this is not worth it: follow with since alone.
_PROBE_MAX_BYTES: Final = 4 << 20
#: ``logs_from`` values: the json-file on disk where readable, else the API
#: ("auto"); the API only; the file only.
LOGS_FROM: Final = ("auto", "api", "file")
#: Bytes of a json-file read at a time. Under the 128 KiB from which the agent has
#: glibc map every block afresh (``cli._pin_mmap_threshold``): the chunk and its copies
#: then reuse heap memory (1 MiB reads cost ~0.5 CPU s more per 1M lines, most of it
#: page faults; 64-120 KiB measured alike). A read is also decoded whole before the
#: writer's queue admits it, memory the queue cannot count: 1 MiB reads held a few MB
#: above the queue bound while catching up after an outage.
_FILE_CHUNK: Final = 120 << 10
#: How often a followed json-file is checked when no inotify event comes.
_FILE_POLL_S: Final = 0.25
#: Docker's ``max-file`` when the container's log options do not set it.
_DOCKER_MAX_FILE: Final = 1


class DockerLogsAPI(Protocol):
    """The part of ``client.DockerClient`` a tailer uses (a seam for fakes)."""

    async def inspect(self, container_id: str) -> dict[str, Any]: ...

    def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        stdout: bool = True,
        stderr: bool = True,
        timestamps: bool = True,
        since: str | None = None,
        tail: str | None = None,
    ) -> AsyncGenerator[bytes, None]: ...


@dataclass(slots=True)
class TailerContext:
    """What every tailer of one source shares."""

    client: DockerLogsAPI
    forward_to: Sequence[LogsReceiver]
    relabel_rules: RelabelRulesLike | None
    positions: Positions
    metrics: SourceMetrics
    max_line_size: int
    inspect_interval_s: float
    tail_window: int
    clock: Callable[[], float]
    on_settled: Callable[[], None]
    join_window_s: float
    logs_from: str = "auto"
    watcher: DirectoryWatcher | None = None


@dataclass(slots=True)
class StreamStats:
    """What one stream (``stdout``/``stderr``) of a container handed on: entries and
    their bytes (``model.entries_size``), and the newest entry's timestamp."""

    lines: int = 0
    bytes: int = 0
    last_ns: int = 0


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """Debug state of one tailer, for the UI (Alloy's ``targets_info``).

    ``lag_s``: seconds since the newest acknowledged entry while newer ones are in
    flight (0 when everything read is acknowledged); ``streams``: per stream, what was
    handed on since this tailer started.
    """

    id: str
    labels: str
    is_running: bool
    last_error: str
    position_ns: int
    read_position_ns: int
    lag_s: float = 0.0
    streams: dict[str, StreamStats] = field(default_factory=dict)
    #: Where the log is read: "api", or "file" (the json-file on disk).
    reading_from: str = "api"


def _max_file(info: Mapping[str, Any]) -> int:
    """The container's ``max-file`` log option (Docker's default when unset)."""
    log_config = (info.get("HostConfig") or {}).get("LogConfig") or {}
    value = (log_config.get("Config") or {}).get("max-file")
    try:
        return max(int(value), 1) if value is not None else _DOCKER_MAX_FILE
    except (TypeError, ValueError):
        return _DOCKER_MAX_FILE


@dataclass(frozen=True, slots=True)
class _Missing:
    """In a held chain: Docker deleted files here before they were held; the next
    file it kept starts at ``before_ns`` (0: unknown)."""

    before_ns: int


@dataclass(slots=True)
class _HeldFiles:
    """The json-file being read (``current``) and the files Docker rotated after it,
    each opened as soon as it is seen (``pending``, oldest first).

    Docker deletes its oldest file at every rotation past ``max-file``; a deleted file
    that is open stays readable. So while the agent runs, whatever holds up the reader
    (Loki down, backpressure), the files behind it are kept from deletion by their
    open descriptors, up to ``limit`` of them (the container's ``max-file``: its logs
    take at most twice Docker's budget on disk). Past that, newer files are not held,
    and the ones Docker deletes before the reader gets there are a gap (``_Missing``).
    """

    log_path: str
    current: LogFile
    pending: list[LogFile | _Missing]
    limit: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Since when the newest held file (by inode) is missing from Docker's files.
    missing_since: tuple[int, float] = (-1, 0.0)

    def newest(self) -> LogFile:
        for f in reversed(self.pending):
            if isinstance(f, LogFile):
                return f
        return self.current

    async def catch_up(self) -> bool:
        """Open what Docker rotated after the newest held file; whether anything
        was added."""
        async with self.lock:
            newest = self.newest()
            if newest.compressed:
                return False  # a compressed file is never the live one
            try:
                live = os.stat(self.log_path).st_ino
            except OSError:
                return False
            held = sum(isinstance(f, LogFile) for f in self.pending)
            if live == newest.ino or held >= self.limit:
                return False
            files, found = await _open_in_thread(successors, self.log_path, newest)
            if not found and not self._settled_missing(newest):
                # Docker is between two steps of a rotation or a gzip (a file moved
                # or being written, not listed): look again a poll later.
                for f in files:
                    f.close()
                return False
            if not files:
                return False
            if not found:
                # Docker deleted the newest held file (its lines are safe, open
                # here); files between it and those it keeps may be gone unread.
                first = json_record_timestamp(files[0].first) if files[0].first else 0
                self.pending.append(_Missing(first or 0))
            self.pending.extend(files)
            return True

    def _settled_missing(self, newest: LogFile) -> bool:
        """Whether ``newest`` is deleted and was missing a poll ago already."""
        if _linked(newest):
            return False
        now = time.monotonic()
        ino, since = self.missing_since
        if ino != newest.ino:
            self.missing_since = (newest.ino, now)
            return False
        return now - since >= _FILE_POLL_S

    def close(self) -> None:
        self.current.close()
        for f in self.pending:
            if isinstance(f, LogFile):
                f.close()
        self.pending.clear()


async def _open_in_thread(
    opener: Callable[_P, tuple[list[LogFile], _T]], *args: _P.args, **kwargs: _P.kwargs
) -> tuple[list[LogFile], _T]:
    """``opener`` (which opens files) in a thread; cancelled meanwhile, the thread
    runs on, so what it opened is closed here rather than leaked."""
    opening = asyncio.ensure_future(asyncio.to_thread(opener, *args, **kwargs))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        for f in (await opening)[0]:
            f.close()
        raise


def _linked(f: LogFile) -> bool:
    """Whether the open file still has a name (Docker has not deleted it)."""
    try:
        return os.fstat(f.raw.fileno()).st_nlink > 0
    except OSError:
        return False


def _finished_ns(text: object) -> int:
    """``State.FinishedAt`` to Unix ns; -1 when unset (``0001-01-01...``) or invalid."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return -1
    main, _, frac = text.rstrip("Z").partition(".")
    try:
        seconds = datetime.fromisoformat(main + "+00:00").timestamp()
    except ValueError:
        return -1
    digits = "".join(c for c in frac if c.isdigit())[:9]
    return int(seconds) * 1_000_000_000 + (int(digits.ljust(9, "0")) if digits else 0)


@dataclass(frozen=True, slots=True)
class _Window:
    """A cheap resume: follow with ``since`` and ``tail``; the reply starts with
    ``anchor`` (one whole frame) or the window was too small."""

    since: str | None
    tail: int
    anchor: bytes


class ContainerTailer:
    """Follows one container's log stream and forwards it; created by ``DockerSource``.

    Two positions are kept: the *read* position (what was decoded; a reconnect within
    this process resumes from it, so nothing in flight is read twice) and the
    *committed* one (the newest entries whose deliveries all settled, in read order;
    only this reaches the positions file). A delivery abandoned at shutdown freezes the
    committed position, so the next start reads those entries again. Entries whose
    labels a relabel rule dropped, or that end up with no label at all, are not sent but
    count as settled (Loki would refuse them, and re-reading them forever would not
    help).
    """

    def __init__(
        self, ctx: TailerContext, container_id: str, labels: Mapping[str, str]
    ) -> None:
        self.container_id = container_id
        self._ctx = ctx
        self._labels: dict[str, str] = {}
        self._labels_text = ""
        self._stream_labels: dict[str, dict[str, str] | None] = {}
        self.set_labels(labels)
        saved = ctx.positions.get(container_id)
        start = (saved.ts_ns, saved.count_at_ts) if saved is not None else (0, 0)
        self._ledger = Ledger(start, self._commit, ctx.on_settled, ctx.join_window_s)
        self.is_running = False
        self.last_error = ""
        self.gone = False
        self._detached = False
        self._wake = asyncio.Event()
        # FinishedAt of the stopped run whose logs were last read to the end: a stopped
        # container is read once per run (Docker's clock only; no clock skew matters).
        self._read_finished_at: int | None = None
        self._reading = False
        self._interrupt = False
        self._poked = False
        self._gap_reported = False
        self.reading_from = "api"
        self.task: asyncio.Task[None] | None = None
        #: Per stream, what was handed on (the UI's explanation reads it).
        self.streams: dict[str, StreamStats] = {}

    # -- state seen by the source --

    @property
    def labels(self) -> dict[str, str]:
        return self._labels

    @property
    def detached(self) -> bool:
        return self._detached

    @property
    def in_flight(self) -> int:
        return self._ledger.in_flight

    @property
    def committed_position(self) -> Position:
        return self._ledger.committed

    @property
    def read_position(self) -> Position:
        return self._ledger.read

    def info(self) -> TargetInfo:
        return TargetInfo(
            id=self.container_id,
            labels=self._labels_text,
            is_running=self.is_running,
            last_error=self.last_error,
            position_ns=self._ledger.committed[0],
            read_position_ns=self._ledger.read[0],
            lag_s=self.lag_s(self._ctx.clock()),
            streams={name: replace(st) for name, st in self.streams.items()},
            reading_from=self.reading_from,
        )

    def lag_s(self, now_s: float) -> float:
        """Seconds since the newest acknowledged line while newer ones are unsettled."""
        return self._ledger.lag_s(now_s)

    def set_labels(self, labels: Mapping[str, str]) -> None:
        """Use ``labels`` for later batches; the stream and position are untouched."""
        if dict(labels) != self._labels:
            self._labels = dict(labels)
            self._labels_text = format_labels(self._labels)
            self._stream_labels.clear()

    def poke(self) -> None:
        """Check the container now instead of at the next inspect tick."""
        self._poked = True
        self._wake.set()

    def attach(self) -> None:
        self._detached = False
        self._wake.set()

    def detach(self) -> None:
        """The target left discovery: stop (after a last read if it stopped)."""
        self._detached = True
        self._poked = True
        self._wake.set()
        if self._reading and self.task is not None:
            # Only interrupt a read: a send cut short would leave its delivery
            # unsettled.
            self._interrupt = True
            self.task.cancel()

    def rewind(self) -> None:
        """After a crash: forget deliveries in flight and read again from the committed
        position (at-least-once: entries in flight may be sent twice)."""
        self._ledger.rewind()
        self.is_running = False

    # -- the loop --

    async def run(self) -> None:
        """Follow the container until removed (404) or detached; errors are retried."""
        interval = self._ctx.inspect_interval_s
        retry = Backoff(min(_RETRY_MIN_S, interval), interval)
        restream_s = 0.0
        # Right after a stream ends the container is often being removed or restarted:
        # look again soon (0.1 s, growing) before settling on the inspect interval.
        idle_s = self._ctx.inspect_interval_s
        while True:
            try:
                info = await self._ctx.client.inspect(self.container_id)
            except DockerError as exc:
                if exc.status == 404:
                    self._mark_gone()
                    return
                self.last_error = str(exc)
                await self._wait(retry.next_delay())
                continue
            state = info.get("State") or {}
            running = bool(state.get("Running"))
            finished = _finished_ns(state.get("FinishedAt"))
            if self._detached and running:
                return
            # A stopped container is read once more per run (alloy #3408): lines written
            # just before it stopped, or while nothing followed it, are not lost.
            if running or (finished >= 0 and finished != self._read_finished_at):
                if running and restream_s:
                    # The last stream of a running container ended at once: do not spin.
                    await self._wait(restream_s)
                    if self._detached:
                        continue
                tty = bool((info.get("Config") or {}).get("Tty"))
                started = time.monotonic()
                try:
                    log_path = self._log_file(info)
                    if log_path:
                        complete = await self._stream_file(
                            log_path, tty, running, _max_file(info)
                        )
                    else:
                        complete = await self._stream(tty, running)
                except DockerError as exc:
                    if exc.status == 404:
                        self._mark_gone()
                        return
                    if str(exc) != self.last_error:  # once per distinct error
                        _log.warning(
                            "log stream of container %s failed: %s", self._short, exc
                        )
                    self.last_error = str(exc)
                    # 501: the container's logging driver cannot be read (none, syslog,
                    # ...); that will not change soon, so ask far less often.
                    delay = retry.next_delay()
                    await self._wait(
                        _UNREADABLE_RETRY_S if exc.status == 501 else delay
                    )
                    continue
                retry.reset()
                if complete and not running:
                    self._read_finished_at = finished
                long_stream = time.monotonic() - started > 1.0
                restream_s = 0.0 if long_stream else min(max(restream_s * 2, 0.5), 5.0)
                idle_s = 0.1
                continue
            if self._detached:
                return
            await self._wait(min(idle_s, self._ctx.inspect_interval_s))
            idle_s *= 2.5

    @property
    def _short(self) -> str:
        return self.container_id[:12]

    def _mark_gone(self) -> None:
        _log.info("container %s no longer exists, stopping its tailer", self._short)
        self.gone = True
        self._ledger.stop()
        self._ctx.positions.remove(self.container_id)

    async def _wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        self._wake.clear()

    async def _stream(self, tty: bool, running: bool) -> bool:
        """Read one log stream to its end; False when a detach interrupted it.

        ``running``: the container ran when the stream opened; a detach then ends the
        stream, while a stopped container's last read goes on to its end.
        """
        pos, count = self._ledger.read
        decoder: FrameDecoder | RawLineSplitter
        kind = RawLineSplitter if tty else FrameDecoder
        decoder = kind(
            position_ns=pos,
            count_at_position=count,
            max_line_size=self._ctx.max_line_size,
        )
        # TTY records are not frames, so they cannot be checked: plain since for them.
        window = None if tty else await self._resume_window(pos)
        self.is_running = True
        self._ctx.metrics.active.inc()
        try:
            while True:
                done = await self._read_stream(decoder, pos, window, running)
                if done is not None:
                    return done
                # The tail window moved before the follow request: resume the slow way.
                self._ctx.metrics.resumes.labels("window_missed").inc()
                window = None
        finally:
            self.is_running = False
            self._ctx.metrics.active.dec()

    async def _read_stream(
        self,
        decoder: FrameDecoder | RawLineSplitter,
        pos: int,
        window: _Window | None,
        running: bool,
    ) -> bool | None:
        """Follow the log into ``decoder``; None when ``window`` failed its check."""
        if window is None:
            since, tail, expect = since_arg(pos), None, b""
            if pos > 0:
                self._ctx.metrics.resumes.labels("since").inc()
        else:
            since, tail, expect = window.since, str(window.tail), window.anchor
        stream = self._logs(follow=True, since=since, tail=tail)
        head = b""
        try:
            while True:
                self._reading = True
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._interrupt and task is not None and task.uncancel() == 0:
                        self._interrupt = False
                        return False
                    raise
                finally:
                    self._reading = False
                if expect:
                    # Nothing is decoded until the reply is known to start at the
                    # anchor record: then no record since the position was cut off.
                    head += chunk
                    if len(head) < len(expect):
                        continue
                    if not head.startswith(expect):
                        return None
                    self._ctx.metrics.resumes.labels("window").inc()
                    chunk, head, expect = head, b"", b""
                await self._forward(decoder.feed(chunk))
                if self._detached and running:
                    # Detached while a send waited (only reads are interrupted).
                    return False
            if expect:
                return None
            await self._forward(decoder.finish())
            return True
        finally:
            await stream.aclose()

    def _log_file(self, info: Mapping[str, Any]) -> str:
        """The json-file to read instead of the API ("" for the API).

        Raises:
            DockerError: ``logs_from = "file"`` and the log cannot be read as a file.
        """
        mode = self._ctx.logs_from
        if mode == "api":
            return ""
        log_config = (info.get("HostConfig") or {}).get("LogConfig") or {}
        log_path = str(info.get("LogPath") or "")
        if log_config.get("Type") == "json-file" and readable(log_path):
            return log_path
        if mode == "file":
            raise DockerError(
                f'logs_from = "file": the log of container {self._short} is not a '
                f"readable json-file (driver {log_config.get('Type')!r}, "
                f"LogPath {log_path!r})"
            )
        return ""

    async def _stream_file(
        self, log_path: str, tty: bool, running: bool, max_file: int
    ) -> bool:
        """Read the container's json-file (and the rotated files still behind it)
        from the read position to its end, following it while the container runs;
        False when a detach interrupted it. The entries and positions are the API
        path's (``frames.JsonLogDecoder``), so either path resumes the other."""
        pos, count = self._ledger.read
        decoder = JsonLogDecoder(
            position_ns=pos,
            count_at_position=count,
            max_line_size=self._ctx.max_line_size,
            tty=tty,
        )
        files, gap = await _open_in_thread(open_from, log_path, pos)
        if not files:
            raise DockerError(f"cannot open {log_path}")
        held = _HeldFiles(log_path, files[0], list(files[1:]), max_file)
        try:
            if gap is not None:
                self._report_gap(gap)
            if pos > 0:
                self._ctx.metrics.resumes.labels("file").inc()
            return await self._follow_held(held, decoder, running)
        finally:
            held.close()

    async def _follow_held(
        self, held: _HeldFiles, decoder: JsonLogDecoder, running: bool
    ) -> bool:
        directory = os.path.dirname(held.log_path)
        watcher = self._ctx.watcher
        if watcher is not None:
            watcher.subscribe(directory, self._wake)
        keeper = asyncio.create_task(self._hold_rotated(held, directory))
        self.reading_from = "file"
        self.is_running = True
        self._ctx.metrics.active.inc()
        try:
            return await self._follow_file(held, decoder, running)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if watcher is not None:
                watcher.unsubscribe(directory, self._wake)
            self.is_running = False
            self.reading_from = "api"
            self._ctx.metrics.active.dec()

    async def _hold_rotated(self, held: _HeldFiles, directory: str) -> None:
        """Open each file Docker rotates as soon as it is seen (an inotify event in
        the directory, or a poll), while the reader may be held up by a send."""
        changed = asyncio.Event()
        watcher = self._ctx.watcher
        if watcher is not None:
            watcher.subscribe(directory, changed)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_FILE_POLL_S):
                        await changed.wait()
                changed.clear()
                await held.catch_up()
        finally:
            if watcher is not None:
                watcher.unsubscribe(directory, changed)

    async def _follow_file(
        self, held: _HeldFiles, decoder: JsonLogDecoder, running: bool
    ) -> bool:
        alive = running
        checked = time.monotonic()
        interval = self._ctx.inspect_interval_s
        while True:
            self._wake.clear()
            current = held.current
            if not current.compressed and not held.pending and current.truncated():
                # Docker 19.03 with max-file=1 "rotates" by truncating the live file
                # in place (Docker 23 does too when a rotation fails): what it holds
                # is new. Checked before every read: it may have grown back already.
                _log.info(
                    "container %s: Docker truncated its log file in place: reading "
                    "it from its start",
                    self._short,
                )
                current.restart()
                decoder.drop_unfinished()
            data = current.read(_FILE_CHUNK)
            if data:
                await self._forward(decoder.feed(data))
                if len(data) == _FILE_CHUNK:
                    # A backlog: a file read never waits, nor does a send with room
                    # in the queue, so without this the send loops would not run
                    # (and Loki would idle) until the queue is full.
                    await asyncio.sleep(0)
                if self._detached and running:
                    return False
                continue
            if held.pending:
                # A rotated file read to its end: on to the next one.
                following = held.pending.pop(0)
                if isinstance(following, _Missing):
                    after = self._ledger.read[0]
                    self._report_gap(Gap(after, max(following.before_ns, after)))
                    continue
                current.close()
                held.current = following
                continue
            if not current.compressed:
                try:
                    live = os.stat(held.log_path).st_ino
                except OSError:
                    # Removed (or its directory is): ask Docker now, not at the tick.
                    live = current.ino
                    self._poked = True
                # Rotated: read this one to its end, then what came after it.
                if live != current.ino and await held.catch_up():
                    continue
            if not alive:
                await self._forward(decoder.finish())
                return True
            if self._detached and running:
                return False
            if not self._poked:
                await self._wait(_FILE_POLL_S)
            if self._poked or time.monotonic() - checked >= interval:
                self._poked = False
                checked = time.monotonic()
                info = await self._ctx.client.inspect(self.container_id)
                alive = bool((info.get("State") or {}).get("Running"))

    def _report_gap(self, gap: Gap) -> None:
        metrics = self._ctx.metrics
        metrics.file_gaps.inc()
        metrics.file_gap_seconds.inc((gap.before_ns - gap.after_ns) / 1e9)
        message = (
            f"container {self._short}: Docker rotated away log records before they "
            f"were read: lines written after {format_timestamp(gap.after_ns).decode()} "
            f"and before {format_timestamp(gap.before_ns).decode()} (the oldest it "
            "keeps) may be lost"
        )
        self.last_error = message
        if not self._gap_reported:
            self._gap_reported = True
            _log.warning("%s", message)

    async def _resume_window(self, pos: int) -> _Window | None:
        """A ``tail`` bound for the follow request, so dockerd need not scan the log.

        ``since`` alone makes dockerd read every retained record (seconds of CPU for a
        large log); ``since`` plus ``tail=N`` reads N. It is exact only if fewer than N
        records are at or after the position, which a non-follow probe tells; the follow
        reply must then start with the probe's first record (or, when nothing is newer
        than the position, with the newest record), else records slipped out of the
        window in between and the caller falls back to ``since`` alone.
        """
        n = self._ctx.tail_window
        if n <= 0 or pos <= 0:
            return None
        frames = await self._probe(since_arg(pos), n)
        if frames is None or len(frames) >= n:
            return None
        if frames:
            return _Window(since_arg(pos), n, frames[0])
        newest = await self._probe(None, 1)
        if not newest:
            return None
        newest_ns = frame_timestamp(newest[0])
        if newest_ns is None or newest_ns >= pos:
            return None  # the log changed between the probes
        return _Window(since_arg(newest_ns), n, newest[0])

    def _logs(
        self, *, follow: bool, since: str | None, tail: str | None
    ) -> AsyncGenerator[bytes, None]:
        """Both streams of the container's log, each record with its timestamp."""
        return self._ctx.client.logs(
            self.container_id,
            follow=follow,
            stdout=True,
            stderr=True,
            timestamps=True,
            since=since,
            tail=tail,
        )

    async def _probe(self, since: str | None, tail: int) -> list[bytes] | None:
        """Frames of a non-follow read; None when it is too large or not framed."""
        data = bytearray()
        stream = self._logs(follow=False, since=since, tail=str(tail))
        try:
            async for chunk in stream:
                data += chunk
                if len(data) > _PROBE_MAX_BYTES:
                    return None
        finally:
            await stream.aclose()
        return split_frames(bytes(data))

    def _stream_labels_for(self, stream: str) -> dict[str, str] | None:
        try:
            return self._stream_labels[stream]
        except KeyError:
            pass
        labels = docker_stream_labels(self._labels, stream, self._ctx.relabel_rules)
        self._stream_labels[stream] = labels
        return labels

    async def _forward(self, res: Decoded) -> None:
        metrics = self._ctx.metrics
        if res.parsing_errors:
            metrics.parsing_errors.inc(res.parsing_errors)
        if res.daemon_errors:
            self.last_error = f"error from daemon in stream: {res.daemon_errors[-1]}"
            _log.warning("container %s: %s", self._short, self.last_error)
        if res.invalid_utf8:
            metrics.mutated.labels("invalid_utf8").inc(res.invalid_utf8)
        if res.truncated:
            metrics.mutated.labels("truncated").inc(res.truncated)
        position = (res.position_ns, res.count_at_position)
        ledger = self._ledger
        if position == ledger.read and not res.stdout and not res.stderr:
            return
        batches = []
        for stream, entries in (("stdout", res.stdout), ("stderr", res.stderr)):
            if not entries:
                continue
            labels = self._stream_labels_for(stream)
            if not labels:
                reason = DROPPED_BY_RELABEL if labels is None else DROPPED_NO_LABELS
                metrics.dropped.labels(reason).inc(len(entries))
                continue
            batches.append((labels, entries))
            stats = self.streams.get(stream)
            if stats is None:
                stats = self.streams[stream] = StreamStats()
            stats.lines += len(entries)
            stats.bytes += entries_size(entries)
            stats.last_ns = entries[-1].timestamp_ns
        receivers = self._ctx.forward_to
        total = len(batches) * len(receivers)
        if not total:
            ledger.read_to(position)(True)
            return
        delivery = ledger.deliver_to(position, total, time.monotonic())
        metrics.entries.inc(sum(len(entries) for _, entries in batches))
        handed = 0
        try:
            for i, receiver in enumerate(receivers):
                for labels, entries in batches:
                    # Each receiver gets its own containers: a stage may edit what it
                    # gets.
                    batch = StreamBatch(
                        dict(labels), entries if i == 0 else list(entries), delivery
                    )
                    handed += 1
                    await receiver.send(batch)
        except BaseException:
            # The batch whose send failed belongs to that receiver; release the ones
            # never handed over, so this chunk can settle (as abandoned: it must be read
            # again).
            for _ in range(total - handed):
                delivery.release(abandoned=True)
            raise

    def _commit(self, position: Position) -> None:
        self._ctx.positions.set(
            self.container_id, position[0], position[1], self._labels_text
        )
