"""Shipper (asyncio) and SyncShipper (thread) end to end against ``FakeLoki``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from shipper_helpers import FAST, ThreadedLoki, base_url

from minilog.errors import ClosedError, LabelError, WouldBlockError
from minilog.labels import format_labels
from minilog.model import LogEntry
from minilog.shipper import Shipper, SyncShipper, push_url
from minilog.testing import FakeLoki
from minilog.write import ENTRY_OVERHEAD_BYTES


@pytest.fixture
def tloki() -> Iterator[ThreadedLoki]:
    server = ThreadedLoki()
    yield server
    server.close()


def test_push_url_accepts_base_or_full_url() -> None:
    assert push_url("http://loki:3100") == "http://loki:3100/loki/api/v1/push"
    assert push_url("http://loki:3100/") == "http://loki:3100/loki/api/v1/push"
    assert push_url("https://gw/loki") == "https://gw/loki/loki/api/v1/push"
    full = "http://loki:3100/loki/api/v1/push"
    assert push_url(full) == full
    assert push_url("http://old/api/prom/push") == "http://old/api/prom/push"


async def test_shipper_sends_lines_with_merged_labels(loki: FakeLoki) -> None:
    before = time.time_ns()
    async with Shipper(
        base_url(loki), labels={"service": "api", "env": "x"}, **FAST
    ) as s:
        await s.send({"env": "prod"}, "hello", metadata={"trace_id": "abc"})
        await s.send(None, "explicit", timestamp_ns=42)
        await s.flush()
    after = time.time_ns()
    by_line = {e.line: (format_labels(ls), e) for ls, e in loki.entries}
    labels, hello = by_line["hello"]
    assert labels == '{env="prod", service="api"}'
    assert before <= hello.timestamp_ns <= after
    assert hello.structured_metadata == (("trace_id", "abc"),)
    labels, explicit = by_line["explicit"]
    assert labels == '{env="x", service="api"}'
    assert explicit.timestamp_ns == 42


async def test_send_batch_ships_many_lines_in_one_request(loki: FakeLoki) -> None:
    entries = [LogEntry(i, f"line {i}") for i in range(1, 1001)]
    async with Shipper(loki.push_url, batch_wait=5.0) as shipper:
        await shipper.send_batch({"job": "bulk"}, entries)
        await shipper.flush()
    assert len(loki.pushes) == 1
    assert [e for _, e in loki.entries] == entries


async def test_invalid_label_name_is_refused_before_queueing(loki: FakeLoki) -> None:
    async with Shipper(loki.push_url, **FAST) as shipper:
        with pytest.raises(LabelError):
            await shipper.send({"bad-name": "x"}, "never sent")
        with pytest.raises(LabelError):
            shipper.send_nowait({"0digit": "x"}, "never sent")
        assert shipper.queued_bytes == 0
        await shipper.send({"good_name": "x"}, "sent")
        await shipper.flush()
    assert [e.line for _, e in loki.entries] == ["sent"]
    with pytest.raises(LabelError):
        Shipper(loki.push_url, labels={"a.b": "x"})


async def test_delivered_future_and_callback(loki: FakeLoki) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()
    calls: list[bool] = []
    loki.faults.hang()
    async with Shipper(loki.push_url, **FAST) as shipper:
        await shipper.send(None, "a", on_delivery=future)
        await shipper.send_batch(None, [LogEntry(1, "b")], on_delivery=calls.append)
        await loki.wait_for_requests(1)
        assert not future.done()
        loki.faults.clear()
        assert await asyncio.wait_for(future, 5) is True
        await shipper.flush()
    assert calls == [True]


async def test_nowait_raises_when_full_and_counts(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    loki.faults.hang()
    shipper = Shipper(
        loki.push_url,
        batch_size=64,
        queue_capacity=2 * (64 + ENTRY_OVERHEAD_BYTES),
        registry=registry,
        **FAST,
    )
    await shipper.send(None, "x" * 64)
    await shipper.send(None, "y" * 64)
    with pytest.raises(WouldBlockError):
        shipper.send_nowait({"a": "1"}, "dropped")
    waiting = asyncio.create_task(shipper.send(None, "waits"))
    await loki.wait_for_requests(1)
    assert not waiting.done()
    loki.faults.clear()
    await asyncio.wait_for(waiting, 5)
    await shipper.aclose()
    value = registry.get_sample_value(
        "loki_write_dropped_entries_total",
        {"host": f"127.0.0.1:{loki.port}", "tenant": "", "reason": "queue_is_full"},
    )
    assert value == 1
    assert [e.line for _, e in loki.entries] == ["x" * 64, "y" * 64, "waits"]
    with pytest.raises(ClosedError):
        await shipper.send(None, "after close")


async def test_tenant_id_sets_the_org_header(loki: FakeLoki) -> None:
    async with Shipper(loki.push_url, tenant_id="acme", **FAST) as shipper:
        await shipper.send(None, "x")
    assert loki.pushes[0][0]["X-Scope-OrgID"] == "acme"


def test_sync_shipper_from_many_threads(tloki: ThreadedLoki) -> None:
    future: concurrent.futures.Future[bool] = concurrent.futures.Future()
    with SyncShipper(base_url(tloki.stub), labels={"app": "sync"}, **FAST) as shipper:

        def produce(worker: int) -> None:
            for i in range(500):
                shipper.send({"worker": str(worker)}, f"{worker}-{i}")

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        shipper.send(None, "tracked", on_delivery=future)
        shipper.flush(timeout=10)
        assert future.result(0) is True
    got = tloki.stub.entries
    assert len(got) == 2001
    for worker in range(4):
        lines = [
            e.line
            for labels, e in got
            if format_labels(labels) == f'{{app="sync", worker="{worker}"}}'
        ]
        assert lines == [f"{worker}-{i}" for i in range(500)]  # per-stream order kept
    with pytest.raises(ClosedError):
        shipper.send(None, "late")


def test_sync_send_blocks_only_when_full(tloki: ThreadedLoki) -> None:
    registry = CollectorRegistry()
    tloki.hang()
    shipper = SyncShipper(
        tloki.stub.push_url,
        batch_size=100,
        queue_capacity=100,
        buffer_bytes=100,
        registry=registry,
        **FAST,
    )
    try:
        shipper.send(None, "a" * 100)  # fills the writer's queue
        tloki.wait_for_requests(1)
        shipper.send(None, "b" * 100)  # fills the caller-side buffer
        started = time.monotonic()
        with pytest.raises(WouldBlockError):
            shipper.send(None, "c", timeout=0.1)
        assert time.monotonic() - started >= 0.1
        with pytest.raises(WouldBlockError):
            shipper.send_nowait(None, "d")
        dropped = registry.get_sample_value(
            "loki_write_dropped_entries_total",
            {
                "host": f"127.0.0.1:{tloki.stub.port}",
                "tenant": "",
                "reason": "queue_is_full",
            },
        )
        assert dropped == 1
        tloki.resume()
        shipper.send(None, "e", timeout=5)
    finally:
        shipper.close(timeout=5)
    assert [e.line for _, e in tloki.stub.entries] == ["a" * 100, "b" * 100, "e"]


def test_sync_close_gives_up_after_timeout_and_abandons(tloki: ThreadedLoki) -> None:
    tloki.hang()
    future: concurrent.futures.Future[bool] = concurrent.futures.Future()
    shipper = SyncShipper(tloki.stub.push_url, **FAST)
    shipper.send(None, "stuck", on_delivery=future)
    tloki.wait_for_requests(1)
    started = time.monotonic()
    shipper.close(timeout=0.2)
    assert time.monotonic() - started < 3
    assert future.result(0) is False
    shipper.close()  # idempotent


def test_unclosed_sync_shipper_is_flushed_at_exit(
    tloki: ThreadedLoki, tmp_path: Path
) -> None:
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from minilog.shipper import SyncShipper
            shipper = SyncShipper({tloki.stub.push_url!r}, batch_wait=30.0)
            for i in range(100):
                shipper.send({{"app": "exit"}}, f"line {{i}}")
            """
        )
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, str(script)],
        check=True,
        timeout=30,
        cwd=root,
        env={"PYTHONPATH": str(root)},
    )
    assert [e.line for _, e in tloki.stub.entries] == [f"line {i}" for i in range(100)]


async def test_shipper_against_fake_loki_base_url() -> None:
    from minilog.testing import FakeLoki

    async with FakeLoki() as fake:
        async with Shipper(fake.url, labels={"service": "api"}, **FAST) as shipper:
            for i in range(50):
                await shipper.send({"level": "info"}, f"line {i}", timestamp_ns=i + 1)
        assert fake.streams() == {
            '{level="info", service="api"}': [
                LogEntry(i + 1, f"line {i}") for i in range(50)
            ]
        }


def test_sync_shipper_rejects_bad_options_without_leaking_a_thread() -> None:
    before = threading.active_count()
    with pytest.raises(LabelError):
        SyncShipper("http://127.0.0.1:9", labels={"bad-name": "x"})
    assert threading.active_count() == before


def test_sync_close_abandons_lines_still_waiting_for_queue_room(
    tloki: ThreadedLoki,
) -> None:
    registry = CollectorRegistry()
    tloki.hang()
    shipper = SyncShipper(
        tloki.stub.push_url,
        batch_size=100,
        queue_capacity=100,
        buffer_bytes=1000,
        registry=registry,
        **FAST,
    )
    first: concurrent.futures.Future[bool] = concurrent.futures.Future()
    waiting: concurrent.futures.Future[bool] = concurrent.futures.Future()
    shipper.send(None, "a" * 100, on_delivery=first)  # in flight, never answered
    tloki.wait_for_requests(1)
    shipper.send({"n": "2"}, "b" * 50, on_delivery=waiting)  # the writer has no room
    shipper.send({"n": "3"}, "c" * 50)
    shipper.close(timeout=0.2)
    assert first.result(0) is False
    assert waiting.result(0) is False
    labels = {
        "host": f"127.0.0.1:{tloki.stub.port}",
        "tenant": "",
        "reason": "drain_timeout",
    }
    # the one in flight and the two that never reached the writer
    assert registry.get_sample_value("loki_write_dropped_entries_total", labels) == 3
