"""Live debugging's buffers: a viewer that does not keep up loses entries, counted,
and the pipeline never waits for it."""

from __future__ import annotations

import pytest

from minilog.agent.livedebug import DISABLED_MESSAGE, LiveDebugging, LiveDebuggingError
from minilog.components.base import Fanout
from minilog.model import LogEntry, StreamBatch


class Sink:
    def __init__(self) -> None:
        self.batches: list[StreamBatch] = []

    async def send(self, batch: StreamBatch) -> None:
        self.batches.append(batch)


def batch(n: int, start: int = 0) -> StreamBatch:
    return StreamBatch(
        {"job": "x"}, [LogEntry(i, f"line {i}") for i in range(start, start + n)]
    )


async def test_a_stalled_viewer_drops_and_counts_while_the_pipeline_goes_on() -> None:
    sink = Sink()
    fanout = Fanout([sink])
    live = LiveDebugging()
    live.set_enabled(True)
    live.bind(lambda cid, tap: setattr(fanout, "tap", tap) is None)
    viewer = live.subscribe("loki.process.p", capacity=10)
    for i in range(5):
        await fanout.send(batch(7, start=i * 7))  # nobody reads the viewer
    assert sum(len(b.entries) for b in sink.batches) == 35  # all went on
    assert len(viewer) == 10 and viewer.dropped == 25
    assert [s.entry.line for s in viewer.take(3)] == ["line 0", "line 1", "line 2"]
    # Room again: newer entries are kept (oldest first), the count stays.
    await fanout.send(batch(2, start=100))
    assert len(viewer) == 9 and viewer.dropped == 25
    live.unsubscribe(viewer)
    assert fanout.tap is None


async def test_the_copy_is_the_batch_as_it_left() -> None:
    # A stage downstream may edit the batch it gets: the viewer keeps what left.
    class Editor:
        async def send(self, b: StreamBatch) -> None:
            b.labels["edited"] = "yes"
            b.entries.clear()

    fanout = Fanout([Editor()])
    live = LiveDebugging()
    live.set_enabled(True)
    live.bind(lambda cid, tap: setattr(fanout, "tap", tap) is None)
    viewer = live.subscribe("c")
    await fanout.send(batch(2))
    seen = viewer.take(10)
    assert [s.entry.line for s in seen] == ["line 0", "line 1"]
    assert seen[0].labels == {"job": "x"}


async def test_disabled_refuses_and_turning_off_ends_every_watch() -> None:
    live = LiveDebugging()
    with pytest.raises(LiveDebuggingError, match="disabled"):
        live.subscribe("c")
    assert DISABLED_MESSAGE.startswith("the live debugging service is disabled")
    fanout = Fanout()
    live.bind(lambda cid, tap: cid == "c" and setattr(fanout, "tap", tap) is None)
    live.set_enabled(True)
    with pytest.raises(LiveDebuggingError, match="does not support"):
        live.subscribe("other")
    viewer = live.subscribe("c")
    assert fanout.tap is not None
    live.set_enabled(False)
    assert viewer.closed and fanout.tap is None
