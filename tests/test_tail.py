"""Tests for minilog.docker.source (``loki.source.docker``).

A fake Docker API drives the delivery and position logic; the real Docker Engine checks
the end-to-end behaviour (those tests skip without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from minilog.docker.frames import FrameDecoder, parse_timestamp
from minilog.docker.metrics import SourceMetrics
from minilog.docker.positions import Position, Positions
from minilog.docker.source import DockerSource
from minilog.docker.targets import dedupe_targets, fingerprint
from minilog.errors import DockerError, DockerUnavailableError
from minilog.labels import DOCKER_CONTAINER_ID, DOCKER_LOG_STREAM
from minilog.model import StreamBatch

DATA = Path(__file__).parent / "data" / "docker"
MIXED_TS = (DATA / "mixed-logs-timestamps.bin").read_bytes()
CID = "c" * 64


# -- helpers --


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def line(ts_ns: int, text: str, stream: int = 1) -> bytes:
    sec, frac = divmod(ts_ns, 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
    return frame(stream, f"{stamp} {text}\n".encode())


T0 = 1_795_753_222_000_000_000


class StreamLabel:
    """A relabel rule set: copies the log stream into ``stream`` (legacy names)."""

    def process(self, labels: dict[str, str]) -> dict[str, str] | None:
        if labels.get("drop") == labels[DOCKER_LOG_STREAM]:
            return None
        return {**labels, "stream": labels[DOCKER_LOG_STREAM]}


class Recorder:
    """A LogsReceiver that records batches and, if ``settle``, settles them at once."""

    def __init__(self, *, settle: bool = True) -> None:
        self.settle = settle
        self.batches: list[StreamBatch] = []
        self._changed = asyncio.Event()

    async def send(self, batch: StreamBatch) -> None:
        self.batches.append(batch)
        if self.settle:
            batch.settle()
        self._changed.set()

    def lines(self, stream: str | None = None) -> list[str]:
        return [
            e.line
            for b in self.batches
            if stream is None or b.labels.get("stream") == stream
            for e in b.entries
        ]

    async def wait_for(self, cond: Callable[[], bool], limit_s: float = 20) -> None:
        async with asyncio.timeout(limit_s):
            while not cond():
                self._changed.clear()
                await self._changed.wait()


class Blocking(Recorder):
    """A LogsReceiver whose ``send`` waits until ``release`` is set: backpressure."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def send(self, batch: StreamBatch) -> None:
        self.entered.set()
        await self.release.wait()
        await super().send(batch)


class FakeDocker:
    """A DockerLogsAPI over a log kept in ``chunks``; a followed stream stays open until
    ``end`` is set.

    Like Docker, ``since`` keeps the chunks whose (first) timestamp is not before it,
    and a read starts again from the beginning of the log. An exception in ``chunks``
    breaks the stream once, where it stands.
    """

    def __init__(
        self,
        chunks: list[bytes | BaseException],
        *,
        running: bool = True,
        tty: bool = False,
    ) -> None:
        self.chunks = chunks
        self.state: dict[str, Any] | None = {
            "Running": running,
            "FinishedAt": "0001-01-01T00:00:00Z",
        }
        self.tty = tty
        # (since, tail) of each follow request, and of each non-follow probe
        self.log_calls: list[tuple[str | None, str | None]] = []
        self.probe_calls: list[tuple[str | None, str | None]] = []
        self.on_yield: Callable[[bool], None] | None = None
        self.end = asyncio.Event()
        self.fail_inspect: DockerError | None = None
        self.known = {CID}
        self.raised: list[BaseException] = []
        self.inspects = 0

    async def inspect(self, container_id: str) -> dict[str, Any]:
        self.inspects += 1
        if self.fail_inspect is not None:
            raise self.fail_inspect
        if self.state is None or container_id not in self.known:
            raise DockerError("No such container", status=404)
        return {
            "Id": container_id,
            "State": dict(self.state),
            "Config": {"Tty": self.tty},
        }

    async def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        stdout: bool = True,
        stderr: bool = True,
        timestamps: bool = True,
        since: str | None = None,
        tail: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        (self.log_calls if follow else self.probe_calls).append((since, tail))
        since_ns = 0
        if since is not None:
            sec, _, frac = since.partition(".")
            since_ns = int(sec) * 10**9 + int(frac.ljust(9, "0"))
        records = list(self.chunks)
        if tail is not None:
            kept = {
                id(c)
                for c in [c for c in records if isinstance(c, bytes)][-int(tail) :]
            }
            records = [c for c in records if not isinstance(c, bytes) or id(c) in kept]
        for chunk in records:
            if isinstance(chunk, BaseException):
                if follow and chunk not in self.raised:
                    self.raised.append(chunk)
                    raise chunk
                continue
            if since_ns and parse_timestamp(chunk[8:].split(b" ", 1)[0]) < since_ns:
                continue
            yield chunk
            if self.on_yield is not None:
                self.on_yield(follow)
        if follow and self.state is not None and self.state["Running"]:
            await self.end.wait()  # a stopped container's stream ends at once


def target(cid: str = CID, **extra: str) -> dict[str, str]:
    """A discovery target; ``job`` gives it a label that survives the ``__`` cleanup."""
    return {
        DOCKER_CONTAINER_ID: cid,
        "__meta_docker_container_name": "/app",
        "job": "j",
        **extra,
    }


@contextlib.asynccontextmanager
async def running(source: DockerSource) -> AsyncGenerator[DockerSource, None]:
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        await source.aclose(drain_timeout_s=1)
        assert task.done()


def make_source(
    client: Any,
    receivers: list[Any],
    tmp_path: Path,
    **kwargs: Any,
) -> DockerSource:
    return DockerSource(
        client,
        receivers,
        positions=kwargs.pop("positions", None)
        or Positions(tmp_path / "positions.json"),
        **{"registry": CollectorRegistry(), **kwargs},
    )


async def eventually(cond: Callable[[], bool], limit_s: float = 20) -> None:
    """Poll a condition that has no event of its own (task exit, file content)."""
    async with asyncio.timeout(limit_s):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# -- pure parts --


def test_fingerprint_matches_prometheus_vector() -> None:
    # prometheus/common model: LabelsToSignature of this set (separator 0xFF).
    labels = {"name": "garland, briggs", "fear": "love is not enough"}
    assert fingerprint(labels) == 5799056148416392346
    assert fingerprint({}) == 14695981039346656037


def test_dedupe_keeps_lowest_fingerprint_and_merges_labels_over_targets() -> None:
    a = target(__address__="10.0.0.1:80", job="x")
    b = target(__address__="10.0.0.2:80", job="x")
    other = target("d" * 64, job="y")
    got = dedupe_targets([a, b, other, {"job": "no id"}], {"job": "forced"})
    assert set(got) == {CID, "d" * 64}
    winner = min(({**a, "job": "forced"}, {**b, "job": "forced"}), key=fingerprint)
    assert got[CID] == winner
    assert got["d" * 64]["job"] == "forced"
    assert dedupe_targets([b, a]) == dedupe_targets([a, b])


# -- with a fake Docker API --


async def test_forwards_stdout_and_stderr_with_stream_labels(tmp_path: Path) -> None:
    fake = FakeDocker([MIXED_TS[:100], MIXED_TS[100:]])
    rec = Recorder()
    source = make_source(
        fake, [rec], tmp_path, relabel_rules=StreamLabel(), labels={"job": "j"}
    )
    source.update_targets([target()])
    expected = FrameDecoder().feed(MIXED_TS)
    async with running(source):
        await rec.wait_for(lambda: len(rec.lines()) == expected.lines)
    assert rec.lines("stdout") == [e.line for e in expected.stdout]
    assert rec.lines("stderr") == [e.line for e in expected.stderr]
    for batch in rec.batches:
        assert not any(k.startswith("__") for k in batch.labels)
        assert batch.labels["job"] == "j"
    ts = [e.timestamp_ns for b in rec.batches for e in b.entries]
    assert sorted(ts) == sorted(
        e.timestamp_ns for e in expected.stdout + expected.stderr
    )
    saved = Positions(tmp_path / "positions.json").get(CID)
    assert saved is not None
    assert (saved.ts_ns, saved.count_at_ts) == (expected.position_ns, 1)
    assert fake.log_calls == [(None, None)]


async def test_position_advances_only_over_the_settled_prefix(tmp_path: Path) -> None:
    chunks = [line(T0 + i, f"l{i}") for i in range(1, 4)]
    fake = FakeDocker(chunks)
    rec = Recorder(settle=False)
    positions = Positions(tmp_path / "positions.json")
    source = make_source(fake, [rec], tmp_path, positions=positions)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: len(rec.batches) == 3)
        assert positions.get(CID) is None
        rec.batches[1].settle()
        assert positions.get(CID) is None  # l1 still in flight
        rec.batches[0].settle()
        assert positions.get(CID) == Position(T0 + 2, 1, positions.get(CID).labels)  # type: ignore[union-attr]
        rec.batches[2].settle()
        assert positions.get(CID).ts_ns == T0 + 3  # type: ignore[union-attr]
        info = source.targets_info()[0]
        assert (info.position_ns, info.read_position_ns) == (T0 + 3, T0 + 3)


async def test_abandoned_delivery_freezes_the_position(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + i, f"l{i}") for i in range(1, 4)])
    rec = Recorder(settle=False)
    positions = Positions(tmp_path / "positions.json")
    source = make_source(fake, [rec], tmp_path, positions=positions)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: len(rec.batches) == 3)
        rec.batches[0].settle()
        rec.batches[1].settle(abandoned=True)
        rec.batches[2].settle()
    assert Positions(tmp_path / "positions.json").get(CID).ts_ns == T0 + 1  # type: ignore[union-attr]


async def test_fan_out_settles_only_when_every_receiver_settled(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + 1, "a") + line(T0 + 2, "b", stream=2)])
    first, second = Recorder(settle=False), Recorder(settle=False)
    positions = Positions(tmp_path / "positions.json")
    source = make_source(fake, [first, second], tmp_path, positions=positions)
    source.update_targets([target(job="j")])
    async with running(source):
        await second.wait_for(lambda: len(second.batches) == 2)
        assert [b.entries for b in first.batches] == [b.entries for b in second.batches]
        assert first.batches[0].labels is not second.batches[0].labels
        for b in first.batches + second.batches[:1]:
            b.settle()
        assert positions.get(CID) is None
        second.batches[1].settle()
        assert positions.get(CID).ts_ns == T0 + 2  # type: ignore[union-attr]


async def test_dropped_label_sets_are_not_sent_but_acknowledged(tmp_path: Path) -> None:
    fake = FakeDocker(
        [
            line(T0 + 1, "out") + line(T0 + 2, "err", stream=2),
            line(T0 + 3, "err only", stream=2),  # a chunk with nothing to send
        ]
    )
    rec = Recorder()
    registry = CollectorRegistry()
    positions = Positions(tmp_path / "positions.json")
    source = make_source(
        fake,
        [rec],
        tmp_path,
        relabel_rules=StreamLabel(),
        positions=positions,
        registry=registry,
    )
    source.update_targets([target(drop="stderr", job="j")])
    async with running(source):
        await eventually(
            lambda: (
                positions.get(CID) is not None and positions.get(CID).ts_ns == T0 + 3
            )  # type: ignore[union-attr]
        )
    assert rec.lines() == ["out"]
    dropped = registry.get_sample_value(
        "minilog_source_docker_dropped_entries_total", {"reason": "relabel_dropped"}
    )
    assert dropped == 2


async def test_label_change_updates_labels_without_restarting(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + 1, "first")])
    rec = Recorder()
    source = make_source(fake, [rec], tmp_path)
    source.update_targets([target(job="old")])
    async with running(source):
        await rec.wait_for(lambda: len(rec.batches) == 1)
        source.update_targets([target(job="new")])
        assert [t.labels for t in source.targets_info()] == [
            '{__meta_docker_container_id="'
            + CID
            + '", __meta_docker_container_name="/app", '
            'job="new"}'
        ]
        fake.chunks.append(line(T0 + 2, "second"))
        fake.end.set()  # stream ends; the container still runs: the tailer reconnects
        fake.end = asyncio.Event()
        await rec.wait_for(lambda: len(rec.batches) == 2)
    assert [b.labels for b in rec.batches] == [{"job": "old"}, {"job": "new"}]
    assert rec.lines() == ["first", "second"]  # reconnect resumed, no duplicate
    assert fake.log_calls == [(None, None), ("1795753222.000000001", "1000")]


async def test_resume_sends_since_with_nanoseconds_and_skips_counted_lines(
    tmp_path: Path,
) -> None:
    positions = Positions(tmp_path / "positions.json")
    positions.set(CID, T0 + 5, 2)
    same = [line(T0 + 5, t) for t in ("a", "b", "c")]
    fake = FakeDocker([*same, line(T0 + 6, "d")])
    rec = Recorder()
    source = make_source(fake, [rec], tmp_path, positions=positions)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: "d" in rec.lines())
    assert rec.lines() == ["c", "d"]
    assert fake.log_calls == [("1795753222.000000005", "1000")]


async def test_container_removed_ends_tailer_and_deletes_position(
    tmp_path: Path,
) -> None:
    positions = Positions(tmp_path / "positions.json")
    positions.set(CID, T0, 1)
    fake = FakeDocker([], running=False)
    fake.state = None
    source = make_source(fake, [Recorder()], tmp_path, positions=positions)
    source.update_targets([target()])
    async with running(source):
        await eventually(lambda: not source.targets_info())
    assert Positions(tmp_path / "positions.json").get(CID) is None


async def test_crashing_receiver_is_counted_and_the_tailer_restarted(
    tmp_path: Path,
) -> None:
    class Flaky(Recorder):
        calls = 0

        async def send(self, batch: StreamBatch) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            await super().send(batch)

    fake = FakeDocker([line(T0 + 1, "x")])
    rec = Flaky()
    registry = CollectorRegistry()
    source = make_source(fake, [rec], tmp_path, registry=registry)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: rec.lines() == ["x"])
    assert registry.get_sample_value("minilog_source_docker_tailer_crashes_total") == 1
    # rewound to the committed (empty) position
    assert fake.log_calls == [(None, None), (None, None)]


async def test_daemon_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + 1, "x")])
    fake.fail_inspect = DockerError("daemon away", status=None)
    rec = Recorder()
    source = make_source(fake, [rec], tmp_path)
    source.update_targets([target()])
    async with running(source):
        await eventually(lambda: source.targets_info()[0].last_error == "daemon away")
        fake.fail_inspect = None
        source.poke(CID)
        await rec.wait_for(lambda: rec.lines() == ["x"])


async def test_backpressure_stops_reading_while_send_waits(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + i, f"l{i}") for i in range(1, 6)])
    reads = 0
    original = fake.logs

    async def counting_logs(*args: Any, **kwargs: Any) -> AsyncGenerator[bytes, None]:
        nonlocal reads
        async for chunk in original(*args, **kwargs):
            reads += 1
            yield chunk

    fake.logs = counting_logs  # type: ignore[method-assign]
    blocking = Blocking()
    registry = CollectorRegistry()
    source = make_source(fake, [blocking], tmp_path, registry=registry)
    source.update_targets([target()])
    async with running(source):
        await blocking.entered.wait()
        for _ in range(20):
            await asyncio.sleep(0)  # let any eager reader run; none may
        assert reads == 1
        assert blocking.batches == []
        blocking.release.set()
        await blocking.wait_for(lambda: len(blocking.lines()) == 5)
    assert reads == 5
    assert registry.get_sample_value("loki_source_docker_target_entries_total") == 5


async def test_metrics_and_lag(tmp_path: Path) -> None:
    now = [T0 / 1e9 + 10]
    fake = FakeDocker(
        [line(T0 + 1, "a"), line(T0 + 2, "b"), frame(1, b"no-timestamp\n")]
    )
    rec = Recorder(settle=False)
    registry = CollectorRegistry()
    source = make_source(fake, [rec], tmp_path, registry=registry, clock=lambda: now[0])
    source.update_targets([target(job="j")])
    async with running(source):
        await rec.wait_for(lambda: len(rec.batches) == 2)
        assert registry.get_sample_value("minilog_source_docker_targets") == 1
        errors = "loki_source_docker_target_parsing_errors_total"
        await eventually(lambda: registry.get_sample_value(errors) == 1)
        assert registry.get_sample_value("minilog_source_docker_tailers_active") == 1
        # nothing acknowledged yet: lag counts from the oldest chunk in flight
        lag = registry.get_sample_value("minilog_source_docker_lag_seconds")
        assert lag == pytest.approx(10, abs=0.01)
        rec.batches[0].settle()
        now[0] += 5
        lag = registry.get_sample_value("minilog_source_docker_lag_seconds")
        assert lag == pytest.approx(15, abs=0.01)  # since "a", the newest acknowledged
        rec.batches[1].settle()
        assert registry.get_sample_value("minilog_source_docker_lag_seconds") == 0
    assert registry.get_sample_value("minilog_source_docker_tailers_active") == 0


async def test_positions_of_removed_untailed_containers_are_collected(
    tmp_path: Path,
) -> None:
    positions = Positions(tmp_path / "positions.json")
    positions.set(CID, T0, 1)
    positions.set("e" * 64, T0, 1)  # removed while the agent was down
    fake = FakeDocker([])
    source = make_source(fake, [Recorder()], tmp_path, positions=positions)
    source.update_targets([target()])
    async with running(source):
        await eventually(lambda: positions.get("e" * 64) is None)
    assert Positions(tmp_path / "positions.json").ids() == [CID]


async def test_sources_given_one_metrics_object_share_its_series(
    tmp_path: Path,
) -> None:
    """A component rebuilding its source on reload hands each one its metrics."""
    registry = CollectorRegistry()
    metrics = SourceMetrics(registry)
    recs = [Recorder(), Recorder()]
    sources = [
        make_source(
            FakeDocker([line(T0 + 1, "x")]), [rec], tmp_path / str(i), metrics=metrics
        )
        for i, rec in enumerate(recs)
    ]
    for source in sources:
        source.update_targets([target()])
    async with running(sources[0]), running(sources[1]):
        for rec in recs:
            await rec.wait_for(lambda rec=rec: rec.lines() == ["x"])  # type: ignore[misc]
    assert registry.get_sample_value("loki_source_docker_target_entries_total") == 2


async def test_broken_stream_reconnects_from_the_read_position(tmp_path: Path) -> None:
    broken = DockerUnavailableError("connection reset by peer")
    fake = FakeDocker([line(T0 + 1, "a"), broken, line(T0 + 2, "b")])
    rec = Recorder()
    source = make_source(fake, [rec], tmp_path)
    source.update_targets([target()])
    async with running(source):
        # The retry re-reads "a" (since is inclusive) and must skip it.
        await rec.wait_for(lambda: "b" in rec.lines())
    assert rec.lines() == ["a", "b"]
    assert fake.log_calls == [(None, None), ("1795753222.000000001", "1000")]


async def test_running_container_leaving_discovery_stops_its_tailer(
    tmp_path: Path,
) -> None:
    fake = FakeDocker([line(T0 + 1, "a")])
    rec = Recorder()
    positions = Positions(tmp_path / "positions.json")
    source = make_source(fake, [rec], tmp_path, positions=positions)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: rec.lines() == ["a"])
        source.update_targets([])  # the stream is open: the read is interrupted
        await eventually(lambda: not source.targets_info())
        assert len(fake.log_calls) == 1
        fake.chunks.append(line(T0 + 2, "b"))
        source.update_targets([target()])  # back again: resumes, no duplicate
        await rec.wait_for(lambda: "b" in rec.lines())
    assert rec.lines() == ["a", "b"]
    assert positions.get(CID).ts_ns == T0 + 2  # type: ignore[union-attr]


async def test_leaving_discovery_while_a_send_waits_stops_the_tailer(
    tmp_path: Path,
) -> None:
    """Only reads are interrupted; a tailer held in send() must still stop after it."""
    fake = FakeDocker([line(T0 + i, f"l{i}") for i in range(1, 4)])
    blocking = Blocking()
    source = make_source(fake, [blocking], tmp_path)
    source.update_targets([target()])
    async with running(source):
        await blocking.entered.wait()  # the first chunk's send waits
        source.update_targets([])
        blocking.release.set()
        await eventually(lambda: not source.targets_info())
    assert blocking.lines() == ["l1"]  # the send under way, nothing after it


async def test_aclose_waits_for_deliveries_and_saves_their_positions(
    tmp_path: Path,
) -> None:
    fake = FakeDocker([line(T0 + 1, "a")])
    rec = Recorder(settle=False)
    source = make_source(fake, [rec], tmp_path)
    source.update_targets([target()])
    task = asyncio.create_task(source.run())
    await rec.wait_for(lambda: len(rec.batches) == 1)
    closing = asyncio.create_task(source.aclose(drain_timeout_s=10))
    await eventually(task.done)  # tailers stopped; the delivery is still in flight
    assert not closing.done()
    rec.batches[0].settle()  # the writer drains it
    await closing
    assert Positions(tmp_path / "positions.json").get(CID).ts_ns == T0 + 1  # type: ignore[union-attr]


async def test_returning_target_reuses_the_tailer_with_deliveries_in_flight(
    tmp_path: Path,
) -> None:
    fake = FakeDocker([line(T0 + 1, "a")])
    rec = Recorder(settle=False)
    positions = Positions(tmp_path / "positions.json")
    source = make_source(fake, [rec], tmp_path, positions=positions)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: len(rec.batches) == 1)
        source.update_targets([])
        await eventually(lambda: not source.targets_info())
        fake.chunks.append(line(T0 + 2, "b"))
        source.update_targets([target()])
        await rec.wait_for(lambda: len(rec.batches) == 2)
        # "a" was not read again: the tailer came back with its read position ...
        assert rec.lines() == ["a", "b"]
        rec.batches[1].settle()
        assert positions.get(CID) is None  # ... and its in-flight order: "a" first
        rec.batches[0].settle()
        assert positions.get(CID).ts_ns == T0 + 2  # type: ignore[union-attr]


async def test_stopped_container_is_read_once_per_run(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + 1, "a")], running=False)
    assert fake.state is not None
    fake.state["FinishedAt"] = "2026-11-27T04:20:30.5Z"
    rec = Recorder()
    source = make_source(fake, [rec], tmp_path, inspect_interval_s=0.01)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: rec.lines() == ["a"])
        await eventually(lambda: fake.inspects >= 10)
        assert len(fake.log_calls) == 1  # the same stopped run is not read again
        fake.chunks.append(line(T0 + 2, "b"))
        fake.state["FinishedAt"] = "2026-11-27T04:21:00Z"  # it ran and stopped again
        await rec.wait_for(lambda: "b" in rec.lines())
    assert rec.lines() == ["a", "b"]
    assert len(fake.log_calls) == 2


async def test_resume_without_tail_when_the_window_is_too_small(tmp_path: Path) -> None:
    positions = Positions(tmp_path / "positions.json")
    positions.set(CID, T0 + 1, 1)
    fake = FakeDocker([line(T0 + i, f"l{i}") for i in range(1, 5)])
    rec = Recorder()
    registry = CollectorRegistry()
    source = make_source(
        fake, [rec], tmp_path, positions=positions, registry=registry, tail_window=3
    )
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: "l4" in rec.lines())
    assert rec.lines() == ["l2", "l3", "l4"]
    assert fake.probe_calls == [("1795753222.000000001", "3")]
    assert fake.log_calls == [("1795753222.000000001", None)]
    resumes = "minilog_source_docker_resumes_total"
    assert registry.get_sample_value(resumes, {"mode": "since"}) == 1


async def test_resume_window_anchors_on_the_newest_record_when_nothing_is_newer(
    tmp_path: Path,
) -> None:
    positions = Positions(tmp_path / "positions.json")
    positions.set(CID, T0 + 5, 1)
    fake = FakeDocker([line(T0 + 1, "old"), line(T0 + 4, "older than position")])
    rec = Recorder()
    registry = CollectorRegistry()
    source = make_source(fake, [rec], tmp_path, positions=positions, registry=registry)
    source.update_targets([target()])
    async with running(source):
        await eventually(lambda: len(fake.log_calls) == 1)
        fake.chunks.append(line(T0 + 6, "new"))
        fake.end.set()  # the follow stream ends; the next one yields "new"
        await rec.wait_for(lambda: "new" in rec.lines())
    assert rec.lines() == ["new"]
    assert fake.probe_calls[:2] == [("1795753222.000000005", "1000"), (None, "1")]
    assert fake.log_calls[0] == ("1795753222.000000004", "1000")
    resumes = "minilog_source_docker_resumes_total"
    assert registry.get_sample_value(resumes, {"mode": "window"}) >= 1


async def test_resume_window_that_moved_falls_back_to_since_without_loss(
    tmp_path: Path,
) -> None:
    positions = Positions(tmp_path / "positions.json")
    positions.set(CID, T0 + 1, 1)
    fake = FakeDocker([line(T0 + 1, "a")])

    def burst(follow: bool) -> None:
        # Between the probe and the follow request the container writes 3 lines,
        # pushing "a" out of a 3-record tail window.
        if not follow and len(fake.chunks) == 1:
            fake.chunks.extend(line(T0 + i, f"b{i}") for i in (2, 3, 4))

    fake.on_yield = burst
    rec = Recorder()
    registry = CollectorRegistry()
    source = make_source(
        fake, [rec], tmp_path, positions=positions, registry=registry, tail_window=3
    )
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: "b4" in rec.lines())
    assert rec.lines() == ["b2", "b3", "b4"]
    assert fake.log_calls == [
        ("1795753222.000000001", "3"),
        ("1795753222.000000001", None),
    ]
    resumes = "minilog_source_docker_resumes_total"
    assert registry.get_sample_value(resumes, {"mode": "window_missed"}) == 1


# -- with the real Docker Engine --


@pytest.fixture
async def client() -> AsyncGenerator[Any, None]:
    from docker_helpers import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from minilog.docker.client import DockerClient

    c = DockerClient()
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def containers(docker_containers: Any) -> Iterator[Any]:
    yield docker_containers


def real_target(container: Any) -> dict[str, str]:
    """A target for a docker SDK container (or a container ID)."""
    cid = container if isinstance(container, str) else container.id
    return {DOCKER_CONTAINER_ID: cid, "__meta_docker_container_name": "/x", "job": "t"}


async def to_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.mark.docker
async def test_real_container_stdout_stderr_and_long_line(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers(
        "echo out1; echo err1 >&2; printf 'long:%020000d:end\\n' 0; echo out2; sleep 60"
    )
    rec = Recorder()
    source = make_source(client, [rec], tmp_path, relabel_rules=StreamLabel())
    source.update_targets([real_target(container)])
    async with running(source):
        await rec.wait_for(lambda: "out2" in rec.lines())
    long = "long:" + "0" * 20000 + ":end"
    assert rec.lines("stdout") == ["out1", long, "out2"]
    assert rec.lines("stderr") == ["err1"]
    raw = await to_thread(container.logs, timestamps=True, stdout=True, stderr=True)
    docker_ts = {
        text: parse_timestamp(stamp)
        for stamp, _, text in (row.partition(b" ") for row in raw.splitlines())
    }
    got_ts = {e.line.encode(): e.timestamp_ns for b in rec.batches for e in b.entries}
    for text in (b"out1", b"err1", b"out2"):
        assert got_ts[text] == docker_ts[text]


@pytest.mark.docker
async def test_real_tty_container(client: Any, containers: Any, tmp_path: Path) -> None:
    container = containers("echo tty1; echo tty2 >&2; sleep 60", tty=True)
    rec = Recorder()
    source = make_source(client, [rec], tmp_path, relabel_rules=StreamLabel())
    source.update_targets([real_target(container)])
    async with running(source):
        await rec.wait_for(lambda: len(rec.lines()) == 2)
    assert rec.lines("stdout") == ["tty1", "tty2"]


@pytest.mark.docker
async def test_source_restart_resumes_without_duplicates_or_loss(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers(
        "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo n$i; sleep 0.005; done"
    )
    want = [f"n{i}" for i in range(1, 401)]
    first = Recorder()
    source = make_source(client, [first], tmp_path)
    source.update_targets([real_target(container)])
    async with running(source):
        await first.wait_for(lambda: len(first.lines()) >= 50)
    assert 50 <= len(first.lines()) < 400, "the restart must happen mid-stream"
    second = Recorder()
    registry = CollectorRegistry()
    source = make_source(client, [second], tmp_path, registry=registry)
    source.update_targets([real_target(container)])
    async with running(source):
        await second.wait_for(lambda: "n400" in second.lines())
    assert first.lines() + second.lines() == want
    # resumed with since + tail (no full scan by dockerd), checked against the probe
    resumes = "minilog_source_docker_resumes_total"
    assert registry.get_sample_value(resumes, {"mode": "window"}) == 1


@pytest.mark.docker
async def test_stopped_then_restarted_container_resumes_from_its_position(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("echo run; echo done")
    rec = Recorder()
    source = make_source(client, [rec], tmp_path, inspect_interval_s=0.2)
    source.update_targets([real_target(container)])
    async with running(source):
        await rec.wait_for(lambda: len(rec.lines()) == 2)
        await to_thread(container.wait)
        await eventually(lambda: not source.targets_info()[0].is_running)
        await to_thread(container.start)
        source.poke(container.id)
        await rec.wait_for(lambda: len(rec.lines()) == 4)
        await to_thread(container.wait)
        await eventually(lambda: not source.targets_info()[0].is_running)
    assert rec.lines() == ["run", "done", "run", "done"]
    saved = Positions(tmp_path / "positions.json").get(container.id)
    assert saved is not None
    assert saved.ts_ns == rec.batches[-1].entries[-1].timestamp_ns


@pytest.mark.docker
async def test_abandoned_deliveries_are_read_again_on_next_start(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("echo a; sleep 0.3; echo b; sleep 60")  # two reads
    holder = Recorder(settle=False)
    source = make_source(client, [holder], tmp_path)
    source.update_targets([real_target(container)])
    async with running(source):
        await holder.wait_for(lambda: len(holder.lines()) == 2)
        assert [b.entries[0].line for b in holder.batches] == ["a", "b"]
        holder.batches[0].settle()
        for b in holder.batches[1:]:
            b.settle(abandoned=True)  # what a writer does with entries left at shutdown
    rec = Recorder()
    source = make_source(client, [rec], tmp_path)
    source.update_targets([real_target(container)])
    async with running(source):
        await rec.wait_for(lambda: "b" in rec.lines())
    assert holder.lines()[:1] + rec.lines() == ["a", "b"]


@pytest.mark.docker
async def test_stopped_container_leaving_discovery_is_read_once_then_dropped(
    client: Any, docker_client: Any, tmp_path: Path
) -> None:
    from docker_helpers import TEST_IMAGE, TEST_LABEL

    container = await to_thread(
        docker_client.containers.create,
        TEST_IMAGE,
        ["sh", "-c", "echo last1; echo last2"],
        labels={TEST_LABEL: "1"},
        network_mode="none",
    )
    try:
        rec = Recorder()
        source = make_source(client, [rec], tmp_path, inspect_interval_s=30)
        source.update_targets([real_target(container)])
        async with running(source):
            await eventually(lambda: bool(source.targets_info()))
            await to_thread(container.start)
            await to_thread(container.wait)
            source.update_targets([])  # discovery dropped the exited container
            await rec.wait_for(lambda: len(rec.lines()) == 2)
            await eventually(lambda: not source.targets_info())
        assert rec.lines() == ["last1", "last2"]
        assert Positions(tmp_path / "positions.json").get(container.id) is not None
    finally:
        await to_thread(container.remove, force=True)


@pytest.mark.docker
async def test_unreadable_logging_driver_is_reported_not_retried_hot(
    client: Any, docker_client: Any, tmp_path: Path
) -> None:
    from docker_helpers import TEST_IMAGE, TEST_LABEL

    container = await to_thread(
        docker_client.containers.run,
        TEST_IMAGE,
        ["sh", "-c", "echo invisible; sleep 60"],
        labels={TEST_LABEL: "1"},
        network_mode="none",
        log_config={"type": "none"},
        detach=True,
    )
    try:
        source = make_source(client, [Recorder()], tmp_path)
        source.update_targets([real_target(container)])
        async with running(source):
            await eventually(
                lambda: (
                    "does not support reading" in source.targets_info()[0].last_error
                )
            )
            assert not source.targets_info()[0].is_running
    finally:
        await to_thread(container.remove, force=True)


@pytest.mark.docker
async def test_backpressure_with_real_container(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("echo one; sleep 0.3; echo two; echo three; sleep 60")
    blocking = Blocking()
    source = make_source(client, [blocking], tmp_path)
    source.update_targets([real_target(container)])
    async with running(source):
        await blocking.entered.wait()
        read_while_blocked = source.targets_info()[0].read_position_ns

        def docker_has_all() -> bool:
            return b"three" in container.logs()

        # Docker has no "line written" event: poll its log until it holds every line.
        while not await to_thread(docker_has_all):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # Docker holds "two" and "three"; the tailer, stuck in send, has not read them.
        assert source.targets_info()[0].read_position_ns == read_while_blocked
        assert blocking.batches == []
        blocking.release.set()
        await blocking.wait_for(lambda: len(blocking.lines()) == 3)
        assert blocking.lines() == ["one", "two", "three"]
        assert source.targets_info()[0].read_position_ns > read_while_blocked


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run_and_close(fn: Callable[[Any], Any]) -> Any:
    """One SDK call on a client of its own, closed after, so its sockets are not
    counted."""
    import docker

    sdk = docker.from_env()
    try:
        return fn(sdk)
    finally:
        sdk.close()


async def _start_batch(n: int, tag: str) -> list[str]:
    from docker_helpers import start_container

    def start(i: int) -> str:
        return str(
            _run_and_close(
                lambda sdk: start_container(sdk, f"echo {tag}-{i}; sleep 60").id
            )
        )

    return list(await asyncio.gather(*(to_thread(start, i) for i in range(n))))


async def _remove_batch(ids: list[str]) -> None:
    def remove(cid: str) -> None:
        _run_and_close(lambda sdk: sdk.api.remove_container(cid, force=True))

    await asyncio.gather(*(to_thread(remove, cid) for cid in ids))


@pytest.mark.docker
async def test_fifty_containers_leak_no_tasks_or_fds(
    client: Any, tmp_path: Path
) -> None:
    # Warm the thread pool first: its threads are not ours.
    await _remove_batch(await _start_batch(10, "warm"))
    from minilog.docker.client import DockerClient

    baseline_fds = _fd_count()
    baseline_tasks = len(asyncio.all_tasks())
    own_client = DockerClient()
    rec = Recorder()
    source = make_source(own_client, [rec], tmp_path)
    started: list[str] = []
    try:
        async with running(source):
            for round_ in range(5):
                batch = await _start_batch(10, f"r{round_}")
                started.extend(batch)
                source.update_targets([real_target(cid) for cid in batch])
                want = 10 * (round_ + 1)
                await rec.wait_for(lambda want=want: len(rec.lines()) == want)  # type: ignore[misc]
                assert len(source.targets_info()) == 10
                await _remove_batch(batch)
                await eventually(lambda: not source.targets_info())
                source.update_targets([])
                # only run() and its stale-position collector are left
                await eventually(lambda: len(asyncio.all_tasks()) <= baseline_tasks + 2)
        assert len(asyncio.all_tasks()) == baseline_tasks
        assert sorted(rec.lines()) == sorted(
            f"r{r}-{i}" for r in range(5) for i in range(10)
        )
        await own_client.aclose()
        assert _fd_count() <= baseline_fds
    finally:
        await own_client.aclose()
        with contextlib.suppress(Exception):
            await _remove_batch(started)
