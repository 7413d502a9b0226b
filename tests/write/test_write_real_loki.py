"""loki.write against a real Loki 3.6 with low limits: what it refuses is parsed from
its own answers, counted by reason, held and retried, never re-sent when stored.

A Loki of this module's own (``loki_starter``: the seed's config on free ports) runs
with ``auth_enabled`` so each test has a tenant of its own (limits are per tenant),
and limits small enough to reach: 3 streams, 2 KB/s per stream (4 KB burst), 1 KB
lines. Skipped, with the reason, when no real Loki can be run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry
from real_loki import LokiStarter

from minilog.loki.refusals import parse_refusal
from minilog.loki.wire import compress, encode_push_request
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.write import EndpointConfig, Writer

__all__: list[str] = []

#: Limits small enough to reach in a test (per tenant).
_LIMITS = {
    "max_global_streams_per_user": 3,
    "per_stream_rate_limit": "2KB",
    "per_stream_rate_limit_burst": "4KB",
    "max_line_size": "1KB",
}


@pytest.fixture(scope="module")
def loki_url(loki_starter: LokiStarter) -> Iterator[str]:
    """Base URL of a Loki for this module (the shared launcher), with ``auth_enabled``
    and the low limits."""
    with loki_starter({"auth_enabled": True, "limits_config": _LIMITS}) as loki:
        yield loki.base_url


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def push(
    base: str, tenant: str, streams: list[tuple[str, list[LogEntry]]]
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + "/loki/api/v1/push",
            data=compress(encode_push_request(streams)),
            headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": tenant},
        ) as response,
    ):
        return response.status, await response.text()


async def stored_lines(
    base: str, tenant: str, selector: str, start_ns: int
) -> list[str]:
    params = {
        "query": selector,
        "start": str(start_ns - 1),
        "end": str(time.time_ns() + 60_000_000_000),
        "limit": "5000",
        "direction": "forward",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            base + "/loki/api/v1/query_range",
            params=params,
            headers={"X-Scope-OrgID": tenant},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        payload = orjson.loads(await response.read())
    return [v[1] for s in payload["data"]["result"] for v in s["values"]]


def writer_for(
    base: str, tenant: str, registry: CollectorRegistry, batch_size: int = 1 << 20
) -> Writer:
    return Writer(
        [
            EndpointConfig(
                base + "/loki/api/v1/push",
                tenant_id=tenant,
                batch_wait=0.05,
                batch_size=batch_size,
                min_backoff_period=0.05,
                max_backoff_period=0.5,
            )
        ],
        registry=registry,
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# ------------------------------------------------------------------ the parser


async def test_real_refusals_parse_as_loki_meant_them(
    loki_url: str, tenant: str
) -> None:
    now = time.time_ns()
    status, body = await push(
        loki_url,
        tenant,
        [('{app="a"}', [LogEntry(now, "ok"), LogEntry(now + 1, "x" * 2000)])],
    )
    refusal = parse_refusal(status, body)
    assert (status, refusal.understood, refusal.whole) == (400, True, False)
    ((reason, count, length),) = [
        (s.reason, s.count, s.line_length) for s in refusal.streams
    ]
    assert (reason, count, length) == ("line_too_long", 1, 2000)
    assert dict(refusal.streams[0].labels) == {"app": "a", "service_name": "a"}

    status, body = await push(
        loki_url, tenant, [('{app="a"}', [LogEntry(now - 30 * 86400 * 10**9, "old")])]
    )
    (old,) = parse_refusal(status, body).streams
    assert (status, old.reason, old.count) == (400, "greater_than_max_sample_age", 1)

    streams = [(f'{{app="s{i}"}}', [LogEntry(now, f"s{i}")]) for i in range(3)]
    status, body = await push(loki_url, tenant, streams)  # a + s0 + s1: s2 is the 4th
    (limited,) = parse_refusal(status, body).streams
    assert (status, limited.reason, limited.count) == (429, "stream_limited", None)
    assert dict(limited.labels) == {"app": "s2", "service_name": "s2"}

    entries = [LogEntry(now + 10 + i, f"{i:0900d}") for i in range(6)]
    status, body = await push(loki_url, tenant, [('{app="a"}', entries)])
    (rated,) = parse_refusal(status, body).streams
    assert (status, rated.reason, rated.retriable) == (429, "rate_limited", True)
    assert rated.count is not None and rated.complete
    listed = {e.timestamp_ns for e in rated.listed}
    assert listed <= {e.timestamp_ns for e in entries} and len(listed) == rated.count


# ------------------------------------------------------------------ the writer


async def test_one_over_long_line_is_counted_alone_and_the_rest_stored(
    loki_url: str, tenant: str
) -> None:
    registry = CollectorRegistry()
    start = time.time_ns()
    lines = [f"line {i}" for i in range(19)] + ["y" * 1500]
    results: list[bool] = []
    async with writer_for(loki_url, tenant, registry) as writer:
        entries = [LogEntry(start + i, line) for i, line in enumerate(lines)]
        await writer.send(StreamBatch({"app": "a"}, entries, Delivery(results.append)))
        await writer.flush()
    host = loki_url.removeprefix("http://")
    labels = {"host": host, "tenant": tenant}
    assert (
        sample(
            registry,
            "loki_write_dropped_entries_total",
            **labels,
            reason="line_too_long",
        )
        == 1
    )
    assert (
        sample(
            registry,
            "loki_write_dropped_entries_total",
            **labels,
            reason="ingester_error",
        )
        == 0
    )
    assert sample(registry, "loki_write_sent_entries_total", **labels) == 19
    assert results == [True]
    assert await stored_lines(loki_url, tenant, '{app="a"}', start) == lines[:19]


async def test_rate_limited_entries_are_retried_until_stored_once(
    loki_url: str, tenant: str
) -> None:
    """Loki 3.6 (``shard_streams`` on) refuses a stream's part of a push whole when
    it exceeds what the stream's rate limit has left: 3 batches of 2.7 KB against a
    4 KB burst refilling at 2 KB/s."""
    registry = CollectorRegistry()
    start = time.time_ns()
    lines = [f"{i:03d}" + "r" * 897 for i in range(8)]  # 7.2 KB
    async with writer_for(loki_url, tenant, registry, batch_size=3000) as writer:
        entries = [LogEntry(start + i, line) for i, line in enumerate(lines)]
        await writer.send(StreamBatch({"app": "busy"}, entries))
        async with asyncio.timeout(30):
            await writer.flush()
    host = loki_url.removeprefix("http://")
    labels = {"host": host, "tenant": tenant}
    assert sample(registry, "loki_write_sent_entries_total", **labels) == 8
    assert (
        sample(
            registry,
            "loki_write_dropped_entries_total",
            **labels,
            reason="rate_limited",
        )
        == 0
    )
    assert await stored_lines(loki_url, tenant, '{app="busy"}', start) == lines


async def test_new_streams_over_the_limit_are_held_and_the_rest_stored(
    loki_url: str, tenant: str
) -> None:
    """Loki answers for the last stream of a push only: new streams go last, and
    every new one is held when it names one, so none is lost unseen."""
    registry = CollectorRegistry()
    start = time.time_ns()
    results: dict[str, list[bool]] = {}
    settled = {app: asyncio.Event() for app in ("new1", "old1", "new2", "new3")}

    def on_delivery(app: str) -> Delivery:
        def settle(ok: bool) -> None:
            results[app].append(ok)
            settled[app].set()

        return Delivery(settle)

    writer = writer_for(loki_url, tenant, registry)
    try:
        for app in ("old1", "old2"):
            await writer.send(StreamBatch({"app": app}, [LogEntry(start, app)]))
        await writer.flush()
        for app in ("new1", "old1", "new2", "new3"):
            results[app] = []
            await writer.send(
                StreamBatch(
                    {"app": app},
                    [LogEntry(start + 1, f"{app} again")],
                    on_delivery(app),
                )
            )
        host = loki_url.removeprefix("http://")
        await asyncio.wait_for(settled["new1"].wait(), 20)
        assert results["old1"] == [True] and results["new1"] == [True]
        assert results["new2"] == results["new3"] == []  # held, not dropped
        assert sample(registry, "minilog_write_held_streams", host=host) == 2
    finally:
        await writer.aclose(drain_timeout=0.5)
    assert results["new2"] == results["new3"] == [False]  # abandoned at close
    for app, expected in (("new1", ["new1 again"]), ("old1", ["old1", "old1 again"])):
        assert (
            await stored_lines(loki_url, tenant, f'{{app="{app}"}}', start) == expected
        )
    assert await stored_lines(loki_url, tenant, '{app="new2"}', start) == []
