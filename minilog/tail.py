"""``loki.source.docker``: tailers per container, supervisor, delivery-gated positions.

Owns target dedupe (alloy-spec §3.2), the container lifecycle (§3.3, positions kept
across stops), per-stream labels (§3.5), fan-out with backpressure, and positions that
move only past settled deliveries. Decoding is ``_frames.py``, the file
``positions.py``, HTTP ``_docker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minilog._frames import (
    DEFAULT_MAX_LINE_SIZE,
    Decoded,
    FrameDecoder,
    RawLineSplitter,
    parse_timestamp,
)
from minilog.discovery import LABEL_CONTAINER_NAME
from minilog.errors import DockerError, MinilogError
from minilog.labels import format_labels
from minilog.model import Delivery, LogsReceiver, StreamBatch
from minilog.positions import Positions

__all__ = [
    "LABEL_CONTAINER_ID",
    "LABEL_LOG_STREAM",
    "ContainerTailer",
    "DockerLogsAPI",
    "DockerSource",
    "RelabelRulesLike",
    "TargetInfo",
    "dedupe_targets",
    "fingerprint",
]

_log = logging.getLogger(__name__)

LABEL_CONTAINER_ID: Final = "__meta_docker_container_id"
LABEL_LOG_STREAM: Final = "__meta_docker_container_log_stream"
#: ``minilog_source_docker_dropped_entries_total`` reasons: a relabel rule dropped the
#: stream, or it was left without any label.
_DROPPED_BY_RELABEL: Final = "relabel_dropped"
_DROPPED_NO_LABELS: Final = "no_labels"

_FNV_OFFSET: Final = 14695981039346656037
_FNV_PRIME: Final = 1099511628211
_MASK64: Final = (1 << 64) - 1

_STALE_CHECK_S: Final = 600.0
_UNREADABLE_RETRY_S: Final = 60.0
# A resume probe larger than this is not worth it: follow with since alone.
_PROBE_MAX_BYTES: Final = 4 << 20

_PENDING: Final = 0
_OK: Final = 1
_ABANDONED: Final = 2


class RelabelRulesLike(Protocol):
    """What ``relabel_rules`` must offer (``minilog.relabel.RelabelRules`` does)."""

    def process(self, labels: dict[str, str]) -> dict[str, str] | None: ...


class DockerLogsAPI(Protocol):
    """The part of ``minilog._docker.DockerClient`` a tailer uses (a seam for fakes)."""

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


def fingerprint(labels: Mapping[str, str]) -> int:
    """Prometheus `LabelSet.Fingerprint`: FNV-1a 64 of sorted `name 0xFF value 0xFF`.

    The same value Prometheus computes, so duplicates resolve as in Alloy.
    """
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & _MASK64
            h = ((h ^ 0xFF) * _FNV_PRIME) & _MASK64
    return h


def dedupe_targets(
    targets: Iterable[Mapping[str, str]], labels: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """Targets to ``{container id: labels}``, ``labels`` merged over each target's.

    Several targets of one container (one per network or port) collapse to the one with
    the lowest fingerprint, as Alloy does; targets without
    ``__meta_docker_container_id`` are skipped.
    """
    groups: dict[str, list[dict[str, str]]] = {}
    for target in targets:
        merged = {**target, **(labels or {})}
        cid = merged.get(LABEL_CONTAINER_ID)
        if not cid:
            _log.debug("target without %s skipped: %s", LABEL_CONTAINER_ID, target)
            continue
        groups.setdefault(cid, []).append(merged)
    # Fingerprints (a pure-Python hash) only where there is a choice to make.
    return {
        cid: group[0] if len(group) == 1 else min(group, key=fingerprint)
        for cid, group in groups.items()
    }


def _since_arg(ts_ns: int) -> str | None:
    # Docker parses "seconds.nanoseconds" (moby timetypes.ParseTimestamps) and its
    # filter keeps records whose timestamp is not before it: inclusive at nanosecond
    # precision.
    if ts_ns <= 0:
        return None
    return f"{ts_ns // 1_000_000_000}.{ts_ns % 1_000_000_000:09d}"


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


def _split_frames(data: bytes) -> list[bytes] | None:
    """Whole multiplexed frames (header included); None if ``data`` is not framed."""
    frames = []
    i = 0
    while i < len(data):
        if len(data) - i < 8 or data[i] > 3 or data[i + 1 : i + 4] != b"\0\0\0":
            return None
        end = i + 8 + int.from_bytes(data[i + 4 : i + 8], "big")
        if end > len(data):
            return None
        if data[i] in (0, 1, 2):
            frames.append(data[i:end])
        i = end
    return frames


def _frame_ts(frame: bytes) -> int | None:
    stamp = frame[8:].split(b" ", 1)[0]
    try:
        return parse_timestamp(stamp)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """Debug state of one tailer, for the UI (Alloy's ``targets_info``)."""

    id: str
    labels: str
    is_running: bool
    last_error: str
    position_ns: int
    read_position_ns: int


class _Metrics:
    """The source's metrics, shared by every ``DockerSource`` on one registry as in
    Alloy (so a replacement source can be built before the old one is gone)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sources: weakref.WeakSet[DockerSource] = weakref.WeakSet()
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
        for reason in (_DROPPED_BY_RELABEL, _DROPPED_NO_LABELS):
            self.dropped.labels(reason)
        self.resumes = Counter(
            "minilog_source_docker_resumes_total",
            "Streams resumed from a position, by how: window (since + tail, cheap), "
            "since (dockerd scans the whole log), window_missed (fell back to since).",
            ["mode"],
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
        registry.register(_TargetCollector(self.sources))


class _TargetCollector(Collector):
    """Per-container gauges, read from the tailers at scrape time: whether each target's
    stream is followed, and its read lag. Alloy has no per-target series for Docker;
    these carry the container's name and short ID."""

    def __init__(self, sources: weakref.WeakSet[DockerSource]) -> None:
        self._sources = sources

    def describe(self) -> list[Metric]:
        return list(self._families([]))

    def collect(self) -> Iterator[Metric]:
        rows: list[tuple[str, str, bool, float]] = []
        seen: set[str] = set()
        for source in list(self._sources):
            now = source._ctx.clock()
            for tailer in list(source._tailers.values()):
                if tailer.container_id in seen:
                    continue  # a reload's new source and the old one, briefly
                seen.add(tailer.container_id)
                name = tailer.labels.get(LABEL_CONTAINER_NAME, "").lstrip("/")
                rows.append(
                    (
                        name,
                        tailer.container_id[:12],
                        tailer.is_running,
                        tailer.lag_s(now),
                    )
                )
        yield from self._families(rows)

    @staticmethod
    def _families(rows: Sequence[tuple[str, str, bool, float]]) -> Iterator[Metric]:
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


@dataclass(slots=True)
class _Context:
    client: DockerLogsAPI
    forward_to: Sequence[LogsReceiver]
    relabel_rules: RelabelRulesLike | None
    positions: Positions
    metrics: _Metrics
    max_line_size: int
    inspect_interval_s: float
    tail_window: int
    clock: Callable[[], float]
    on_settled: Callable[[], None]


class _Chunk:
    """Positions reached by one read chunk, waiting for its delivery to settle."""

    __slots__ = ("count", "generation", "position", "state")

    def __init__(self, position: int, count: int, generation: int, state: int) -> None:
        self.position = position
        self.count = count
        self.generation = generation
        self.state = state


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
        self, ctx: _Context, container_id: str, labels: Mapping[str, str]
    ) -> None:
        self.container_id = container_id
        self._ctx = ctx
        self._labels: dict[str, str] = {}
        self._labels_text = ""
        self._stream_labels: dict[str, dict[str, str] | None] = {}
        self.set_labels(labels)
        saved = ctx.positions.get(container_id)
        start = (saved.ts_ns, saved.count_at_ts) if saved is not None else (0, 0)
        self._read = start
        self._committed = start
        self._inflight: deque[_Chunk] = deque()
        self._generation = 0
        self._frozen = False
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
        self.task: asyncio.Task[None] | None = None

    # -- state seen by the source --

    @property
    def labels(self) -> dict[str, str]:
        return self._labels

    @property
    def detached(self) -> bool:
        return self._detached

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def committed_position(self) -> tuple[int, int]:
        return self._committed

    @property
    def read_position(self) -> tuple[int, int]:
        return self._read

    def info(self) -> TargetInfo:
        return TargetInfo(
            id=self.container_id,
            labels=self._labels_text,
            is_running=self.is_running,
            last_error=self.last_error,
            position_ns=self._committed[0],
            read_position_ns=self._read[0],
        )

    def lag_s(self, now_s: float) -> float:
        """Seconds since the newest acknowledged line while newer ones are unsettled."""
        if self._read <= self._committed:
            return 0.0
        ts_ns = self._committed[0]
        if ts_ns == 0:
            # Nothing acknowledged yet: the oldest chunk in flight is the best estimate.
            ts_ns = self._inflight[0].position if self._inflight else self._read[0]
        return max(0.0, now_s - ts_ns / 1e9)

    def set_labels(self, labels: Mapping[str, str]) -> None:
        """Use ``labels`` for later batches; the stream and position are untouched."""
        if dict(labels) != self._labels:
            self._labels = dict(labels)
            self._labels_text = format_labels(self._labels)
            self._stream_labels.clear()

    def poke(self) -> None:
        """Check the container now instead of at the next inspect tick."""
        self._wake.set()

    def attach(self) -> None:
        self._detached = False
        self._wake.set()

    def detach(self) -> None:
        """The target left discovery: stop (after a last read if it stopped)."""
        self._detached = True
        self._wake.set()
        if self._reading and self.task is not None:
            # Only interrupt a read: a send cut short would leave its delivery
            # unsettled.
            self._interrupt = True
            self.task.cancel()

    def rewind(self) -> None:
        """After a crash: forget deliveries in flight and read again from the committed
        position (at-least-once: entries in flight may be sent twice)."""
        self._generation += 1
        self._inflight.clear()
        self._frozen = False
        self._read = self._committed
        self.is_running = False

    # -- the loop --

    async def run(self) -> None:
        """Follow the container until removed (404) or detached; errors are retried."""
        retry_s = 0.5
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
                await self._wait(retry_s)
                retry_s = min(retry_s * 2, self._ctx.inspect_interval_s)
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
                    cap = _UNREADABLE_RETRY_S if exc.status == 501 else None
                    await self._wait(cap or retry_s)
                    retry_s = min(retry_s * 2, self._ctx.inspect_interval_s)
                    continue
                retry_s = 0.5
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
        pos, count = self._read
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
            since, tail, expect = _since_arg(pos), None, b""
            if pos > 0:
                self._ctx.metrics.resumes.labels("since").inc()
        else:
            since, tail, expect = window.since, str(window.tail), window.anchor
        stream = self._ctx.client.logs(
            self.container_id,
            follow=True,
            stdout=True,
            stderr=True,
            timestamps=True,
            since=since,
            tail=tail,
        )
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
        frames = await self._probe(_since_arg(pos), n)
        if frames is None or len(frames) >= n:
            return None
        if frames:
            return _Window(_since_arg(pos), n, frames[0])
        newest = await self._probe(None, 1)
        if not newest:
            return None
        newest_ns = _frame_ts(newest[0])
        if newest_ns is None or newest_ns >= pos:
            return None  # the log changed between the probes
        return _Window(_since_arg(newest_ns), n, newest[0])

    async def _probe(self, since: str | None, tail: int) -> list[bytes] | None:
        """Frames of a non-follow read; None when it is too large or not framed."""
        data = bytearray()
        stream = self._ctx.client.logs(
            self.container_id,
            follow=False,
            stdout=True,
            stderr=True,
            timestamps=True,
            since=since,
            tail=str(tail),
        )
        try:
            async for chunk in stream:
                data += chunk
                if len(data) > _PROBE_MAX_BYTES:
                    return None
        finally:
            await stream.aclose()
        return _split_frames(bytes(data))

    def _stream_labels_for(self, stream: str) -> dict[str, str] | None:
        try:
            return self._stream_labels[stream]
        except KeyError:
            pass
        labels: dict[str, str] | None = {**self._labels, LABEL_LOG_STREAM: stream}
        rules = self._ctx.relabel_rules
        if rules is not None and labels is not None:
            labels = rules.process(labels)
        if labels is not None:
            labels = {k: v for k, v in labels.items() if not k.startswith("__")}
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
        if position == self._read and not res.stdout and not res.stderr:
            return
        self._read = position
        batches = []
        for stream, entries in (("stdout", res.stdout), ("stderr", res.stderr)):
            if not entries:
                continue
            labels = self._stream_labels_for(stream)
            if not labels:
                reason = _DROPPED_BY_RELABEL if labels is None else _DROPPED_NO_LABELS
                metrics.dropped.labels(reason).inc(len(entries))
                continue
            batches.append((labels, entries))
        receivers = self._ctx.forward_to
        total = len(batches) * len(receivers)
        chunk = _Chunk(
            position[0], position[1], self._generation, _OK if not total else _PENDING
        )
        self._inflight.append(chunk)
        if not total:
            self._settle(chunk, True)
            return
        delivery = Delivery(functools.partial(self._settle, chunk))
        if total > 1:
            delivery.retain(total - 1)
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

    def _settle(self, chunk: _Chunk, ok: bool) -> None:
        chunk.state = _OK if ok else _ABANDONED
        if chunk.generation != self._generation:
            return
        queue = self._inflight
        while queue and queue[0].state != _PENDING:
            head = queue.popleft()
            if head.state == _ABANDONED:
                self._frozen = True
            elif not self._frozen and not self.gone:
                new = (head.position, head.count)
                if new > self._committed:
                    self._committed = new
                    self._ctx.positions.set(
                        self.container_id, new[0], new[1], self._labels_text
                    )
        self._ctx.on_settled()


class DockerSource:
    """``loki.source.docker``: tails the containers of ``targets``, forwards lines.

    Args:
        client: a ``minilog._docker.DockerClient`` (any ``DockerLogsAPI``); not closed.
        forward_to: receivers, sent to in order (a blocked one blocks the rest).
        labels: static labels merged over each target's labels.
        relabel_rules: applied once per stream (stdout/stderr) with
            ``__meta_docker_container_log_stream`` set; ``__``-prefixed names are then
            dropped.
        positions: committed positions; saved as soon as they move (at most once per
            ``flush_interval_s``) and at close.
        registry: metrics registry (a private one when ``None``; never the global one).
        max_line_size: longer lines are truncated to it and counted (see ``_frames``).
        inspect_interval_s: how often a stopped container is checked (Alloy: 5 s).
        tail_window: resume with ``since`` plus ``tail`` of this many records when a
            probe shows that is exact (see ``ContainerTailer._resume_window``); 0: off.
        flush_interval_s: the least time between two writes of the positions file.
        clock: wall clock in Unix seconds, for the lag metric.

    Call ``update_targets`` whenever discovery changes, ``poke(id)`` when it sees a
    container start, ``run()`` in a task and ``aclose()`` to stop. Unlike Alloy, a
    stopped container keeps its position (only removal deletes it), and the position is
    the Docker timestamp in ns plus the number of lines at it, so a restart re-sends
    nothing that was acknowledged.
    """

    def __init__(
        self,
        client: DockerLogsAPI,
        forward_to: Sequence[LogsReceiver],
        *,
        labels: Mapping[str, str] | None = None,
        relabel_rules: RelabelRulesLike | None = None,
        positions: Positions,
        registry: CollectorRegistry | None = None,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        inspect_interval_s: float = 5.0,
        tail_window: int = 1000,
        flush_interval_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = _metrics_for(
            registry if registry is not None else CollectorRegistry()
        )
        self._metrics.sources.add(self)
        self._settled = asyncio.Event()
        self._ctx = _Context(
            client=client,
            forward_to=list(forward_to),
            relabel_rules=relabel_rules,
            positions=positions,
            metrics=self._metrics,
            max_line_size=max_line_size,
            inspect_interval_s=inspect_interval_s,
            tail_window=tail_window,
            clock=clock,
            on_settled=self._on_settled,
        )
        self._labels = dict(labels or {})
        self._positions = positions
        self._flush_interval_s = flush_interval_s
        self._tailers: dict[str, ContainerTailer] = {}
        # Finished tailers with deliveries still in flight, kept so that a returning
        # target reuses their positions instead of racing them.
        self._idle: dict[str, ContainerTailer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._closed = False
        self._run_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # -- discovery side --

    def update_targets(self, targets: Sequence[Mapping[str, str]]) -> None:
        """Reconcile tailers with ``targets`` (discovery output); call on the loop."""
        desired = dedupe_targets(targets, self._labels)
        self._metrics.targets.set(len(desired))
        for cid, labels in desired.items():
            tailer = self._tailers.get(cid)
            if tailer is None:
                tailer = self._idle.pop(cid, None) or ContainerTailer(
                    self._ctx, cid, labels
                )
                self._tailers[cid] = tailer
            tailer.set_labels(labels)
            if tailer.detached:
                tailer.attach()
            if self._running and not self._closed and tailer.task is None:
                self._spawn(tailer)
        for cid, tailer in self._tailers.items():
            if cid not in desired and not tailer.detached:
                tailer.detach()
        for cid in [
            c for c, t in self._tailers.items() if t.detached and t.task is None
        ]:
            self._retire(self._tailers.pop(cid))

    def poke(self, container_id: str) -> None:
        """Discovery saw ``container_id`` start: check it now, not at the next tick."""
        tailer = self._tailers.get(container_id)
        if tailer is not None:
            tailer.poke()

    def targets_info(self) -> list[TargetInfo]:
        return [t.info() for t in self._tailers.values()]

    # -- lifetime --

    async def run(self) -> None:
        """Tail until cancelled (or ``aclose()``); saves positions on the way out."""
        if self._running or self._closed:
            raise RuntimeError("DockerSource.run() called twice or after aclose()")
        self._running = True
        self._run_task = asyncio.current_task()
        try:
            for tailer in self._tailers.values():
                if tailer.task is None:
                    self._spawn(tailer)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._collect_stale_positions())
                await self._positions.run_flusher(self._flush_interval_s)
        finally:
            self._closed = True
            await self._stop_tailers()
            self._stopped.set()

    async def aclose(self, drain_timeout_s: float = 5.0) -> None:
        """Stop tailing, wait up to ``drain_timeout_s`` for deliveries in flight, then
        save positions.

        Idempotent. Deliveries settling later still update the in-memory positions; call
        ``positions.save()`` again if the writer drains after this returns.
        """
        if self._run_task is not None and not self._stopped.is_set():
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stopped.wait()
        elif not self._closed:
            self._closed = True
            await self._stop_tailers()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                while self._in_flight():
                    self._settled.clear()
                    await self._settled.wait()
        await self._save()

    async def _collect_stale_positions(self) -> None:
        """Drop positions of containers removed while nothing tailed them.

        A position is only removed by a tailer that sees its container gone; one
        removed while the agent was down, or after it left discovery, would otherwise
        stay in the file for ever. Checked at start and every ``_STALE_CHECK_S``.
        """
        while True:
            for cid in self._positions.ids():
                if cid in self._tailers or cid in self._idle:
                    continue
                try:
                    await self._ctx.client.inspect(cid)
                except DockerError as exc:
                    if exc.status != 404:
                        break  # the daemon is away: try again next round
                    if cid not in self._tailers:
                        self._positions.remove(cid)
                except MinilogError:
                    break  # e.g. the client was closed: nothing to do this round
            await asyncio.sleep(_STALE_CHECK_S)

    def _on_settled(self) -> None:
        self._settled.set()
        if self._idle:
            for cid in [c for c, t in self._idle.items() if not t.in_flight]:
                del self._idle[cid]

    def _in_flight(self) -> int:
        return sum(t.in_flight for t in (*self._tailers.values(), *self._idle.values()))

    async def _save(self) -> None:
        try:
            async with asyncio.timeout(10):
                await self._positions.asave()
        except OSError:
            pass  # Positions says so (once per run of failures) and keeps save_error
        except TimeoutError:
            _log.error(
                "saving positions file %s took over 10 s; gave up",
                self._positions.path,
            )

    async def _stop_tailers(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*tasks, return_exceptions=True)
        await self._save()

    def _spawn(self, tailer: ContainerTailer) -> None:
        task = asyncio.create_task(
            self._supervise(tailer), name=f"docker-tailer-{tailer.container_id[:12]}"
        )
        tailer.task = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._tailer_done, tailer))

    async def _supervise(self, tailer: ContainerTailer) -> None:
        backoff_s = 0.5
        while True:
            try:
                await tailer.run()
                return
            # One bad container must not end the source: catch, count, restart.
            except Exception as exc:  # noqa: BLE001
                self._metrics.crashes.inc()
                tailer.last_error = f"tailer crashed: {exc!r}"
                _log.exception(
                    "tailer of container %s crashed", tailer.container_id[:12]
                )
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 30.0)
            tailer.rewind()

    def _tailer_done(self, tailer: ContainerTailer, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        tailer.task = None
        if not task.cancelled() and task.exception() is not None:
            # _supervise catches Exception: this is a BaseException escaping.
            _log.error("tailer task ended abnormally", exc_info=task.exception())
        if self._closed:
            return
        if self._tailers.get(tailer.container_id) is tailer:
            if not tailer.gone and not tailer.detached:
                # Re-attached between its decision to stop and now: keep following.
                self._spawn(tailer)
                return
            del self._tailers[tailer.container_id]
        self._retire(tailer)

    def _retire(self, tailer: ContainerTailer) -> None:
        if tailer.in_flight and not tailer.gone:
            self._idle[tailer.container_id] = tailer
        # Prune idle tailers whose deliveries have all settled.
        for cid in [c for c, t in self._idle.items() if not t.in_flight]:
            del self._idle[cid]

    def _max_lag(self) -> float:
        now = self._ctx.clock()
        return max((t.lag_s(now) for t in self._tailers.values()), default=0.0)


_REGISTRY_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = (
    weakref.WeakKeyDictionary()
)


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    metrics = _REGISTRY_METRICS.get(registry)
    if metrics is None:
        metrics = _REGISTRY_METRICS[registry] = _Metrics(registry)
        sources = metrics.sources
        metrics.lag.set_function(
            lambda: max((s._max_lag() for s in list(sources)), default=0.0)
        )
        metrics.positions_age.set_function(
            lambda: max(
                (s._positions.unsaved_for(time.monotonic()) for s in list(sources)),
                default=0.0,
            )
        )
    return metrics
