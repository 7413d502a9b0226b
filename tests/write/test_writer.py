"""Writer (loki.write): batching, retries, drops, backpressure, deliveries, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence

import pytest
from agent_helpers import free_port
from prometheus_client import CollectorRegistry

from minilog.errors import (
    ClosedError,
    ConfigError,
    PushError,
    ServerError,
    WouldBlockError,
)
from minilog.loki.wire import decode_push_request, decompress, encode_push_request
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.testing import FakeLoki
from minilog.write import (
    DELIVERY_OVERHEAD_BYTES,
    DROP_REASONS,
    ENTRY_OVERHEAD_BYTES,
    EndpointConfig,
    Writer,
)


def config(url: str, **options: object) -> EndpointConfig:
    options.setdefault("batch_wait", 0.02)
    options.setdefault("min_backoff_period", 0.001)
    options.setdefault("max_backoff_period", 0.005)
    return EndpointConfig(url, **options)  # type: ignore[arg-type]


def batch(
    labels: dict[str, str], *lines: str, delivery: Delivery | None = None
) -> StreamBatch:
    return StreamBatch(
        labels, [LogEntry(i + 1, line) for i, line in enumerate(lines)], delivery
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_entries_reach_loki_grouped_by_stream(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    async with Writer(
        [config(loki.push_url, batch_wait=10.0)], registry=registry
    ) as writer:
        await writer.send(batch({"app": "a", "__meta": "x"}, "one", "two"))
        await writer.send(batch({"app": "b"}, "three"))
        await writer.flush()
        assert len(loki.pushes) == 1  # both streams in one request
    _, streams = loki.pushes[0]
    assert dict(streams) == {
        '{app="a"}': [LogEntry(1, "one"), LogEntry(2, "two")],
        '{app="b"}': [LogEntry(1, "three")],
    }
    host = f"127.0.0.1:{loki.port}"
    assert sample(registry, "loki_write_sent_entries_total", host=host, tenant="") == 3
    assert sample(registry, "loki_write_sent_bytes_total", host=host, tenant="") > 0
    assert sample(registry, "loki_write_encoded_bytes_total", host=host) > 0
    assert (
        sample(
            registry,
            "loki_write_request_duration_seconds_count",
            host=host,
            tenant="",
            status_code="204",
        )
        == 1
    )


async def test_open_batch_is_sent_after_batch_wait(loki: FakeLoki) -> None:
    async with Writer([config(loki.push_url, batch_wait=0.05)]) as writer:
        await writer.send(batch({"app": "a"}, "late"))
        assert loki.pushes == []  # held for batch_wait, not sent per line
        await loki.wait_for_entries(1)


async def test_full_batch_is_sent_without_waiting(loki: FakeLoki) -> None:
    async with Writer(
        [config(loki.push_url, batch_wait=30.0, batch_size=10)]
    ) as writer:
        await writer.send(batch({"app": "a"}, "0123456789", "next"))
        await loki.wait_for_entries(1, timeout=2.0)
        assert [e.line for _, e in loki.entries] == ["0123456789"]


async def test_external_labels_merge_and_entry_labels_win(loki: FakeLoki) -> None:
    writer = Writer(
        [config(loki.push_url)], external_labels={"cluster": "c1", "app": "ext"}
    )
    await writer.send(batch({"app": "mine"}, "x"))
    await writer.aclose()
    assert list(loki.streams()) == ['{app="mine", cluster="c1"}']


async def test_tenant_label_routes_to_x_scope_orgid(loki: FakeLoki) -> None:
    writer = Writer([config(loki.push_url, tenant_id="default")])
    await writer.send(batch({"app": "a"}, "x"))
    await writer.send(batch({"app": "a", "__tenant_id__": "other"}, "y"))
    await writer.aclose()
    tenants = sorted(headers["X-Scope-OrgID"] for headers, _ in loki.pushes)
    assert tenants == ["default", "other"]


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retriable_statuses_are_retried(loki: FakeLoki, status: int) -> None:
    registry = CollectorRegistry()
    loki.faults.respond(status, "busy", times=2)
    results: list[bool] = []
    async with Writer([config(loki.push_url)], registry=registry) as writer:
        await writer.send(batch({"app": "a"}, "x", delivery=Delivery(results.append)))
        await loki.wait_for_entries(1)
        await writer.flush()
    assert len(loki.pushes) == 3
    assert results == [True]
    host = f"127.0.0.1:{loki.port}"
    assert sample(registry, "loki_write_batch_retries_total", host=host, tenant="") == 2
    assert sample(registry, "loki_write_sent_entries_total", host=host, tenant="") == 1


async def test_connection_refused_is_retried_until_loki_is_up() -> None:
    port = free_port()
    loki = FakeLoki(port=port)
    url = f"http://127.0.0.1:{port}/loki/api/v1/push"
    registry = CollectorRegistry()
    writer = Writer([config(url, max_backoff_retries=0)], registry=registry)
    try:
        await writer.send(batch({"app": "a"}, "survives"))
        host = f"127.0.0.1:{port}"
        retries = "loki_write_batch_retries_total"
        for _ in range(1000):  # no event to await: poll the retry counter
            if sample(registry, retries, host=host, tenant="") >= 2:
                break
            await asyncio.sleep(0.005)
        assert sample(registry, retries, host=host, tenant="") >= 2
        await loki.start()
        await loki.wait_for_entries(1)
        assert (
            sample(
                registry,
                "loki_write_request_duration_seconds_count",
                host=host,
                tenant="",
                status_code="-1",
            )
            >= 2
        )
    finally:
        await writer.aclose(drain_timeout=1)
        await loki.aclose()
    assert [e.line for _, e in loki.entries] == ["survives"]


async def test_client_error_is_not_retried_and_logged_once(
    loki: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    loki.faults.respond(400, "entry too far behind\nmore detail", times=1)
    results: list[bool] = []
    with caplog.at_level(logging.WARNING, logger="minilog.write"):
        async with Writer([config(loki.push_url)], registry=registry) as writer:
            await writer.send(
                batch({"a": "1"}, "x", "yy", delivery=Delivery(results.append))
            )
            await writer.flush()
    assert len(loki.pushes) == 1
    assert results == [True]  # finally dropped settles the delivery
    records = [r for r in caplog.records if r.name == "minilog.write"]
    assert len(records) == 1
    assert "400" in records[0].getMessage()
    assert "entry too far behind" in records[0].getMessage()
    host = f"127.0.0.1:{loki.port}"
    labels = {"host": host, "tenant": "", "reason": "ingester_error"}
    assert sample(registry, "loki_write_dropped_entries_total", **labels) == 2
    assert sample(registry, "loki_write_dropped_bytes_total", **labels) > 0
    assert sample(registry, "loki_write_batch_retries_total", host=host, tenant="") == 0
    # every reason is pre-initialised at 0 for a tenant seen
    assert (
        registry.get_sample_value(
            "loki_write_dropped_entries_total", {**labels, "reason": "queue_is_full"}
        )
        == 0
    )


async def test_429_is_dropped_when_retry_on_http_429_is_off(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    loki.faults.respond(429, "slow down", times=1)
    async with Writer(
        [config(loki.push_url, retry_on_http_429=False)], registry=registry
    ) as writer:
        await writer.send(batch({"a": "1"}, "x"))
        await writer.flush()
    assert len(loki.pushes) == 1
    labels = {"host": f"127.0.0.1:{loki.port}", "tenant": "", "reason": "rate_limited"}
    assert sample(registry, "loki_write_dropped_entries_total", **labels) == 1


async def test_an_outage_past_max_backoff_retries_drops_nothing(
    loki: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries used up on 5xx: the endpoint is reported failing, the batch is kept and
    delivered once Loki accepts it; its delivery settles only then. (Until issue 16
    the batch was dropped after ``max_backoff_retries`` attempts, as Alloy does.)"""
    registry = CollectorRegistry()
    loki.faults.respond(500, "down", times=10)
    settled: list[tuple[bool, int]] = []
    host = f"127.0.0.1:{loki.port}"
    failing: list[float] = []

    def on_delivery(ok: bool) -> None:
        settled.append((ok, len(loki.entries)))
        failing.append(sample(registry, "minilog_write_endpoint_failing", host=host))

    with caplog.at_level(logging.DEBUG, logger="minilog.write"):
        async with Writer(
            [config(loki.push_url, max_backoff_retries=3)], registry=registry
        ) as writer:
            await writer.send(batch({"a": "1"}, "x", delivery=Delivery(on_delivery)))
            await writer.flush()
    assert len(loki.pushes) == 11  # ten 500s, then accepted
    assert settled == [(True, 1)]  # settled once Loki held the entry, not before
    assert failing == [0.0]  # the success ended the failing state
    assert (
        sample(registry, "loki_write_batch_retries_total", host=host, tenant="") == 10
    )
    assert sample(registry, "loki_write_sent_entries_total", host=host, tenant="") == 1
    assert (
        sum(
            sample(
                registry,
                "loki_write_dropped_entries_total",
                host=host,
                tenant="",
                reason=r,
            )
            for r in DROP_REASONS
        )
        == 0
    )
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    errors = [m for lvl, m in levels if lvl == logging.ERROR]
    warnings = [m for lvl, m in levels if lvl == logging.WARNING]
    assert len(errors) == 1 and "max_backoff_retries = 3" in errors[0]
    assert "not dropped" in errors[0]
    assert len(warnings) == 1  # the outage's start; each retry is debug
    assert not any("dropping" in m for _, m in levels)
    assert any("answers again" in m for lvl, m in levels if lvl == logging.INFO)


async def test_send_waits_while_queue_is_full_and_nowait_raises(loki: FakeLoki) -> None:
    FULL = 2 * (100 + ENTRY_OVERHEAD_BYTES)
    registry = CollectorRegistry()
    loki.faults.hang()  # Loki hangs
    writer = Writer(
        [config(loki.push_url, batch_size=100, queue_capacity=FULL, batch_wait=0.01)],
        registry=registry,
    )
    try:
        for _ in range(2):
            # One batch in flight and the next one: neither is compacted, so the
            # queue stays full.
            await writer.send(batch({"a": "1"}, os.urandom(50).hex()))
        await loki.wait_for_requests(1)
        blocked = asyncio.create_task(writer.send(batch({"a": "1"}, "waits")))
        await asyncio.sleep(0.05)  # give it every chance to (wrongly) complete
        assert not blocked.done()
        with pytest.raises(WouldBlockError):
            writer.send_nowait(batch({"a": "1"}, "dropped", "too"))
        labels = {
            "host": f"127.0.0.1:{loki.port}",
            "tenant": "",
            "reason": "queue_is_full",
        }
        assert sample(registry, "loki_write_dropped_entries_total", **labels) == 2
        assert max(writer.queued_bytes().values()) <= FULL
        loki.faults.clear()
        await asyncio.wait_for(blocked, 5)
        await writer.flush()
    finally:
        await writer.aclose()
    assert [e.line for _, e in loki.entries][-1] == "waits"
    assert len(loki.entries) == 3


async def test_delivery_callback_fires_only_after_loki_accepted(loki: FakeLoki) -> None:
    loki.faults.hang()
    done = asyncio.Event()
    results: list[bool] = []

    def on_delivery(ok: bool) -> None:
        results.append(ok)
        done.set()

    async with Writer([config(loki.push_url)]) as writer:
        await writer.send(batch({"a": "1"}, "x", delivery=Delivery(on_delivery)))
        await loki.wait_for_requests(1)
        assert results == []
        loki.faults.clear()
        await asyncio.wait_for(done.wait(), 5)
    assert results == [True]


async def test_close_abandons_what_cannot_be_sent_in_time(loki: FakeLoki) -> None:
    registry = CollectorRegistry()
    loki.faults.hang()
    results: list[bool] = []
    writer = Writer([config(loki.push_url)], registry=registry)
    await writer.send(batch({"a": "1"}, "stuck", delivery=Delivery(results.append)))
    await loki.wait_for_requests(1)
    await writer.aclose(drain_timeout=0.05)
    await writer.aclose()  # idempotent
    await asyncio.wait_for(writer.flush(), 1)  # nothing left: returns at once
    assert results == [False]
    labels = {"host": f"127.0.0.1:{loki.port}", "tenant": "", "reason": "drain_timeout"}
    assert sample(registry, "loki_write_dropped_entries_total", **labels) == 1
    assert writer.queued_bytes() == {writer_name(writer): 0}
    with pytest.raises(ClosedError):
        await writer.send(batch({"a": "1"}, "late"))


def writer_name(writer: Writer) -> str:
    (name,) = writer.queued_bytes()
    return name


async def test_close_drains_open_batches_without_waiting_batch_wait(
    loki: FakeLoki,
) -> None:
    writer = Writer([config(loki.push_url, batch_wait=60.0)])
    for i in range(5):
        await writer.send(batch({"n": str(i % 2)}, f"line {i}"))
    async with asyncio.timeout(5):
        await writer.aclose()
    assert sorted(e.line for _, e in loki.entries) == [f"line {i}" for i in range(5)]


async def test_send_after_close_abandons_the_delivery(loki: FakeLoki) -> None:
    writer = Writer([config(loki.push_url)])
    await writer.aclose()
    results: list[bool] = []
    with pytest.raises(ClosedError):
        await writer.send(batch({"a": "1"}, "x", delivery=Delivery(results.append)))
    assert results == [False]  # send owns the reference whatever happens
    nowait = Delivery(results.append)
    with pytest.raises(ClosedError):
        writer.send_nowait(batch({"a": "1"}, "x", delivery=nowait))
    assert nowait.pending == 1  # send_nowait hands it back when it queued nothing


async def test_blocked_sender_is_released_with_closed_error_at_close(
    loki: FakeLoki,
) -> None:
    loki.faults.hang()
    writer = Writer([config(loki.push_url, batch_size=10, queue_capacity=10)])
    await writer.send(batch({"a": "1"}, "0123456789"))
    results: list[bool] = []
    blocked = asyncio.create_task(
        writer.send(batch({"a": "1"}, "x", delivery=Delivery(results.append)))
    )
    await loki.wait_for_requests(1)
    assert not blocked.done()
    await writer.aclose(drain_timeout=0.01)
    with pytest.raises(ClosedError):
        await blocked
    assert results == [False]


async def test_a_dead_endpoint_does_not_stop_a_live_one(loki: FakeLoki) -> None:
    dead = f"http://127.0.0.1:{free_port()}/loki/api/v1/push"
    results: list[bool] = []
    writer = Writer(
        [
            config(dead, name="dead", max_backoff_retries=0),
            config(loki.push_url, name="live", batch_size=50),
        ]
    )
    try:
        async with asyncio.timeout(5):
            for i in range(20):
                await writer.send(
                    batch({"a": "1"}, f"{i:040d}", delivery=Delivery(results.append))
                )
            await loki.wait_for_entries(20)
        assert results == []  # the dead endpoint still holds its references
        # Each entry, and the delivery reference it came with.
        assert writer.queued_bytes()["dead"] == 20 * (
            40 + ENTRY_OVERHEAD_BYTES + DELIVERY_OVERHEAD_BYTES
        )
    finally:
        await writer.aclose(drain_timeout=0.05)
    assert results == [False] * 20


async def test_delivery_settles_once_every_endpoint_is_done(loki: FakeLoki) -> None:
    other = FakeLoki()
    await other.start()
    results: list[bool] = []
    try:
        other.faults.hang()
        async with Writer(
            [config(loki.push_url, name="a"), config(other.push_url, name="b")]
        ) as writer:
            await writer.send(batch({"a": "1"}, "x", delivery=Delivery(results.append)))
            await loki.wait_for_entries(1)
            await other.wait_for_requests(1)
            assert results == []
            other.faults.clear()
            await writer.flush()
        assert results == [True]
    finally:
        await other.aclose()


async def test_big_batches_are_encoded_off_the_event_loop_thread(
    loki: FakeLoki,
) -> None:
    """A 1 MiB batch takes ~8 ms to encode: too long to hold the loop for."""
    threads: list[tuple[int, bool]] = []

    def recording(streams: Sequence[tuple[str, Sequence[LogEntry]]]) -> bytes:
        count = sum(len(entries) for _, entries in streams)
        threads.append((count, threading.current_thread() is threading.main_thread()))
        return encode_push_request(streams)

    line = "x" * 150
    async with Writer(
        [config(loki.push_url, batch_size=1 << 21)], encode=recording
    ) as writer:
        await writer.send(
            StreamBatch({"a": "1"}, [LogEntry(i, line) for i in range(7000)])
        )
        await writer.flush()
        await writer.send(batch({"a": "1"}, "small"))
        await writer.flush()
    assert threads == [(7000, False), (1, True)]
    assert len(loki.entries) == 7001


def test_endpoint_config_defaults_and_validation() -> None:
    cfg = EndpointConfig("http://loki:3100/loki/api/v1/push")
    assert (cfg.batch_wait, cfg.batch_size, cfg.remote_timeout) == (1.0, 1 << 20, 10.0)
    assert (cfg.min_backoff_period, cfg.max_backoff_period) == (0.5, 300.0)
    assert (cfg.max_backoff_retries, cfg.retry_on_http_429) == (10, True)
    assert (cfg.queue_capacity, cfg.drain_timeout) == (10 << 20, 15.0)
    assert len(cfg.name) == 6
    assert cfg.host == "loki:3100"
    assert EndpointConfig("http://loki:3100/x", tenant_id="t").name != cfg.name
    with pytest.raises(ConfigError, match="batch_size"):
        EndpointConfig("http://loki/x", batch_size=0)
    with pytest.raises(ConfigError):
        EndpointConfig("loki:3100")
    with pytest.raises(ConfigError, match="at least one endpoint"):
        Writer([])
    with pytest.raises(ConfigError, match="duplicate"):
        Writer(
            [
                EndpointConfig("http://a/x", name="n"),
                EndpointConfig("http://b/x", name="n"),
            ]
        )


async def test_end_to_end_through_fake_loki_with_faults_and_restart() -> None:
    from minilog.testing import FakeLoki

    registry = CollectorRegistry()
    async with FakeLoki() as fake:
        fake.faults.respond(500, "ingester down", times=2)
        writer = Writer(
            [config(fake.push_url, tenant_id="t1", max_backoff_retries=0)],
            registry=registry,
        )
        try:
            await writer.send(batch({"job": "a", "__tenant_id__": "t2"}, "first"))
            await fake.wait_for_entries(1, timeout=5)
            await fake.aclose()  # Loki goes down
            await writer.send(batch({"job": "a"}, "while down"))
            await fake.start()  # back on the same port
            await fake.wait_for_entries(2, timeout=5)
        finally:
            await writer.aclose()
        assert fake.streams(tenant="t2") == {'{job="a"}': [LogEntry(1, "first")]}
        assert fake.streams(tenant="t1") == {'{job="a"}': [LogEntry(1, "while down")]}
    host = fake.push_url.split("/")[2]
    retries = sample(registry, "loki_write_batch_retries_total", host=host, tenant="t2")
    assert retries == 2


async def test_cancelled_send_abandons_its_delivery(loki: FakeLoki) -> None:
    loki.faults.hang()
    writer = Writer([config(loki.push_url, batch_size=10, queue_capacity=10)])
    try:
        await writer.send(batch({"a": "1"}, "0123456789"))
        await loki.wait_for_requests(1)
        results: list[bool] = []
        blocked = asyncio.create_task(
            writer.send(batch({"a": "1"}, "x", delivery=Delivery(results.append)))
        )
        await asyncio.sleep(0)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert results == [False]
        assert writer.queued_bytes() == {writer_name(writer): 10 + ENTRY_OVERHEAD_BYTES}
    finally:
        loki.faults.clear()
        await writer.aclose()
    assert [e.line for _, e in loki.entries] == ["0123456789"]


async def test_send_nowait_is_all_or_nothing_across_endpoints(loki: FakeLoki) -> None:
    other = FakeLoki()
    await other.start()
    other.faults.hang()
    writer = Writer(
        [
            config(loki.push_url, name="roomy"),
            config(other.push_url, name="tight", batch_size=5, queue_capacity=5),
        ]
    )
    try:
        writer.send_nowait(batch({"a": "1"}, "12345"))
        await other.wait_for_requests(1)
        delivery = Delivery()
        with pytest.raises(WouldBlockError):
            writer.send_nowait(batch({"a": "1"}, "more", delivery=delivery))
        assert delivery.pending == 1  # nothing queued anywhere, still the caller's
        await loki.wait_for_entries(1)
        await asyncio.sleep(0.05)  # a wrongly queued "more" would be pushed by now
        assert writer.queued_bytes() == {"roomy": 0, "tight": 5 + ENTRY_OVERHEAD_BYTES}
    finally:
        other.faults.clear()
        await writer.aclose()
        await other.aclose()
    assert [e.line for _, e in loki.entries] == ["12345"]


async def test_batches_waiting_out_an_outage_are_compacted_and_delivered() -> None:
    """Batches queued behind the next one are encoded (compressed) while they wait.

    The queue then counts their compressed size instead of their entries' memory: five
    batches pass a queue with room for fewer than three uncompressed ones (its capacity
    less the working set set aside) while Loki is down, without blocking.
    """
    encoded: list[int] = []

    def recording(streams: Sequence[tuple[str, Sequence[LogEntry]]]) -> bytes:
        encoded.append(sum(len(entries) for _, entries in streams))
        return encode_push_request(streams)

    one = 10 * (100 + ENTRY_OVERHEAD_BYTES)  # what one uncompressed batch weighs
    port = free_port()
    loki = FakeLoki(port=port)
    url = f"http://127.0.0.1:{port}/loki/api/v1/push"
    writer = Writer(
        [config(url, batch_size=1000, queue_capacity=4 * one, max_backoff_retries=0)],
        encode=recording,
    )
    try:
        async with asyncio.timeout(5):
            for i in range(5):
                lines = (f"{i}-{j:08d}".ljust(100, "a") for j in range(10))
                await writer.send(batch({"a": "1"}, *lines))
        # admitted below the room, so at most one stream batch above it
        assert max(writer.queued_bytes().values()) <= 4 * one
        for _ in range(1000):  # no event to await: poll until the queue is compacted
            if len(encoded) == 4:
                break
            await asyncio.sleep(0.005)
        # Loki is down: the batch in flight and the three behind the next one
        assert encoded == [10] * 4
        await loki.start()
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
        await loki.aclose()
    assert encoded == [10] * 5  # the next one at send time; none encoded twice
    got = [e.line for _, e in loki.entries]
    assert got == [f"{i}-{j:08d}".ljust(100, "a") for i in range(5) for j in range(10)]


async def test_a_queue_full_of_open_batches_sends_them_without_waiting_batch_wait(
    loki: FakeLoki,
) -> None:
    """Capacity below batch_size: the open batch is what fills the queue; a waiting
    producer gets it sent at once instead of idling until batch_wait."""
    one = 100 + ENTRY_OVERHEAD_BYTES
    writer = Writer(
        [
            config(
                loki.push_url,
                batch_size=1 << 20,
                batch_wait=60.0,
                queue_capacity=2 * one,
            )
        ]
    )
    try:
        async with asyncio.timeout(5):
            for i in range(6):
                await writer.send(batch({"a": "1"}, f"{i:0100d}"))
            await loki.wait_for_entries(4)
    finally:
        await writer.aclose(drain_timeout=1)
    assert [e.line for _, e in loki.entries] == [f"{i:0100d}" for i in range(6)]


async def test_a_filled_batch_waits_compressed(loki: FakeLoki) -> None:
    """A batch is encoded when filling makes it ready: it waits as its compressed
    body, not as entries (what keeps the agent's memory low during a drain)."""
    loki.faults.hang()  # Loki hangs: everything waits in the queue
    lines = [f"{i:04d}" + "a" * 996 for i in range(100)]  # 100 KB, compressible
    writer = Writer([config(loki.push_url, batch_size=64 << 10, batch_wait=60.0)])
    try:
        await writer.send(batch({"a": "1"}, *lines))
        as_entries = len(lines) * (1000 + ENTRY_OVERHEAD_BYTES)
        # The full first batch (65 lines) is a few hundred bytes of snappy now;
        # only the open rest (35 lines) is held as entries.
        assert max(writer.queued_bytes().values()) < (
            35 * (1000 + ENTRY_OVERHEAD_BYTES) + 8192
        )
        assert max(writer.queued_bytes().values()) < as_entries / 2
        loki.faults.clear()
        await writer.flush()
    finally:
        await writer.aclose()
    assert [e.line for _, e in loki.entries] == lines


class RecordingTransport:
    """A ``PushTransport`` without HTTP: keeps what it is asked to push."""

    def __init__(self, answers: list[PushError | None]) -> None:
        self.answers = answers
        self.pushed: list[tuple[str, list[tuple[str, list[LogEntry]]]]] = []
        self.closed = False

    async def push(self, body: bytes, *, tenant: str = "") -> int:
        self.pushed.append((tenant, decode_push_request(decompress(body))))
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        return 204

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109 - the protocol's
        return True

    async def aclose(self) -> None:
        self.closed = True


async def test_the_transport_is_a_seam_the_writer_owns() -> None:
    """Each endpoint's HTTP side comes from the ``transport`` factory: the writer
    retries what it refuses and closes it when it drains."""
    transport = RecordingTransport([ServerError("down", status=500)])
    configs: list[EndpointConfig] = []

    def factory(config: EndpointConfig) -> RecordingTransport:
        configs.append(config)
        return transport

    endpoint = config("http://loki.invalid/loki/api/v1/push", tenant_id="t")
    writer = Writer([endpoint], transport=factory)
    await writer.send(batch({"app": "a"}, "one"))
    await writer.flush()
    assert configs == [endpoint]
    assert transport.pushed == [("t", [('{app="a"}', [LogEntry(1, "one")])])] * 2
    assert not transport.closed
    await writer.aclose()
    assert transport.closed
