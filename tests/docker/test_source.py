"""Tests for ``minilog.docker.source`` and ``tailer`` (``loki.source.docker``) on a fake
Docker API: delivery-gated positions, resumes, lifecycle, backpressure, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from source_helpers import (
    CID,
    MIXED_TS,
    T0,
    Blocking,
    FakeDocker,
    Recorder,
    StreamLabel,
    eventually,
    frame,
    line,
    make_source,
    running,
    target,
)

from minilog.docker.frames import FrameDecoder
from minilog.docker.metrics import SourceMetrics
from minilog.docker.positions import Position, Positions
from minilog.errors import DockerError, DockerUnavailableError
from minilog.model import StreamBatch


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
    # One delivery per read: the reads are settled one by one.
    source = make_source(fake, [rec], tmp_path, positions=positions, join_window_s=0)
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


async def test_reads_joined_in_one_delivery_commit_together(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + i, f"l{i}") for i in range(1, 4)])
    rec = Recorder(settle=False)
    positions = Positions(tmp_path / "positions.json")
    # A window no run outlasts: every read joins the first one's pending delivery.
    source = make_source(fake, [rec], tmp_path, positions=positions, join_window_s=3600)
    source.update_targets([target()])
    async with running(source):
        await rec.wait_for(lambda: len(rec.batches) == 3)
        assert len({id(b.delivery) for b in rec.batches}) == 1
        rec.batches[0].settle()
        rec.batches[1].settle()
        assert positions.get(CID) is None  # l3 joined the same delivery
        rec.batches[2].settle()
        assert positions.get(CID).ts_ns == T0 + 3  # type: ignore[union-attr]


async def test_abandoned_delivery_freezes_the_position(tmp_path: Path) -> None:
    fake = FakeDocker([line(T0 + i, f"l{i}") for i in range(1, 4)])
    rec = Recorder(settle=False)
    positions = Positions(tmp_path / "positions.json")
    # One delivery per read: the reads are settled one by one.
    source = make_source(fake, [rec], tmp_path, positions=positions, join_window_s=0)
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
