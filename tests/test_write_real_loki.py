"""loki.write against a real Loki 3.6 with low limits: what it refuses is parsed from
its own answers, counted by reason, held and retried, never re-sent when stored.

A local Loki (``/usr/local/bin/loki``) runs on free ports for this module, with
``auth_enabled`` so each test has a tenant of its own (limits are per tenant), and
limits small enough to reach: 3 streams, 2 KB/s per stream (4 KB burst), 1 KB lines.
Skipped when the binary is absent. (A small fixture of this module's own; the shared
real-Loki fixture may replace it.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from agent_helpers import free_port
from prometheus_client import CollectorRegistry

from minilog.loki.refusals import parse_refusal
from minilog.loki.wire import compress, encode_push_request
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.write import EndpointConfig, Writer

__all__: list[str] = []

LOKI_BIN = os.environ.get("MINILOG_LOKI_BIN", "/usr/local/bin/loki")

pytestmark = [
    pytest.mark.loki,
    pytest.mark.skipif(
        shutil.which(LOKI_BIN) is None, reason=f"no Loki binary at {LOKI_BIN}"
    ),
]

_CONFIG = """
auth_enabled: true
server:
  http_listen_address: 127.0.0.1
  http_listen_port: {http}
  grpc_listen_address: 127.0.0.1
  grpc_listen_port: {grpc}
  log_level: warn
common:
  instance_addr: 127.0.0.1
  path_prefix: {data}
  storage:
    filesystem:
      chunks_directory: {data}/chunks
      rules_directory: {data}/rules
  replication_factor: 1
  ring:
    kvstore:
      store: inmemory
schema_config:
  configs:
    - from: 2020-10-24
      store: tsdb
      object_store: filesystem
      schema: v13
      index:
        prefix: index_
        period: 24h
ingester:
  lifecycler:
    min_ready_duration: 0s
    final_sleep: 0s
limits_config:
  max_global_streams_per_user: 3
  per_stream_rate_limit: 2KB
  per_stream_rate_limit_burst: 4KB
  max_line_size: 1KB
analytics:
  reporting_enabled: false
"""


@pytest.fixture(scope="module")
def loki_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Loki of this module's own; stopped with SIGTERM after."""
    root = tmp_path_factory.mktemp("loki")
    http = free_port()
    config = root / "loki.yaml"
    config.write_text(_CONFIG.format(http=http, grpc=free_port(), data=root / "data"))
    log = (root / "loki.log").open("wb")
    proc = subprocess.Popen(
        [LOKI_BIN, f"-config.file={config}"], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{http}"
    try:
        _wait_ready(base, proc, root / "loki.log")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"Loki exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # Loki offers nothing to wait on: poll, bounded
    raise AssertionError("Loki not ready after 60 s")


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
