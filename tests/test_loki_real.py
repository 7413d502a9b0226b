"""Round trips through a real Loki 3.6: push with ``Shipper``, read back by query_range.

Every test needs ``LOKI_URL`` (a base URL such as ``http://localhost:3100``; start one
with ``docker compose -f compose/docker-compose.yml up -d loki``) and skips without it.
Each test labels its streams with a fresh ``test_run`` value, so reruns against the same
Loki never see each other's data. ``LOKI_TENANT`` sets ``X-Scope-OrgID`` for a Loki with
``auth_enabled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import orjson
import pytest
from loki_helpers import (
    LOKI_SKIP_REASON,
    PUSH_PATH,
    QueriedStream,
    expected_stream_labels,
    loki_base_url,
    tenant_headers,
    wait_for_entries,
    wait_ready,
)
from prometheus_client import CollectorRegistry

from minilog.encode import compress, encode_push_request
from minilog.labels import format_labels
from minilog.model import LogEntry
from minilog.shipper import Shipper
from minilog.testing import FakeLoki

__all__: list[str] = []

LOKI_URL = loki_base_url()

pytestmark = [
    pytest.mark.loki,
    pytest.mark.skipif(LOKI_URL is None, reason=LOKI_SKIP_REASON),
]

# Loki refuses entries older than reject_old_samples_max_age (7 days by default).
EIGHT_DAYS_NS = 8 * 24 * 3600 * 1_000_000_000
SECOND_NS = 1_000_000_000


@pytest.fixture
def base() -> str:
    assert LOKI_URL is not None  # the module is skipped otherwise
    return LOKI_URL


@pytest.fixture
async def http(base: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        await wait_ready(session, base)
        yield session


@pytest.fixture
def run_id() -> str:
    return f"minilog-{uuid.uuid4().hex}"


def shipper_for(base: str, registry: CollectorRegistry, **options: Any) -> Shipper:
    tenant = tenant_headers().get("X-Scope-OrgID")
    return Shipper(
        base,
        tenant_id=tenant,
        registry=registry,
        batch_wait=options.pop("batch_wait", 0.05),
        min_backoff_period=0.05,
        max_backoff_period=0.5,
        **options,
    )


def metric_total(registry: CollectorRegistry, name: str, **match: str) -> float:
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(key) == value for key, value in match.items()
            ):
                total += sample.value
    return total


def recent_entries(lines: Sequence[str], start_ns: int) -> list[LogEntry]:
    """One entry per line, a microsecond apart, starting at ``start_ns``."""
    return [LogEntry(start_ns + i * 1000, line) for i, line in enumerate(lines)]


async def read_back(
    http: aiohttp.ClientSession,
    base: str,
    run_id: str,
    entries: Sequence[LogEntry],
    *,
    count: int | None = None,
    categorize_labels: bool = True,
) -> list[QueriedStream]:
    """Streams of this run over a range holding ``entries`` (``end`` is exclusive)."""
    stamps = [entry.timestamp_ns for entry in entries]
    return await wait_for_entries(
        http,
        base,
        f'{{test_run="{run_id}"}}',
        len(entries) if count is None else count,
        start_ns=min(stamps) - SECOND_NS,
        end_ns=max(stamps) + SECOND_NS,
        categorize_labels=categorize_labels,
    )


def stream_with(streams: list[QueriedStream], **labels: str) -> QueriedStream:
    found = [s for s in streams if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, [s.labels for s in streams])
    return found[0]


def as_sent(stream: QueriedStream) -> list[LogEntry]:
    """Returned entries shaped as pushed (without Loki's ``detected_level``)."""
    return [
        LogEntry(e.timestamp_ns, e.line, tuple(sorted(e.metadata_sent().items())))
        for e in stream.entries
    ]


def sorted_metadata(entries: Sequence[LogEntry]) -> list[LogEntry]:
    return [e._replace(structured_metadata=tuple(sorted(e[2]))) for e in entries]


async def ship(
    shipper: Shipper, streams: Mapping[str, tuple[dict[str, str], list[LogEntry]]]
) -> list[bool]:
    """Send each stream as one batch, flush, and return the delivery outcomes."""
    loop = asyncio.get_running_loop()
    outcomes: list[asyncio.Future[bool]] = []
    for labels, entries in streams.values():
        future: asyncio.Future[bool] = loop.create_future()
        outcomes.append(future)
        await shipper.send_batch(labels, entries, on_delivery=future)
    async with asyncio.timeout(20):
        await shipper.flush()
        return list(await asyncio.gather(*outcomes))


# -- lines, labels, timestamps --------------------------------------------------------


async def test_lines_labels_and_timestamps_come_back_unchanged(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    lines = [
        "plain ascii line",
        "unicode: naïve café, Grüße, 日本語, emoji 🚀",
        "tabs\tand \"double\" and 'single' quotes and a \\ backslash",
        '<html attr="x">&amp; escaped by Loki\'s JSON writer</html>',
        '{"level":"info","msg":"json-looking line"}',
        "x" * 10_000,
    ]
    entries = recent_entries(lines, time.time_ns())
    labels = {"test_run": run_id, "job": "minilog-roundtrip", "env": "test"}
    registry = CollectorRegistry()
    async with shipper_for(base, registry) as shipper:
        outcomes = await ship(shipper, {"one": (labels, entries)})
    assert outcomes == [True]
    assert metric_total(registry, "loki_write_sent_entries_total") == len(entries)
    assert metric_total(registry, "loki_write_dropped_entries_total") == 0

    streams = await read_back(http, base, run_id, entries)
    assert len(streams) == 1
    (stream,) = streams
    # Loki adds service_name (from job here); nothing else.
    assert stream.labels == expected_stream_labels(labels)
    assert stream.labels["service_name"] == "minilog-roundtrip"
    assert [(e.timestamp_ns, e.line) for e in stream.entries] == [
        (e.timestamp_ns, e.line) for e in entries
    ]


async def test_service_name_sent_by_the_client_is_kept(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    entries = recent_entries(["with service_name"], time.time_ns())
    labels = {"test_run": run_id, "service_name": "mine", "job": "other"}
    async with shipper_for(base, CollectorRegistry()) as shipper:
        assert await ship(shipper, {"one": (labels, entries)}) == [True]
    streams = await read_back(http, base, run_id, entries, count=1)
    assert [s.labels for s in streams] == [labels]


async def test_structured_metadata_comes_back_apart_from_stream_labels(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    now = time.time_ns()
    trace = uuid.uuid4().hex
    entries = [
        LogEntry(now, "with metadata", (("trace_id", trace), ("user", "zoë 🚀"))),
        LogEntry(now + 1000, "no metadata"),
        LogEntry(now + 2000, "other metadata", (("trace_id", "t-2"),)),
        LogEntry(now + 3000, 'quoted "value"', (("note", 'a "b" \\ c\td'),)),
    ]
    labels = {"test_run": run_id, "job": "minilog-metadata"}
    async with shipper_for(base, CollectorRegistry()) as shipper:
        assert await ship(shipper, {"one": (labels, entries)}) == [True]

    streams = await read_back(http, base, run_id, entries)
    # categorize-labels: one stream, metadata per value and never in the labels.
    assert len(streams) == 1
    assert streams[0].labels == expected_stream_labels(labels)
    assert as_sent(streams[0]) == sorted_metadata(entries)

    # Without the header Loki folds metadata into the labels: a stream per metadata set.
    merged = await read_back(http, base, run_id, entries, categorize_labels=False)
    assert len(merged) == len(entries)
    assert stream_with(merged, trace_id=trace).labels["user"] == "zoë 🚀"


async def test_label_values_needing_go_escaping(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    values = {
        "quotes": 'say "hi"',
        "backslash": "C:\\logs\\app",
        "newline": "first\nsecond",
        "tab": "a\tb",
        "unicode": "Grüße 日本 🚀",
        "mixed": 'x\\"y\n\tz ✓',
    }
    now = time.time_ns()
    streams_sent = {
        kind: (
            {"test_run": run_id, "job": "minilog-escaping", "kind": kind, "odd": value},
            [LogEntry(now + i * 1000, f"line for {kind}")],
        )
        for i, (kind, value) in enumerate(values.items())
    }
    registry = CollectorRegistry()
    # One batch for all streams: they share one request.
    async with shipper_for(base, registry, batch_wait=5.0) as shipper:
        assert await ship(shipper, streams_sent) == [True] * len(values)
    assert metric_total(registry, "loki_write_request_duration_seconds_count") == 1, (
        "all streams should have gone in one push"
    )

    all_entries = [entry for _, entries in streams_sent.values() for entry in entries]
    streams = await read_back(http, base, run_id, all_entries, count=len(values))
    assert len(streams) == len(values)
    for kind, (labels, entries) in streams_sent.items():
        stream = stream_with(streams, kind=kind)
        assert stream.labels == expected_stream_labels(labels)
        assert stream.labels["odd"] == values[kind]
        assert [(e.timestamp_ns, e.line) for e in stream.entries] == [
            (e.timestamp_ns, e.line) for e in entries
        ]


async def test_several_streams_in_one_batch_keep_their_order(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    now = time.time_ns()
    streams_sent = {
        f"s{s}": (
            {"test_run": run_id, "app": f"minilog-{s}"},
            recent_entries([f"s{s} line {i:03d}" for i in range(200)], now + s),
        )
        for s in range(3)
    }
    registry = CollectorRegistry()
    async with shipper_for(base, registry, batch_wait=5.0) as shipper:
        assert await ship(shipper, streams_sent) == [True, True, True]
    assert metric_total(registry, "loki_write_request_duration_seconds_count") == 1
    assert metric_total(registry, "loki_write_sent_entries_total") == 600

    all_entries = [entry for _, entries in streams_sent.values() for entry in entries]
    streams = await read_back(http, base, run_id, all_entries)
    assert len(streams) == 3
    for labels, entries in streams_sent.values():
        stream = stream_with(streams, app=labels["app"])
        assert stream.labels == {**labels, "service_name": labels["app"]}
        assert [(e.timestamp_ns, e.line) for e in stream.entries] == [
            (e.timestamp_ns, e.line) for e in entries
        ]


# -- rejections -----------------------------------------------------------------------


async def test_a_timestamp_older_than_seven_days_is_dropped_not_retried(
    base: str,
    http: aiohttp.ClientSession,
    run_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="minilog")
    registry = CollectorRegistry()
    labels = {"test_run": run_id, "job": "minilog-too-old"}
    old = [LogEntry(time.time_ns() - EIGHT_DAYS_NS, "eight days old")]
    async with shipper_for(base, registry) as shipper:
        # Dropped for good is settled too: a source may move past it.
        assert await ship(shipper, {"old": (labels, old)}) == [True]
        assert metric_total(registry, "loki_write_batch_retries_total") == 0
        assert (
            metric_total(
                registry,
                "loki_write_request_duration_seconds_count",
                status_code="400",
            )
            == 1
        )
        # Counted under Loki's own reason, read from its answer (issue 16; it was
        # Alloy's catch-all ingester_error before).
        assert (
            metric_total(
                registry,
                "loki_write_dropped_entries_total",
                reason="greater_than_max_sample_age",
            )
            == 1
        )
        assert (
            metric_total(
                registry, "loki_write_dropped_entries_total", reason="ingester_error"
            )
            == 0
        )
        assert metric_total(registry, "loki_write_sent_entries_total") == 0
        problems = [
            r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
        ]
        assert len(problems) == 1, problems
        assert "400" in problems[0]
        assert "too old" in problems[0]

        # The endpoint goes on: a fresh line on the same stream is stored.
        fresh = recent_entries(["fresh after the rejection"], time.time_ns())
        assert await ship(shipper, {"fresh": (labels, fresh)}) == [True]
    streams = await read_back(http, base, run_id, fresh, count=1)
    assert [(e.timestamp_ns, e.line) for s in streams for e in s.entries] == [
        (fresh[0].timestamp_ns, fresh[0].line)
    ]


# -- the raw wire formats -------------------------------------------------------------


async def test_raw_protobuf_and_json_pushes_agree_with_loki_and_the_receiver(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    now = time.time_ns()
    entries = [
        LogEntry(now, "raw one", (("trace_id", "abc"),)),
        LogEntry(now + 1000, 'raw two ü 🚀 "q" \t tab'),
        LogEntry(now + 2000, "raw three", (("a", "1"), ("b", 'x"y'))),
    ]
    proto_labels = {"test_run": run_id, "job": "minilog-raw", "path": "protobuf"}
    json_labels = {"test_run": run_id, "job": "minilog-raw", "path": "json"}

    # Our hot-path encoder, snappy block, as Loki's clients send it.
    proto_body = compress(encode_push_request([(format_labels(proto_labels), entries)]))
    json_body = orjson.dumps(
        {
            "streams": [
                {
                    "stream": json_labels,
                    "values": [
                        [str(e.timestamp_ns), e.line, dict(e.structured_metadata)]
                        if e.structured_metadata
                        else [str(e.timestamp_ns), e.line]
                        for e in entries
                    ],
                }
            ]
        }
    )
    headers = tenant_headers()
    async with http.post(
        base + PUSH_PATH,
        data=proto_body,
        headers={**headers, "Content-Type": "application/x-protobuf"},
    ) as response:
        assert response.status == 204, await response.text()
    async with http.post(
        base + PUSH_PATH,
        data=json_body,
        headers={**headers, "Content-Type": "application/json"},
    ) as response:
        assert response.status == 204, await response.text()

    # The same JSON body through our receiver: it must read what Loki read.
    async with FakeLoki() as fake:
        async with http.post(
            fake.push_url, data=json_body, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 204, await response.text()
        assert fake.streams() == {format_labels(json_labels): entries}

    streams = await read_back(http, base, run_id, entries, count=2 * len(entries))
    assert len(streams) == 2
    expected = sorted_metadata(entries)
    for labels in (proto_labels, json_labels):
        stream = stream_with(streams, path=labels["path"])
        assert stream.labels == expected_stream_labels(labels)
        assert as_sent(stream) == expected
