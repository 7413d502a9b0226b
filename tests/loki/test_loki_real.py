"""Round trips through a real Loki 3.6: push with ``Shipper`` (or ``loki.write`` in an
agent), read back by query_range.

The seed-config Loki is the session's ``loki_base`` (``LOKI_URL``, else one started
by ``real_loki``); tests that need another config (``auth_enabled``, low limits) start
their own through ``loki_starter``, once per module. Every test skips, with the reason,
when no real Loki exists. Each test labels its streams with a fresh ``test_run`` value,
so reruns against the same Loki never see each other's data. ``LOKI_TENANT`` sets
``X-Scope-OrgID`` for a ``LOKI_URL`` Loki with ``auth_enabled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from loki_helpers import (
    DETECTED_LEVEL,
    PUSH_PATH,
    QUERY_RANGE_PATH,
    QueriedStream,
    expected_stream_labels,
    tenant_headers,
    wait_for_entries,
    wait_ready,
)
from prometheus_client import CollectorRegistry
from real_loki import LokiStarter

from minilog.agent.runtime import Agent
from minilog.labels import format_labels
from minilog.logging import LokiHandler
from minilog.loki.wire import compress, encode_push_request
from minilog.model import LogEntry
from minilog.shipper import Shipper
from minilog.testing import FakeLoki

__all__: list[str] = []

pytestmark = pytest.mark.loki

# Loki refuses entries older than reject_old_samples_max_age (7 days by default) and
# lines longer than max_line_size (256 KB by default).
EIGHT_DAYS_NS = 8 * 24 * 3600 * 1_000_000_000
MAX_LINE_SIZE = 256 * 1024
SECOND_NS = 1_000_000_000


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        yield session


@pytest.fixture
async def base(loki_base: str, http: aiohttp.ClientSession) -> str:
    await wait_ready(http, loki_base)  # a LOKI_URL Loki may still be starting
    return loki_base


@pytest.fixture
def run_id() -> str:
    return f"minilog-{uuid.uuid4().hex}"


def shipper_for(
    base: str,
    registry: CollectorRegistry,
    *,
    tenant: str | None = None,
    **options: Any,
) -> Shipper:
    """A ``Shipper`` with short waits; ``tenant`` as in ``tenant_headers``."""
    return Shipper(
        base,
        tenant_id=tenant_headers(tenant).get("X-Scope-OrgID"),
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
    tenant: str | None = None,
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
        tenant=tenant,
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
        "unicode: naïve café, Grüße, 日本語, emoji 🚀, RTL שלום",
        "tabs\tand \"double\" and 'single' quotes and a \\ backslash",
        '<html attr="x">&amp; escaped by Loki\'s JSON writer</html>',
        '{"level":"info","msg":"json-looking line"}',
        "a newline\ninside, a carriage return\r, a NUL \x00 and an ANSI \x1b[31mred",
        "x" * 10_000,
        "100 KB: " + "0123456789abcdef" * 6400,  # under the seed's 256 KB max_line_size
    ]
    # Nanosecond timestamps, one apart and off any microsecond, as Docker's are.
    now = time.time_ns() // 1000 * 1000 + 123
    entries = [LogEntry(now + i, line) for i, line in enumerate(lines)]
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
    # Nothing sent as metadata; Loki adds its detected_level to each entry (from the
    # JSON line's "level" field, else "unknown").
    assert as_sent(stream) == entries
    assert [e.structured_metadata[DETECTED_LEVEL] for e in stream.entries] == [
        "info" if '"level":"info"' in e.line else "unknown" for e in entries
    ]


async def test_entries_sharing_a_timestamp_are_all_kept_unless_identical(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    now = time.time_ns()
    entries = [
        LogEntry(now, "first at this nanosecond"),
        LogEntry(now, "second at this nanosecond"),
        LogEntry(now, "first at this nanosecond"),  # Loki keeps one of identical pairs
        LogEntry(now + 1, "one nanosecond later"),
    ]
    labels = {"test_run": run_id, "job": "minilog-same-ts"}
    async with shipper_for(base, CollectorRegistry()) as shipper:
        assert await ship(shipper, {"one": (labels, entries)}) == [True]
    streams = await read_back(http, base, run_id, entries, count=3)
    got = sorted((e.timestamp_ns, e.line) for s in streams for e in s.entries)
    assert got == sorted({(e.timestamp_ns, e.line) for e in entries})


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
        # Each branch of Go's strconv.Quote (see test_labels), read back by Loki.
        "control": "\a\b\f\r\v\x00\x04\x1f\x7f",
        "spaces": "!\u00a0!\u2000!\u3000!\u0085",
        "format": "\u2028\ufeff\U000e0001",
        "last_rune": "\U0010ffff",
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


async def test_logging_handler_records_arrive_with_their_labels_and_times(
    base: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    handler = LokiHandler(
        base,
        labels={"service": "api", "test_run": run_id},
        label_fields=("levelname",),
        tenant_id=tenant_headers().get("X-Scope-OrgID"),
        batch_wait=0.05,
    )
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("app.test_loki_real")
    second = time.time_ns() // SECOND_NS
    for level, created, message in [
        (logging.WARNING, second + 0.25, "disk 91% full"),
        (logging.INFO, second + 0.5, "no user here"),
    ]:
        record = logger.makeRecord(logger.name, level, __file__, 1, message, (), None)
        record.created = created
        handler.handle(record)
    await asyncio.to_thread(handler.close)  # flushes; blocks on the handler's thread

    entries = [
        LogEntry(second * SECOND_NS + 250_000_000, ""),
        LogEntry(second * SECOND_NS + 500_000_000, ""),
    ]
    streams = await read_back(http, base, run_id, entries)
    got = {s.labels["level"]: s for s in streams}
    assert set(got) == {"WARNING", "INFO"}
    for (level, line), entry in zip(
        [
            ("WARNING", "WARNING app.test_loki_real: disk 91% full"),
            ("INFO", "INFO app.test_loki_real: no user here"),
        ],
        entries,
        strict=True,
    ):
        stream = got[level]
        labels = {"level": level, "service": "api", "test_run": run_id}
        assert stream.labels == expected_stream_labels(labels)
        assert [(e.timestamp_ns, e.line) for e in stream.entries] == [
            (entry.timestamp_ns, line)
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


def refused_entry(kind: str, now: int) -> LogEntry:
    """An entry the seed's Loki answers 400 for (its default limits)."""
    if kind == "line_too_long":
        # max_line_size: 256 KB by default, the line counted in bytes.
        return LogEntry(now + 1500, "x" * (MAX_LINE_SIZE + 1))
    return LogEntry(now - EIGHT_DAYS_NS, "eight days old")


async def ship_with_one_refused(
    base: str, run_id: str, kind: str
) -> tuple[CollectorRegistry, dict[str, tuple[dict[str, str], list[LogEntry]]]]:
    """One request of two streams, one of whose entries Loki refuses: returns the
    shipper's registry and what Loki should hold (the batch without that entry)."""
    now = time.time_ns()
    kept = [LogEntry(now + i * 1000, f"kept {i}") for i in range(3)]
    bad = refused_entry(kind, now)
    other = recent_entries(["other stream 0", "other stream 1"], now)
    sent = {
        "mixed": ({"test_run": run_id, "job": "minilog-partial"}, [*kept, bad]),
        "other": ({"test_run": run_id, "job": "minilog-partial-other"}, other),
    }
    registry = CollectorRegistry()
    async with shipper_for(base, registry, batch_wait=5.0) as shipper:
        # Dropped for good is settled too: a source may move past it.
        assert await ship(shipper, sent) == [True, True]
    # One request, answered 400 and not retried.
    assert metric_total(registry, "loki_write_request_duration_seconds_count") == 1
    assert (
        metric_total(
            registry, "loki_write_request_duration_seconds_count", status_code="400"
        )
        == 1
    )
    assert metric_total(registry, "loki_write_batch_retries_total") == 0
    expected = {
        "mixed": (sent["mixed"][0], kept),
        "other": sent["other"],
    }
    return registry, expected


@pytest.mark.parametrize("kind", ["line_too_long", "too_old"])
async def test_an_entry_loki_refuses_is_dropped_and_the_rest_of_its_batch_arrives(
    base: str, http: aiohttp.ClientSession, run_id: str, kind: str
) -> None:
    registry, expected = await ship_with_one_refused(base, run_id, kind)
    assert metric_total(registry, "loki_write_dropped_entries_total") >= 1

    everything = [e for _, entries in expected.values() for e in entries]
    streams = await read_back(http, base, run_id, everything)
    assert len(streams) == len(expected)
    for labels, entries in expected.values():
        stream = stream_with(streams, job=labels["job"])
        assert stream.labels == expected_stream_labels(labels)
        assert [(e.timestamp_ns, e.line) for e in stream.entries] == [
            (e.timestamp_ns, e.line) for e in entries
        ]


@pytest.mark.parametrize("kind", ["line_too_long", "too_old"])
async def test_an_entry_loki_refuses_is_the_only_one_counted_as_dropped(
    base: str, run_id: str, kind: str
) -> None:
    registry, expected = await ship_with_one_refused(base, run_id, kind)
    arrived = sum(len(entries) for _, entries in expected.values())
    assert metric_total(registry, "loki_write_dropped_entries_total") == 1
    assert metric_total(registry, "loki_write_sent_entries_total") == arrived


# -- tenants (auth_enabled: true) -----------------------------------------------------


async def test_tenants_see_only_their_own_entries(
    tenant_loki: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    labels = {"test_run": run_id, "job": "minilog-tenants"}
    now = time.time_ns()
    by_tenant = {
        "team-a": recent_entries(["a one", "a two", "a three"], now),
        "team-b": recent_entries(["b one", "b two"], now + 10_000),
    }
    for tenant, entries in by_tenant.items():
        registry = CollectorRegistry()
        async with shipper_for(tenant_loki, registry, tenant=tenant) as shipper:
            assert await ship(shipper, {tenant: (labels, entries)}) == [True]
        assert metric_total(registry, "loki_write_sent_entries_total") == len(entries)

    everything = [e for entries in by_tenant.values() for e in entries]
    for tenant, entries in by_tenant.items():
        await read_back(http, tenant_loki, run_id, entries, tenant=tenant)
        # Queried over the range of both tenants' entries: only its own come back.
        streams = await read_back(
            http, tenant_loki, run_id, everything, count=len(entries), tenant=tenant
        )
        assert [s.labels for s in streams] == [expected_stream_labels(labels)]
        assert [(e.timestamp_ns, e.line) for e in streams[0].entries] == [
            (e.timestamp_ns, e.line) for e in entries
        ]

    # Reading without a tenant is refused.
    params = {"query": f'{{test_run="{run_id}"}}', "start": str(now - SECOND_NS)}
    async with http.get(tenant_loki + QUERY_RANGE_PATH, params=params) as response:
        assert response.status == 401
        assert (await response.text()).strip() == "no org id"


async def test_a_push_without_a_tenant_is_refused_401_and_dropped(
    tenant_loki: str, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="minilog")
    registry = CollectorRegistry()
    entries = recent_entries(["no tenant"], time.time_ns())
    async with shipper_for(tenant_loki, registry, tenant="") as shipper:
        assert await ship(shipper, {"one": ({"test_run": run_id}, entries)}) == [True]
    assert (
        metric_total(
            registry, "loki_write_request_duration_seconds_count", status_code="401"
        )
        == 1
    )
    assert metric_total(registry, "loki_write_batch_retries_total") == 0
    assert metric_total(registry, "loki_write_dropped_entries_total") == 1
    assert any("no org id" in r.getMessage() for r in caplog.records)


TENANT_PIPELINE = """
loki.source.api "in" {{
  http {{
    listen_address = "127.0.0.1"
    listen_port    = 0
  }}
  forward_to = [loki.relabel.tenant.receiver]
}}

loki.relabel "tenant" {{
  forward_to = [loki.write.out.receiver]
  rule {{
    source_labels = ["team"]
    regex         = "(.+)"
    target_label  = "__tenant_id__"
  }}
}}

loki.write "out" {{
  endpoint {{
    url                = "{url}"
    batch_wait         = "50ms"
    min_backoff_period = "50ms"
    max_backoff_period = "500ms"
  }}
}}
"""


async def test_loki_write_routes_each_stream_to_its_tenant_id_label(
    tenant_loki: str, http: aiohttp.ClientSession, run_id: str, tmp_path: Path
) -> None:
    """``__tenant_id__``, set by a relabel rule or by ``loki.source.api`` from the
    pushed ``X-Scope-OrgID``, picks the tenant ``loki.write`` sends to; it is not
    stored as a label."""
    config = tmp_path / "tenants.alloy"
    config.write_text(TENANT_PIPELINE.format(url=tenant_loki + PUSH_PATH))
    start_ns = time.time_ns()
    pushes = [  # (tenant header sent to the agent, stream labels, lines)
        (None, {"test_run": run_id, "team": "alpha"}, ["alpha 1", "alpha 2"]),
        (None, {"test_run": run_id, "team": "beta"}, ["beta 1"]),
        ("gamma", {"test_run": run_id, "job": "by-header"}, ["gamma 1", "gamma 2"]),
    ]
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        api = agent.component("loki.source.api.in").url  # type: ignore[attr-defined]
        for header, labels, lines in pushes:
            body = {
                "streams": [
                    {
                        "stream": labels,
                        "values": [
                            [str(start_ns + i), ln] for i, ln in enumerate(lines)
                        ],
                    }
                ]
            }
            async with http.post(
                api + PUSH_PATH, json=body, headers=tenant_headers(header or "")
            ) as response:
                assert response.status == 204, await response.text()
    finally:
        await agent.aclose()  # drains loki.write
    end_ns = time.time_ns() + SECOND_NS  # loki.source.api stamps entries on receipt
    for header, labels, lines in pushes:
        tenant = header or labels["team"]
        streams = await wait_for_entries(
            http,
            tenant_loki,
            f'{{test_run="{run_id}"}}',
            len(lines),
            start_ns=start_ns - SECOND_NS,
            end_ns=end_ns,
            tenant=tenant,
        )
        assert [s.labels for s in streams] == [expected_stream_labels(labels)]
        assert [e.line for e in streams[0].entries] == lines


# -- Loki's own rate limit (429) ------------------------------------------------------

# Far below one request's worth of a default batch, so most requests meet a 429.
RATE_LIMIT_MB = 0.05


@pytest.fixture(scope="module")
def limited_loki(loki_starter: LokiStarter) -> Iterator[str]:
    """A Loki with the seed's config and a low per-tenant ingestion rate."""
    limits = {
        "ingestion_rate_mb": RATE_LIMIT_MB,
        "ingestion_burst_size_mb": RATE_LIMIT_MB,
    }
    with loki_starter({"limits_config": limits}) as loki:
        yield loki.base_url


async def test_429_from_the_ingestion_rate_limit_is_retried_until_all_is_stored(
    limited_loki: str, http: aiohttp.ClientSession, run_id: str
) -> None:
    burst_bytes = int(RATE_LIMIT_MB * (1 << 20))
    # Four bursts' worth in batches a quarter of a burst: Loki must refuse some
    # requests (429) and accept each on a retry once its bucket refills.
    line_size = 1000
    count = 4 * burst_bytes // line_size
    entries = recent_entries(
        [f"{i:06d} " + "r" * (line_size - 7) for i in range(count)], time.time_ns()
    )
    labels = {"test_run": run_id, "job": "minilog-rate-limited"}
    registry = CollectorRegistry()
    async with shipper_for(
        limited_loki,
        registry,
        batch_wait=0.01,
        batch_size=burst_bytes // 4,
        max_backoff_retries=1000,  # a bound for the test; Alloy retries 10 times
    ) as shipper:
        assert await ship(shipper, {"one": (labels, entries)}) == [True]
    assert (
        metric_total(
            registry, "loki_write_request_duration_seconds_count", status_code="429"
        )
        >= 1
    )
    assert metric_total(registry, "loki_write_batch_retries_total") >= 1
    assert metric_total(registry, "loki_write_dropped_entries_total") == 0
    assert metric_total(registry, "loki_write_sent_entries_total") == count

    streams = await read_back(http, limited_loki, run_id, entries)
    assert len(streams) == 1
    assert [(e.timestamp_ns, e.line) for e in streams[0].entries] == [
        (e.timestamp_ns, e.line) for e in entries
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
