"""Cancellation and shutdown of the push path (``Shipper`` over ``loki.write``).

Modelled on httpcore's cancellation tests: a cancelled caller, a close while Loki hangs
or while the writer sleeps in backoff, repeated closes, use after close, an outage with
a restart on the same port, and a final 4xx. Every entry must end either delivered or
counted, no task or client session may outlive ``aclose``, and nothing waits on a clock
where an event (FakeLoki's waits, delivery futures, a log record) can be awaited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from minilog.errors import ClosedError, WouldBlockError
from minilog.model import LogEntry
from minilog.shipper import Shipper, SyncShipper
from minilog.testing import FakeLoki

__all__: list[str] = []

T = TypeVar("T")

# Short batch age and backoff keep every test well under a second of wall time.
FAST: dict[str, Any] = {
    "batch_wait": 0.01,
    "min_backoff_period": 0.01,
    "max_backoff_period": 0.05,
}
# What a close may take beyond its drain timeout: cancelling, settling, closing sockets.
CLOSE_MARGIN = 0.5
_MINILOG_DIR = Path(__file__).resolve().parents[2] / "minilog"
# Server-side modules: FakeLoki's handler tasks are not the client's to clean up.
_SERVER_FILES = ("receiver.py", "testing.py", "_httpguard.py")


def metric_total(registry: CollectorRegistry, name: str, **match: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``match``."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(key) == value for key, value in match.items()
            ):
                total += sample.value
    return total


def sent(registry: CollectorRegistry) -> float:
    return metric_total(registry, "loki_write_sent_entries_total")


def dropped(registry: CollectorRegistry, reason: str | None = None) -> float:
    match = {} if reason is None else {"reason": reason}
    return metric_total(registry, "loki_write_dropped_entries_total", **match)


def client_tasks() -> list[asyncio.Task[object]]:
    """Unfinished tasks whose coroutine is minilog client code (not FakeLoki's)."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is None:
            continue
        path = Path(code.co_filename)
        if _MINILOG_DIR in path.parents and path.name not in _SERVER_FILES:
            found.append(task)
    return found


def open_sessions() -> set[int]:
    """Ids of aiohttp client sessions alive and not closed."""
    gc.collect()
    return {
        id(obj)
        for obj in gc.get_objects()
        if isinstance(obj, aiohttp.ClientSession) and not obj.closed
    }


class LogEvent(logging.Handler):
    """Sets ``event`` once ``times`` records containing ``needle`` were logged.

    The writer logs right before it sleeps in backoff, on the loop's thread: awaiting
    this event is awaiting "the writer is now in backoff", without polling.
    """

    def __init__(self, needle: str, times: int = 1) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.times = times
        self.count = 0
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.count += 1
            if self.count >= self.times:
                self.event.set()

    async def wait(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            await self.event.wait()


@contextmanager
def log_event(needle: str, times: int = 1) -> Iterator[LogEvent]:
    handler = LogEvent(needle, times)
    logger = logging.getLogger("minilog")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def futures(n: int) -> list[asyncio.Future[bool]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


async def outcomes(pending: list[asyncio.Future[bool]]) -> list[bool]:
    async with asyncio.timeout(5):
        return list(await asyncio.gather(*pending))


# -- a cancelled caller ---------------------------------------------------------------


async def test_cancelling_a_send_blocked_on_a_full_queue(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    shipper = Shipper(loki.url, queue_capacity=1, registry=registry, **FAST)
    first, second, third = futures(3)
    loki.faults.hang()
    await shipper.send({"job": "cancel"}, "first", on_delivery=first)
    # The first line is in flight and unanswered: the queue stays full.
    await loki.wait_for_requests(1)
    blocked = asyncio.create_task(
        shipper.send({"job": "cancel"}, "second", on_delivery=second)
    )
    done, _ = await asyncio.wait({blocked}, timeout=0.05)
    assert not done, "send() must wait while the queue is full"

    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    # The cancelled line never entered the queue: abandoned, not delivered.
    assert await asyncio.wait_for(second, 1) is False

    loki.faults.clear()
    assert await asyncio.wait_for(first, 5) is True
    # The cancellation left no stale waiter behind: the queue takes lines again.
    await shipper.send({"job": "cancel"}, "third", on_delivery=third)
    async with asyncio.timeout(5):
        await shipper.flush()
    assert await asyncio.wait_for(third, 1) is True
    assert loki.lines() == ["first", "third"]
    assert shipper.queued_bytes == 0
    await shipper.aclose()
    assert sent(registry) == 2
    assert dropped(registry) == 0


async def test_cancelling_many_blocked_senders_keeps_the_rest_flowing(
    loki: FakeLoki,
) -> None:
    shipper = Shipper(loki.url, queue_capacity=1, **FAST)
    loki.faults.hang()
    await shipper.send({"job": "many"}, "head")
    await loki.wait_for_requests(1)
    blocked = [
        asyncio.create_task(shipper.send({"job": "many"}, f"blocked {i}"))
        for i in range(10)
    ]
    survivor = asyncio.create_task(shipper.send({"job": "many"}, "survivor"))
    done, _ = await asyncio.wait({*blocked, survivor}, timeout=0.05)
    assert not done
    for task in blocked:
        task.cancel()
    results = await asyncio.gather(*blocked, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)

    loki.faults.clear()
    async with asyncio.timeout(5):
        await survivor
        await shipper.flush()
    assert loki.lines() == ["head", "survivor"]
    await shipper.aclose()


# -- closing while Loki hangs or while the writer backs off ---------------------------


async def test_close_while_a_push_hangs_returns_within_drain_timeout(
    loki: FakeLoki,
) -> None:
    registry = CollectorRegistry()
    sessions_before = open_sessions()
    shipper = Shipper(loki.url, batch_size=256, registry=registry, **FAST)

    early = futures(5)
    for i, future in enumerate(early):
        await shipper.send({"job": "early"}, f"early {i}", on_delivery=future)
    async with asyncio.timeout(5):
        await shipper.flush()

    loki.faults.hang()
    late = futures(40)
    for i, future in enumerate(late):
        stream = {"job": "late", "part": str(i % 3)}
        await shipper.send(stream, f"late {i:02d} " + "x" * 40, on_delivery=future)
    await loki.wait_for_requests(2)
    # The leak checks below can fail: right now there is a session and a send loop.
    assert len(open_sessions() - sessions_before) == 1
    assert client_tasks() != []

    drain_timeout = 0.3
    loop = asyncio.get_running_loop()
    started = loop.time()
    await shipper.aclose(drain_timeout=drain_timeout)
    elapsed = loop.time() - started
    # The loop's timers may fire a clock tick early: allow a hair below the timeout.
    assert drain_timeout - 0.05 <= elapsed < drain_timeout + CLOSE_MARGIN

    results = await outcomes(early + late)
    assert results == [True] * len(early) + [False] * len(late)
    # Every entry is accounted for exactly once: sent, or dropped at drain.
    assert sent(registry) == len(early)
    assert dropped(registry, "drain_timeout") == len(late)
    assert sent(registry) + dropped(registry) == len(early) + len(late)
    assert loki.entry_count == len(early)

    assert client_tasks() == []
    assert open_sessions() - sessions_before == set()


async def test_close_during_backoff_returns_promptly(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    # A backoff far longer than the test: close must not wait for it.
    shipper = Shipper(
        loki.url,
        batch_wait=0.01,
        min_backoff_period=30.0,
        max_backoff_period=60.0,
        registry=registry,
    )
    loki.faults.respond(503, "Ingester is shutting down")
    pending = futures(3)
    with log_event("retry in") as backing_off:
        for i, future in enumerate(pending):
            await shipper.send({"job": "backoff"}, f"line {i}", on_delivery=future)
        await backing_off.wait()

    loop = asyncio.get_running_loop()
    started = loop.time()
    await shipper.aclose(drain_timeout=0.2)
    assert loop.time() - started < 0.2 + CLOSE_MARGIN

    assert await outcomes(pending) == [False, False, False]
    assert dropped(registry, "drain_timeout") == 3
    assert sent(registry) == 0
    assert loki.requests.count == 1
    assert client_tasks() == []


async def test_close_with_zero_drain_timeout_abandons_at_once(
    loki: FakeLoki,
) -> None:
    registry = CollectorRegistry()
    shipper = Shipper(loki.url, registry=registry, **FAST)
    loki.faults.hang()
    pending = futures(4)
    for i, future in enumerate(pending):
        await shipper.send({"job": "zero"}, f"line {i}", on_delivery=future)
    await loki.wait_for_requests(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await shipper.aclose(drain_timeout=0)
    assert loop.time() - started < CLOSE_MARGIN
    assert await outcomes(pending) == [False] * 4
    assert dropped(registry, "drain_timeout") == 4
    assert client_tasks() == []


async def test_close_wakes_senders_blocked_on_a_full_queue(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    shipper = Shipper(loki.url, queue_capacity=1, registry=registry, **FAST)
    loki.faults.hang()
    head = futures(1)[0]
    await shipper.send({"job": "blocked"}, "head", on_delivery=head)
    await loki.wait_for_requests(1)
    waiting = futures(3)
    blocked = [
        asyncio.create_task(
            shipper.send({"job": "blocked"}, f"waiting {i}", on_delivery=future)
        )
        for i, future in enumerate(waiting)
    ]
    done, _ = await asyncio.wait(blocked, timeout=0.05)
    assert not done

    await shipper.aclose(drain_timeout=0.1)
    results = await asyncio.gather(*blocked, return_exceptions=True)
    assert all(isinstance(r, ClosedError) for r in results), results
    assert await outcomes([head, *waiting]) == [False] * 4
    # Only the queued line is counted: the blocked ones never entered the queue.
    assert dropped(registry, "drain_timeout") == 1
    assert client_tasks() == []


async def test_cancelling_the_caller_of_aclose_does_not_cut_the_drain_short(
    loki: FakeLoki,
) -> None:
    registry = CollectorRegistry()
    shipper = Shipper(loki.url, registry=registry, **FAST)
    loki.faults.hang()
    pending = futures(3)
    for i, future in enumerate(pending):
        await shipper.send({"job": "cancel-close"}, f"line {i}", on_delivery=future)
    await loki.wait_for_requests(1)

    closing = asyncio.create_task(shipper.aclose(drain_timeout=5.0))
    done, _ = await asyncio.wait({closing}, timeout=0.05)
    assert not done  # draining: the push still hangs
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert shipper.closed
    assert not any(future.done() for future in pending)

    # The drain goes on without its caller: Loki recovers and everything is sent.
    loki.faults.clear()
    async with asyncio.timeout(5):
        await shipper.aclose()
    assert await outcomes(pending) == [True, True, True]
    assert loki.lines() == ["line 0", "line 1", "line 2"]
    assert sent(registry) == 3
    assert dropped(registry) == 0
    assert client_tasks() == []


async def test_cancelling_a_flush_leaves_the_queue_intact(loki: FakeLoki) -> None:
    shipper = Shipper(loki.url, **FAST)
    loki.faults.hang()
    pending = futures(2)
    for i, future in enumerate(pending):
        await shipper.send({"job": "cancel-flush"}, f"line {i}", on_delivery=future)
    flushing = asyncio.create_task(shipper.flush())
    await loki.wait_for_requests(1)
    assert not flushing.done()
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing

    loki.faults.clear()
    async with asyncio.timeout(5):
        await shipper.flush()
    assert await outcomes(pending) == [True, True]
    assert loki.lines() == ["line 0", "line 1"]
    await shipper.aclose()
    assert client_tasks() == []


# -- aclose() twice, and use after close ----------------------------------------------


async def test_aclose_is_idempotent_and_concurrent_closes_share_one_drain(
    loki: FakeLoki,
) -> None:
    registry = CollectorRegistry()
    shipper = Shipper(loki.url, registry=registry, **FAST)
    calls: list[bool] = []
    loki.faults.hang()
    await shipper.send_batch(
        {"job": "twice"},
        [LogEntry(1_700_000_000_000_000_000 + i, f"line {i}") for i in range(5)],
        on_delivery=calls.append,
    )
    await loki.wait_for_requests(1)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(shipper.aclose(0.2), shipper.aclose(0.2))
    assert loop.time() - started < 0.2 + CLOSE_MARGIN
    assert shipper.closed

    started = loop.time()
    await shipper.aclose()  # already closed: returns at once, counts nothing twice
    assert loop.time() - started < 0.1
    assert calls == [False]
    assert dropped(registry, "drain_timeout") == 5
    assert client_tasks() == []


async def test_closing_an_unused_shipper_is_immediate_and_clean() -> None:
    shipper = Shipper("http://127.0.0.1:9/loki/api/v1/push", **FAST)
    await shipper.aclose()
    await shipper.aclose()
    assert shipper.closed
    assert client_tasks() == []


async def test_use_after_close_raises_closed_error(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    shipper = Shipper(loki.url, registry=registry, **FAST)
    await shipper.send({"job": "closed"}, "before")
    await shipper.aclose()
    assert loki.lines() == ["before"]

    after = futures(1)[0]
    with pytest.raises(ClosedError):
        await shipper.send({"job": "closed"}, "after", on_delivery=after)
    assert await asyncio.wait_for(after, 1) is False
    with pytest.raises(ClosedError):
        shipper.send_nowait({"job": "closed"}, "after")
    with pytest.raises(ClosedError):
        await shipper.send_batch({"job": "closed"}, [LogEntry(1, "after")])
    with pytest.raises(ClosedError):
        async with shipper:
            pass
    await shipper.flush()  # nothing queued: returns instead of waiting forever
    assert loki.lines() == ["before"]
    assert sent(registry) == 1


async def test_send_nowait_after_close_settles_its_delivery(loki: FakeLoki) -> None:
    shipper = Shipper(loki.url, **FAST)
    await shipper.aclose()
    future = futures(1)[0]
    with pytest.raises(ClosedError):
        shipper.send_nowait({"job": "closed"}, "after", on_delivery=future)
    assert await asyncio.wait_for(future, 0.5) is False


async def test_send_nowait_on_a_full_queue_settles_its_delivery(
    loki: FakeLoki,
) -> None:
    shipper = Shipper(loki.url, queue_capacity=1, **FAST)
    loki.faults.hang()
    await shipper.send({"job": "full"}, "fills the queue")
    future = futures(1)[0]
    try:
        with pytest.raises(WouldBlockError):
            shipper.send_nowait({"job": "full"}, "refused", on_delivery=future)
        assert await asyncio.wait_for(future, 0.5) is False
    finally:
        await shipper.aclose(drain_timeout=0)


class ThreadedFakeLoki:
    """A FakeLoki on its own loop and thread, for a test thread that blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.loki = FakeLoki()
        self.run(self.loki.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def call(self, function: Callable[[], T]) -> T:
        async def call() -> T:
            return function()

        return self.run(call())

    def close(self) -> None:
        self.run(self.loki.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def threaded_loki() -> Iterator[ThreadedFakeLoki]:
    server = ThreadedFakeLoki()
    try:
        yield server
    finally:
        server.close()


def test_sync_shipper_close_while_a_push_hangs(
    threaded_loki: ThreadedFakeLoki,
) -> None:
    registry = CollectorRegistry()
    threads_before = set(threading.enumerate())
    shipper = SyncShipper(threaded_loki.loki.url, registry=registry, **FAST)
    assert set(threading.enumerate()) - threads_before  # its loop thread runs
    threaded_loki.call(threaded_loki.loki.faults.hang)
    pending: list[concurrent.futures.Future[bool]] = [
        concurrent.futures.Future() for _ in range(20)
    ]
    for i, future in enumerate(pending):
        shipper.send({"job": "sync"}, f"line {i}", on_delivery=future)
    threaded_loki.run(threaded_loki.loki.wait_for_requests(1))

    started = time.monotonic()
    shipper.close(timeout=0.3)
    assert time.monotonic() - started < 0.3 + CLOSE_MARGIN
    assert [future.result(timeout=1) for future in pending] == [False] * 20
    assert dropped(registry, "drain_timeout") == 20
    assert sent(registry) == 0
    assert set(threading.enumerate()) - threads_before == set()
    shipper.close()  # idempotent
    with pytest.raises(ClosedError):
        shipper.send({"job": "sync"}, "after close")


# -- outages and final errors ---------------------------------------------------------


async def test_loki_down_then_restarted_on_the_same_port_loses_nothing() -> None:
    loki = FakeLoki()
    await loki.start()
    port = loki.port
    await loki.aclose()

    registry = CollectorRegistry()
    # max_backoff_retries=0 retries forever: an outage must not cost a line.
    shipper = Shipper(
        loki.url,
        batch_size=512,
        max_backoff_retries=0,
        registry=registry,
        **FAST,
    )
    expected: dict[str, list[str]] = {f"s{s}": [] for s in range(3)}

    async def send_round(tag: str, count: int) -> None:
        for i in range(count):
            for stream, lines in expected.items():
                line = f"{stream} {tag} {i:04d}"
                lines.append(line)
                await shipper.send({"job": "outage", "stream": stream}, line)

    try:
        with log_event("retry in", times=3) as retried:
            await send_round("down", 150)
            await retried.wait()  # the writer has met the outage several times
            await loki.start()
            assert loki.port == port
            await send_round("up", 50)
            async with asyncio.timeout(10):
                await shipper.flush()
        await shipper.aclose()
        total = sum(len(lines) for lines in expected.values())
        assert loki.entry_count == total
        got = {
            stream: [
                entry.line
                for labels, entry in loki.entries
                if labels["stream"] == stream
            ]
            for stream in expected
        }
        assert got == expected  # zero loss, no duplicates, order kept per stream
        for stream in expected:
            stamps = [
                entry.timestamp_ns
                for labels, entry in loki.entries
                if labels["stream"] == stream
            ]
            assert stamps == sorted(stamps)
        assert sent(registry) == total
        assert dropped(registry) == 0
        assert metric_total(registry, "loki_write_batch_retries_total") >= 3
    finally:
        await shipper.aclose()
        await loki.aclose()


async def test_a_400_is_logged_once_with_status_and_body_and_never_retried(
    loki: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="minilog")
    registry = CollectorRegistry()
    shipper = Shipper(loki.url, registry=registry, **FAST)
    body = (
        "entry for stream '{job=\"old\"}' has timestamp too old: 2001-01-01T00:00:00Z"
    )
    loki.faults.respond(400, body)  # every request, so a retry would be refused too
    settled = futures(1)[0]
    await shipper.send_batch(
        {"job": "old"},
        [LogEntry(978_307_200_000_000_000 + i, f"old {i}") for i in range(5)],
        on_delivery=settled,
    )
    async with asyncio.timeout(5):
        await shipper.flush()

    # A final drop settles the entries: the source may move past them.
    assert await asyncio.wait_for(settled, 1) is True
    assert loki.requests.count == 1
    assert loki.requests.statuses[400] == 1
    assert loki.entry_count == 0
    assert dropped(registry, "ingester_error") == 5
    assert metric_total(registry, "loki_write_batch_retries_total") == 0

    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1, [r.getMessage() for r in problems]
    message = problems[0].getMessage()
    assert "400" in message
    assert body in message

    # The endpoint keeps working after a final error.
    loki.faults.clear()
    await shipper.send({"job": "new"}, "fresh")
    async with asyncio.timeout(5):
        await shipper.flush()
    await shipper.aclose()
    assert loki.lines() == ["fresh"]
    assert loki.requests.count == 2
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_sync_send_nowait_after_close_settles_its_delivery() -> None:
    shipper = SyncShipper("http://127.0.0.1:9/loki/api/v1/push", **FAST)
    shipper.close(timeout=5)
    future: concurrent.futures.Future[bool] = concurrent.futures.Future()
    with pytest.raises(ClosedError):
        shipper.send_nowait({"job": "closed"}, "after", on_delivery=future)
    assert future.result(timeout=1) is False
