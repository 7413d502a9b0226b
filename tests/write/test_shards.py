"""``queue_config``'s ``min_shards`` and ``block_on_overflow`` (loki.write).

``min_shards`` send loops per endpoint, each with a queue of ``capacity`` and one
request in flight; a stream always goes to the same one, so its entries leave in
order. ``block_on_overflow = false`` drops (``queue_is_full``) what a full queue cannot
take where the sender would otherwise wait. Transports here are fakes whose pushes
wait for the test, so "in flight" is a state the test holds, not a timing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable

import aiohttp
import pytest
from loki_helpers import wait_for_entries
from prometheus_client import CollectorRegistry

from minilog.components import COMPONENT_TYPES
from minilog.components.base import STABLE
from minilog.config import Scope, parse
from minilog.config.ast import Block
from minilog.errors import ConfigError, PushConnectionError, WouldBlockError
from minilog.loki.wire import decode_push_request, decompress
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.write import EndpointConfig, Writer

__all__: list[str] = []

URL = "http://loki.invalid/loki/api/v1/push"
HOST = "loki.invalid"
APPS = [f"app{i}" for i in range(8)]


def config(**options: object) -> EndpointConfig:
    options.setdefault("batch_wait", 3600.0)
    options.setdefault("batch_linger", 0.001)
    options.setdefault("min_backoff_period", 0.001)
    options.setdefault("max_backoff_period", 0.005)
    return EndpointConfig(URL, **options)  # type: ignore[arg-type]


def line(
    app: str, ts: int, text: str = "x", delivery: Delivery | None = None
) -> StreamBatch:
    return StreamBatch({"app": app}, [LogEntry(ts, text)], delivery)


class GatedTransport:
    """A ``PushTransport`` whose pushes wait until ``gate`` opens; it records what
    each push carried, and while ``failing`` pushes fail at once (connection refused).
    Every change is notified on ``changed`` (shared by the shards)."""

    def __init__(self, gate: asyncio.Event, changed: asyncio.Condition) -> None:
        self.gate = gate
        self.changed = changed
        self.pushed: list[list[tuple[str, list[LogEntry]]]] = []
        self.inflight = 0
        self.failures = 0
        self.failing = False
        #: Failing pushes beyond this many wait (``stalled``) until it rises.
        self.failure_limit = math.inf
        self.stalled = 0

    async def push(self, body: bytes, *, tenant: str = "") -> int:
        async with self.changed:
            if self.failing and self.failures >= self.failure_limit:
                self.stalled += 1
                self.changed.notify_all()
                await self.changed.wait_for(
                    lambda: not self.failing or self.failures < self.failure_limit
                )
                self.stalled -= 1
            if self.failing:
                self.failures += 1
                self.changed.notify_all()
                raise PushConnectionError("connection refused")
            self.inflight += 1
            self.changed.notify_all()
        try:
            await self.gate.wait()
        finally:
            self.inflight -= 1
        self.pushed.append(decode_push_request(decompress(body)))
        return 204

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109 - the protocol's
        return not self.failing

    async def aclose(self) -> None:
        pass

    def streams(self) -> set[str]:
        return {key for push in self.pushed for key, _ in push}


class Shards:
    """The transport factory: one ``GatedTransport`` per shard, in creation order."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.changed = asyncio.Condition()
        self.transports: list[GatedTransport] = []

    def __call__(self, config: EndpointConfig) -> GatedTransport:
        transport = GatedTransport(self.gate, self.changed)
        self.transports.append(transport)
        return transport

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(predicate)

    def delivered(self) -> int:
        return sum(
            len(entries)
            for t in self.transports
            for push in t.pushed
            for _, entries in push
        )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_each_shard_has_a_request_in_flight_and_a_stream_stays_in_one() -> None:
    shards = Shards()
    writer = Writer([config(min_shards=2)], transport=shards)
    try:
        for app in APPS:
            await writer.send(line(app, 1))
        # One batch per shard left after its linger; both wait for Loki at once.
        await shards.wait_until(lambda: sum(t.inflight for t in shards.transports) == 2)
        for ts in range(2, 40):
            for app in APPS:
                await writer.send(line(app, ts))
        shards.gate.set()
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    first, second = shards.transports
    assert first.streams() and second.streams()
    assert first.streams().isdisjoint(second.streams())
    for transport in shards.transports:
        for key in transport.streams():
            stamps = [
                e.timestamp_ns
                for push in transport.pushed
                for k, entries in push
                if k == key
                for e in entries
            ]
            assert stamps == list(range(1, 40)), key


async def test_each_shard_has_its_own_queue_of_capacity() -> None:
    registry = CollectorRegistry()
    shards = Shards()
    capacity = 4096
    writer = Writer(
        [config(min_shards=2, queue_capacity=capacity)],
        transport=shards,
        registry=registry,
    )
    try:
        # One stream fills its shard's queue; streams of the other shard still go in.
        for ts in range(1, 1000):
            try:
                writer.send_nowait(line(APPS[0], ts, "y" * 200))
            except WouldBlockError:
                break
        else:
            pytest.fail("the queue never filled")
        accepted = []
        for app in APPS[1:]:
            try:
                writer.send_nowait(line(app, 1, "y" * 200))
            except WouldBlockError:
                continue
            accepted.append(app)
        assert 0 < len(accepted) < len(APPS) - 1
        assert (
            sample(registry, "minilog_write_queue_capacity_bytes", host=HOST)
            == 2 * capacity
        )
        state = writer.endpoint_states()[0]
        assert state["shards"] == 2
        assert state["queued_bytes"] == writer.queued_bytes()[state["name"]] > capacity
        shards.gate.set()
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)


class Settled:
    def __init__(self) -> None:
        self.outcomes: list[bool] = []

    def delivery(self) -> Delivery:
        return Delivery(self.outcomes.append)


@pytest.mark.parametrize("shards_n", [1, 2])
async def test_without_block_on_overflow_a_full_queue_drops_and_settles(
    shards_n: int,
) -> None:
    registry = CollectorRegistry()
    shards = Shards()
    settled = Settled()
    writer = Writer(
        [config(min_shards=shards_n, queue_capacity=4096, block_on_overflow=False)],
        transport=shards,
        registry=registry,
    )
    sent = 0
    try:
        async with asyncio.timeout(5):  # never waits for room: a wait is a failure
            for ts in range(1, 60):
                for app in APPS:
                    await writer.send(line(app, ts, "z" * 200, settled.delivery()))
                    sent += 1
        dropped = sample(
            registry,
            "loki_write_dropped_entries_total",
            host=HOST,
            tenant="",
            reason="queue_is_full",
        )
        assert dropped > 0
        # Dropped entries settle as done (the source moves on), none abandoned.
        assert settled.outcomes == [True] * int(dropped)
        shards.gate.set()
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    assert shards.delivered() + dropped == sent
    assert settled.outcomes == [True] * sent


async def test_an_outage_seen_by_every_shard_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shards = Shards()
    shards.gate.set()
    # Each line fills a batch: every shard sends at once, none waits for a linger.
    writer = Writer([config(min_shards=3, batch_size=64)], transport=shards)
    caplog.set_level(logging.INFO, logger="minilog.write")
    for transport in shards.transports:
        transport.failing = True
    try:
        for app in APPS:
            await writer.send(line(app, 1, "x" * 100))
        # Every shard has a batch, and has failed to send it twice.
        await shards.wait_until(lambda: all(t.failures >= 2 for t in shards.transports))
        assert writer.endpoint_states()[0]["down_since_s"] is not None
        for transport in shards.transports:
            transport.failing = False
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1
    delivered = sorted(
        key for t in shards.transports for push in t.pushed for key, _ in push
    )
    assert delivered == sorted(f'{{app="{app}"}}' for app in APPS)
    assert writer.endpoint_states()[0]["down_since_s"] is None


async def test_max_backoff_retries_counts_each_shards_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As in Alloy, where the limit is per batch: 3 shards failing twice each is 6
    failed attempts, yet none has failed 3 in a row."""
    shards = Shards()
    shards.gate.set()
    writer = Writer(
        [config(min_shards=3, batch_size=64, max_backoff_retries=3)], transport=shards
    )
    caplog.set_level(logging.INFO, logger="minilog.write")
    for transport in shards.transports:
        transport.failing = True
        transport.failure_limit = 2
    try:
        for app in APPS:
            await writer.send(line(app, 1, "x" * 100))
        # Each shard failed twice and came back for a third try.
        await shards.wait_until(lambda: all(t.stalled for t in shards.transports))
        assert not writer.endpoint_states()[0]["failing"]
        first = shards.transports[0]
        async with shards.changed:
            first.failure_limit = 3
            shards.changed.notify_all()
        await shards.wait_until(lambda: first.failures == 3 and first.stalled == 1)
        assert writer.endpoint_states()[0]["failing"]
        async with shards.changed:
            for transport in shards.transports:
                transport.failing = False
            shards.changed.notify_all()
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failing: 3 attempts in a row" in m for m in messages) == 1
    assert not writer.endpoint_states()[0]["failing"]
    assert set().union(*(t.streams() for t in shards.transports)) == {
        f'{{app="{app}"}}' for app in APPS
    }


# ------------------------------------------------------------------ the arguments


def endpoint_of(queue: str, stability: str = STABLE) -> EndpointConfig:
    stmt = parse(
        'loki.write "w" {\n  endpoint {\n    url = "http://127.0.0.1:1/p"\n'
        f"    queue_config {{\n{queue}\n    }}\n  }}\n}}",
        "test.alloy",
    ).body[0]
    assert isinstance(stmt, Block)
    cls = COMPONENT_TYPES["loki.write"]
    args = cls.parse_args(cls.decode(stmt, Scope()), stmt, stability_level=stability)
    (endpoint,) = args.endpoints
    assert isinstance(endpoint, EndpointConfig)
    return endpoint


def test_queue_config_takes_min_shards_and_block_on_overflow() -> None:
    endpoint = endpoint_of(
        "      min_shards = 4\n      block_on_overflow = false", "experimental"
    )
    assert (endpoint.min_shards, endpoint.block_on_overflow) == (4, False)
    # Alloy's defaults need no flag; anything else is experimental there too.
    default = endpoint_of("      min_shards = 1\n      block_on_overflow = true")
    assert (default.min_shards, default.block_on_overflow) == (1, True)
    with pytest.raises(ConfigError, match=r"stability\.level flag to be experimental"):
        endpoint_of("      min_shards = 2")
    # Below 1 is one shard, as Alloy's max(n, 1).
    assert endpoint_of("      min_shards = 0", "experimental").shards == 1


# ------------------------------------------------------------------ a real Loki


async def test_two_shards_deliver_every_stream_in_order_to_a_real_loki(
    loki_base: str,
) -> None:
    run = uuid.uuid4().hex[:12]
    start = time.time_ns()
    streams, per_stream = 6, 300
    writer = Writer(
        [
            EndpointConfig(
                loki_base + "/loki/api/v1/push",
                min_shards=2,
                batch_size=4096,  # many small requests, both shards busy
                batch_wait=0.05,
            )
        ]
    )
    async with writer:
        for i in range(per_stream):
            for s in range(streams):
                await writer.send(
                    StreamBatch(
                        {"shards_run": run, "stream_no": str(s)},
                        [LogEntry(start + i, f"{s} {i:04d} " + "p" * 40)],
                    )
                )
        await writer.flush()
    async with aiohttp.ClientSession() as session:
        found = await wait_for_entries(
            session,
            loki_base,
            f'{{shards_run="{run}"}}',
            streams * per_stream,
            start_ns=start - 1,
            end_ns=time.time_ns() + 60_000_000_000,
            limit=5000,
        )
    by_stream = {s.labels["stream_no"]: [v.line for v in s.entries] for s in found}
    assert sorted(by_stream) == [str(s) for s in range(streams)]
    for s, lines in by_stream.items():
        assert lines == [f"{s} {i:04d} " + "p" * 40 for i in range(per_stream)]
