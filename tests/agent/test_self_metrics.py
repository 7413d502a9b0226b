"""The agent's own health series that the compose stack's dashboard shows and Alloy does
not have: queue fill against capacity (``loki.write``), the age of the saved positions
and per-container targets and read lag (``loki.source.docker``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from minilog.docker.positions import Positions
from minilog.model import LogEntry, StreamBatch
from minilog.testing import FakeLoki
from minilog.write import EndpointConfig, WriteMetrics, Writer


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_queue_gauges_show_what_the_queue_holds_against_its_capacity() -> None:
    registry = CollectorRegistry()
    async with FakeLoki() as loki:
        loki.faults.hang()
        host = loki.push_url.split("/")[2]
        writer = Writer(
            [EndpointConfig(loki.push_url, batch_wait=0.01, queue_capacity=1 << 20)],
            registry=registry,
        )
        await writer.start()
        entries = [LogEntry(time.time_ns() + i, "x" * 1000) for i in range(20)]
        await writer.send(StreamBatch({"job": "q"}, entries))
        await loki.wait_for_requests(1)  # the batch is in flight, held by the hang

        held = _sample(registry, "minilog_write_queue_bytes", host=host)
        assert held is not None and held >= 20 * 1000
        assert held == sum(writer.queued_bytes().values())
        assert _sample(registry, "minilog_write_queue_capacity_bytes", host=host) == (
            1 << 20
        )

        loki.faults.clear()
        await writer.flush()
        assert _sample(registry, "minilog_write_queue_bytes", host=host) == 0
        await writer.aclose()
    # A closed writer offers no capacity any more.
    assert _sample(registry, "minilog_write_queue_capacity_bytes", host=host) is None


async def test_queue_gauges_add_up_the_writers_of_one_component() -> None:
    """A reload builds a new writer on the same metrics while the old one drains: the
    capacity is the live writer's, the bytes held are both writers'."""
    registry = CollectorRegistry()
    metrics = WriteMetrics(registry)
    async with FakeLoki() as loki:
        loki.faults.hang()
        host = loki.push_url.split("/")[2]
        config = EndpointConfig(loki.push_url, batch_wait=0.01, queue_capacity=1 << 20)
        old = Writer([config], registry=registry, metrics=metrics)
        await old.send(StreamBatch({"job": "q"}, [LogEntry(1, "a" * 500)]))
        await loki.wait_for_requests(1)
        new = Writer([config], registry=registry, metrics=metrics)
        closing = asyncio.create_task(old.aclose(drain_timeout=5))
        await asyncio.sleep(0)  # let aclose mark the old writer closed
        assert old.closed
        assert _sample(registry, "minilog_write_queue_capacity_bytes", host=host) == (
            1 << 20
        )
        held = _sample(registry, "minilog_write_queue_bytes", host=host)
        assert held == sum(old.queued_bytes().values()) > 0
        loki.faults.clear()
        await closing
        await new.aclose()


def test_positions_age_counts_from_the_oldest_change_not_saved(tmp_path: Path) -> None:
    positions = Positions(tmp_path / "source" / "positions.json")
    assert positions.unsaved_for(time.monotonic() + 100) == 0

    before = time.monotonic()
    positions.set("a", 1)
    after_first = time.monotonic()
    positions.set("b", 2)  # a later change does not make the file look fresher
    later = after_first + 100
    assert later - after_first <= positions.unsaved_for(later) <= later - before

    positions.save()
    assert positions.unsaved_for(time.monotonic() + 100) == 0


def test_positions_age_keeps_growing_while_saves_fail(tmp_path: Path) -> None:
    directory = tmp_path / "source"
    positions = Positions(directory / "positions.json")
    before = time.monotonic()
    positions.set("a", 1)
    after_change = time.monotonic()
    directory.write_text("a file where the directory should be")
    try:
        positions.save()
    except OSError:
        pass
    else:
        raise AssertionError("the save should have failed")
    later = time.monotonic() + 100
    # Still counted from the change before the failed save, not from the attempt.
    assert later - after_change <= positions.unsaved_for(later) <= later - before
    assert positions.dirty

    directory.unlink()
    positions.save()
    assert positions.unsaved_for(time.monotonic() + 100) == 0
