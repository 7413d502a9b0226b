"""Push receiver and FakeLoki: real HTTP bodies in, Loki's answers and entries out.

What Loki itself decides (status codes, error bodies, label validation, which JSON
shapes it reads and how) is proved twice, through the ``target`` fixture: against
FakeLoki and against a real Loki 3.6 (``real_loki``; skipped with the reason when there
is none). Those tests push recent timestamps and a fresh ``run`` label, which the real
Loki needs to store and tell runs apart.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from loki_helpers import (
    PUSH_PATH,
    expected_stream_labels,
    tenant_headers,
    wait_for_entries,
)
from prometheus_client import CollectorRegistry

from minilog.loki.receiver import PushReceiver
from minilog.loki.wire import compress, encode_push_request
from minilog.model import LogEntry, StreamBatch
from minilog.testing import FakeLoki

DATA = Path(__file__).resolve().parents[1] / "data" / "loki-push"
VECTORS = {v["name"]: v for v in json.loads((DATA / "vectors.json").read_text())}
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


SECOND_NS = 1_000_000_000
Stored = list[tuple[dict[str, str], LogEntry]]


@dataclass
class Target:
    """Where a twin test pushes: FakeLoki or a real Loki 3.6, and what it stored."""

    name: str
    push_url: str
    fake: FakeLoki | None = None
    base: str = ""
    tenant: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """``X-Scope-OrgID`` for a real Loki that needs one (see ``tenant_headers``)."""
        return {} if self.fake is not None else tenant_headers(self.tenant)

    async def post(
        self,
        http: aiohttp.ClientSession,
        body: bytes,
        headers: dict[str, str],
        path: str = PUSH_PATH,
    ) -> tuple[int, str]:
        url = self.push_url.removesuffix(PUSH_PATH) + path
        return await post(http, url, body, {**self.headers, **headers})

    async def stored(
        self, http: aiohttp.ClientSession, run: str, count: int = 0
    ) -> Stored:
        """Entries labelled ``run="<run>"`` pushed in the last minute, with the stream
        labels Loki returns (``service_name`` added for FakeLoki's too), sorted. Waits
        (bounded) for ``count`` of them on the real Loki."""
        if self.fake is not None:
            return _sorted(
                (expected_stream_labels(labels), entry)
                for labels, entry in self.fake.entries
                if labels.get("run") == run
            )
        now = time.time_ns()
        streams = await wait_for_entries(
            http,
            self.base,
            f'{{run="{run}"}}',
            count,
            start_ns=now - 60 * SECOND_NS,
            end_ns=now + SECOND_NS,
            attempts=20 if count else 1,
            tenant=self.tenant,
        )
        return _sorted(
            (
                stream.labels,
                LogEntry(
                    e.timestamp_ns, e.line, tuple(sorted(e.metadata_sent().items()))
                ),
            )
            for stream in streams
            for e in stream.entries
        )


def _sorted(items: Iterable[tuple[dict[str, str], LogEntry]]) -> Stored:
    return sorted(items, key=lambda item: (item[1], sorted(item[0].items())))


TWINS = ["fake", pytest.param("loki", marks=pytest.mark.loki)]


@pytest.fixture(params=TWINS)
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "fake":
        async with FakeLoki() as fake:
            yield Target("fake", fake.push_url, fake=fake)
    else:
        base = request.getfixturevalue("loki_base")
        yield Target("loki", base + PUSH_PATH, base=base)


@pytest.fixture(params=TWINS)
async def tenant_target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    """As ``target``, the real Loki with ``auth_enabled: true``."""
    if request.param == "fake":
        async with FakeLoki() as fake:
            yield Target("fake", fake.push_url, fake=fake)
    else:
        base = request.getfixturevalue("tenant_loki")
        yield Target("loki", base + PUSH_PATH, base=base, tenant="minilog-test")


@pytest.fixture
def run() -> str:
    return uuid.uuid4().hex


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    # No automatic Content-Type: the tests decide whether one is sent.
    async with http.post(
        url, data=body, headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        return response.status, await response.text()


def snappy_body(streams: list[tuple[str, list[LogEntry]]]) -> bytes:
    return compress(encode_push_request(streams))


def vector_entries(name: str) -> list[tuple[str, list[LogEntry]]]:
    return [
        (
            s["labels"],
            [
                LogEntry(
                    int(e["ts_unix_nano"]),
                    e["line"],
                    tuple((k, v) for k, v in e.get("structured_metadata", [])),
                )
                for e in s["entries"]
            ],
        )
        for s in VECTORS[name]["request"]["streams"]
    ]


@pytest.mark.parametrize("name", sorted(VECTORS))
async def test_golden_snappy_bodies_are_accepted_and_decoded(
    loki: FakeLoki, http: aiohttp.ClientSession, name: str
) -> None:
    body = (DATA / f"{name}.pb.snappy").read_bytes()
    assert await post(http, loki.push_url, body, PROTOBUF) == (204, "")
    expected = vector_entries(name)
    assert [entry for _, entry in loki.entries] == [e for _, es in expected for e in es]
    assert loki.requests.count == 1
    assert loki.requests.last_headers["Content-Type"] == "application/x-protobuf"


async def test_escaped_labels_arrive_parsed(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = (DATA / "escaped_labels.pb.snappy").read_bytes()
    await post(http, loki.push_url, body, PROTOBUF)
    labels, _ = loki.entries[0]
    assert labels == {"path": "C:\\temp\\x", "quote": 'say "hi"', "nl": "a\nb"}
    assert list(loki.streams()) == [
        r'{nl="a\nb", path="C:\\temp\\x", quote="say \"hi\""}'
    ]


async def test_multi_stream_request_groups_by_stream(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = (DATA / "multi.pb.snappy").read_bytes()
    await post(http, loki.push_url, body, PROTOBUF)
    streams = loki.streams()
    assert [len(v) for v in streams.values()] == [3, 1]
    assert streams['{service="web-gateway", stream="stderr"}'][0].line == (
        "error: upstream timeout\twith tab"
    )


def json_v1_body(run: str, now: int) -> bytes:
    return orjson.dumps(
        {
            "streams": [
                {
                    "stream": {"job": "test", "host": "a", "empty": "", "run": run},
                    "values": [
                        [str(now), "hello"],
                        [str(now + 1), "with metadata", {"trace_id": "abc"}],
                        None,
                    ],
                },
                {"stream": {"job": "other", "run": run}, "values": None},
            ]
        }
    )


def json_v1_stored(run: str, now: int) -> Stored:
    # Empty label values are dropped; Loki adds service_name from job.
    labels = {"host": "a", "job": "test", "run": run, "service_name": "test"}
    return [
        (labels, LogEntry(now, "hello")),
        (labels, LogEntry(now + 1, "with metadata", (("trace_id", "abc"),))),
    ]


async def test_json_v1_push_is_decoded(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    now = time.time_ns()
    assert await target.post(http, json_v1_body(run, now), JSON) == (
        204,
        "",
    )
    assert await target.stored(http, run, 2) == json_v1_stored(run, now)
    if target.fake is not None:
        assert list(target.fake.streams()) == [f'{{host="a", job="test", run="{run}"}}']


async def test_gzip_json_push_is_decoded(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    now = time.time_ns()
    headers = {**JSON, "Content-Encoding": "gzip"}
    body = gzip.compress(json_v1_body(run, now))
    assert await target.post(http, body, headers) == (204, "")
    assert await target.stored(http, run, 2) == json_v1_stored(run, now)


async def test_deflate_wrapped_snappy_protobuf_is_decoded(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    now = time.time_ns()
    entries = [LogEntry(now, "x"), LogEntry(now + 1, "y")]
    raw = snappy_body([(f'{{a="b", run="{run}"}}', entries)])
    packer = zlib.compressobj(wbits=-15)
    body = packer.compress(raw) + packer.flush()
    headers = {**PROTOBUF, "Content-Encoding": "deflate"}
    assert await target.post(http, body, headers) == (204, "")
    labels = expected_stream_labels({"a": "b", "run": run})
    assert await target.stored(http, run, 2) == [(labels, e) for e in entries]


async def test_snappy_content_encoding_is_tolerated(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    entry = LogEntry(time.time_ns(), "x")
    body = snappy_body([(f'{{a="b", run="{run}"}}', [entry])])
    headers = {**PROTOBUF, "Content-Encoding": "snappy"}
    assert await target.post(http, body, headers) == (204, "")
    labels = expected_stream_labels({"a": "b", "run": run})
    assert await target.stored(http, run, 1) == [(labels, entry)]


async def test_legacy_prom_push_takes_the_old_json_shape(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    # A recent whole second, written in UTC and at +01:00 with a fraction.
    second = time.time_ns() // SECOND_NS - 10
    utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    zoned = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second + 3600))
    body = orjson.dumps(
        {
            "streams": [
                {
                    "labels": f'{{job="test", run="{run}"}}',
                    "entries": [
                        {"ts": f"{utc}.123456789Z", "line": "hello"},
                        {"ts": f"{zoned}.5+01:00", "line": "zoned"},
                    ],
                }
            ]
        }
    )
    path = "/api/prom/push"
    assert await target.post(http, body, JSON, path=path) == (204, "")
    labels = expected_stream_labels({"job": "test", "run": run})
    assert await target.stored(http, run, 2) == [
        (labels, LogEntry(second * SECOND_NS + 123_456_789, "hello")),
        (labels, LogEntry(second * SECOND_NS + 500_000_000, "zoned")),
    ]


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        pytest.param({}, b"x", 400, "mime: no media type", id="no-type"),
        pytest.param(
            {"Content-Type": "application/json; charsetutf-8"},
            b"{}",
            400,
            "mime: invalid media parameter",
            id="bad-param",
        ),
        pytest.param(
            {**PROTOBUF, "Content-Encoding": "br"},
            b"x",
            400,
            'Content-Encoding "br" not supported',
            id="br",
        ),
        pytest.param(  # Loki compares the encoding exactly
            {**PROTOBUF, "Content-Encoding": "GZIP"},
            b"x",
            400,
            'Content-Encoding "GZIP" not supported',
            id="encoding-case",
        ),
        pytest.param(
            PROTOBUF, b"\x05garbage", 400, "snappy: corrupt input", id="corrupt-snappy"
        ),
        pytest.param(
            PROTOBUF,
            compress(b"\x08\x01"),
            400,
            "proto: wrong wireType = 0 for field Streams",
            id="wire-type",
        ),
        pytest.param(
            JSON,
            b'{"streams": []}',
            422,
            "error at least one valid stream is required for ingestion",
            id="no-streams-json",
        ),
        pytest.param(
            PROTOBUF,
            compress(b""),
            422,
            "error at least one valid stream is required for ingestion",
            id="no-streams-pb",
        ),
        pytest.param(
            JSON,
            b'{"streams": [{"stream": {"a": "b"}, "values": [[1, "x"]]}]}',
            400,
            "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: "
            "unmarshalerDecoder: Value looks like Number/Boolean/None, "
            "but can't find its end: ',' or '}' symbol",
            id="numeric-ts",
        ),
        # Invalid JSON: Loki's decoder words its errors its own way; both say 400.
        pytest.param(JSON, b'{"streams": [', 400, "", id="bad-json"),
    ],
)
async def test_bad_requests_get_loki_status_and_text_body(
    target: Target,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    body: bytes,
    status: int,
    message: str,
) -> None:
    async with http.post(
        target.push_url,
        data=body,
        headers={**target.headers, **headers},
        skip_auto_headers=["Content-Type"],
    ) as response:
        text = await response.text()
        assert response.status == status
        assert response.content_type == "text/plain"
    assert text.endswith("\n")
    assert text.startswith(message)
    if target.fake is not None:
        assert target.fake.entries == []


async def test_unparseable_labels_fail_the_whole_request(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    now = time.time_ns()
    body = snappy_body(
        [
            (f'{{a="ok", run="{run}"}}', [LogEntry(now, "x")]),
            ('{foo.bar="x"}', [LogEntry(now, "y")]),
        ]
    )
    status, text = await target.post(http, body, PROTOBUF)
    assert (status, text) == (
        400,
        "couldn't parse labels: 1:5: parse error: "
        "unexpected character inside braces: '.'\n",
    )
    assert await target.stored(http, run) == []


async def test_json_keys_that_are_not_identifiers_fail_label_parsing(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    body = orjson.dumps(
        {
            "streams": [
                {
                    "stream": {"service.name": "x", "run": run},
                    "values": [[str(time.time_ns()), "a"]],
                }
            ]
        }
    )
    status, text = await target.post(http, body, JSON)
    assert status == 400
    assert text.startswith("couldn't parse labels: 1:")
    assert "parse error: unexpected character inside braces: '.'" in text
    assert await target.stored(http, run) == []


async def test_invalid_streams_are_dropped_and_reported_while_valid_ones_pass(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    now = time.time_ns()
    many = "{" + ", ".join(f'l{i:02d}="v"' for i in range(16)) + "}"
    kept = LogEntry(now, "kept")
    body = snappy_body(
        [
            ('{a="1", a="2"}', [LogEntry(now, "dup")]),
            (many, [LogEntry(now, "many")]),
            ("{" + "n" * 1025 + '="v"}', [LogEntry(now, "long name")]),
            ('{a="' + "v" * 2049 + '"}', [LogEntry(now, "long value")]),
            (f'{{good="yes", run="{run}"}}', [kept]),
        ]
    )
    status, text = await target.post(http, body, PROTOBUF)
    assert status == 400
    assert text.endswith("\n")
    # Loki's GroupedErrors: distinct messages, each counted, joined with "; " (in Go
    # map order). Each names the stream with the service_name Loki adds first.
    unknown = 'service_name="unknown_service"'
    assert set(re.split(r"; (?=\d+ errors like: )", text[:-1])) == {
        f'1 errors like: stream \'{{a="1", a="2", {unknown}}}\' '
        "has duplicate label name: 'a'",
        f"1 errors like: entry for stream '{many[:-1]}, {unknown}}}' "
        "has 16 label names; limit 15",
        f"1 errors like: stream '{{{'n' * 1025}=\"v\", {unknown}}}' "
        f"has label name too long: '{'n' * 1025}'",
        f"1 errors like: stream '{{a=\"{'v' * 2049}\", {unknown}}}' "
        f"has label value too long: '{'v' * 2049}'",
    }
    assert await target.stored(http, run, 1) == [
        (expected_stream_labels({"good": "yes", "run": run}), kept)
    ]


async def test_a_repeated_single_error_is_counted(
    target: Target, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="1", a="2"}', [LogEntry(time.time_ns(), "x")])] * 2)
    status, text = await target.post(http, body, PROTOBUF)
    assert (status, text) == (
        400,
        '2 errors like: stream \'{a="1", a="2", service_name="unknown_service"}\' '
        "has duplicate label name: 'a'\n",
    )


async def test_one_error_is_reported_bare(
    target: Target, http: aiohttp.ClientSession
) -> None:
    # service_name comes from the first discover_service_name label with a value.
    body = snappy_body([('{a="1", a="2", app="web"}', [LogEntry(time.time_ns(), "x")])])
    _, text = await target.post(http, body, PROTOBUF)
    assert text == (
        'stream \'{a="1", a="2", app="web", service_name="web"}\' '
        "has duplicate label name: 'a'\n"
    )


async def test_streams_without_entries_are_skipped(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    entry = LogEntry(time.time_ns(), "z")
    body = snappy_body([('{a="1", a="2"}', []), (f'{{b="1", run="{run}"}}', [entry])])
    assert await target.post(http, body, PROTOBUF) == (204, "")
    assert await target.stored(http, run, 1) == [
        (expected_stream_labels({"b": "1", "run": run}), entry)
    ]


async def test_tenant_header_becomes_the_tenant_label(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="b", __internal="x"}', [LogEntry(1, "x")])])
    headers = {**PROTOBUF, "X-Scope-OrgID": "team-a"}
    assert await post(http, loki.push_url, body, headers) == (204, "")
    assert await post(http, loki.push_url, body, PROTOBUF) == (204, "")
    assert [labels for labels, _ in loki.entries] == [
        {"a": "b", "__tenant_id__": "team-a"},
        {"a": "b"},
    ]
    assert loki.streams(tenant="team-a") == {'{a="b"}': [LogEntry(1, "x")]}


@pytest.mark.parametrize(
    ("tenant", "message"),
    [
        ("a|b", "multiple org IDs present"),
        ("a/b", "tenant ID 'a/b' contains unsupported character '/'"),
        ("..", "tenant ID is '.' or '..'"),
        ("t" * 151, "tenant ID is too long: max 150 characters"),
    ],
)
async def test_invalid_tenant_ids_are_refused(
    tenant_target: Target, http: aiohttp.ClientSession, tenant: str, message: str
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(time.time_ns(), "x")])])
    headers = {**PROTOBUF, "X-Scope-OrgID": tenant}
    assert await tenant_target.post(http, body, headers) == (
        400,
        message + "\n",
    )


async def test_size_limit_answers_413_before_decoding(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeLoki(max_recv_msg_size=1000) as loki:
        big = snappy_body([('{a="b"}', [LogEntry(1, "y" * 2000)])])
        assert len(big) < 1000  # compresses well: the snappy header declares the size
        status, text = await post(http, loki.push_url, big, PROTOBUF)
        assert status == 413
        assert text.startswith(
            "request body too large: message size too large than max ("
        )
        assert text.endswith(" vs 1000)\n")
        incompressible = bytes(range(256)) * 8
        status, _ = await post(http, loki.push_url, incompressible, PROTOBUF)
        assert status == 413
        assert loki.entries == []


async def test_handler_is_awaited_before_the_answer(
    http: aiohttp.ClientSession,
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    received: list[list[StreamBatch]] = []

    async def slow(batches: list[StreamBatch]) -> None:
        received.append(batches)
        entered.set()
        await release.wait()

    async with PushReceiver(slow) as receiver:
        body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
        push = asyncio.create_task(post(http, receiver.push_url, body, PROTOBUF))
        await entered.wait()
        await asyncio.sleep(0.02)  # room for a wrongly early answer to reach the client
        assert not push.done()
        release.set()
        assert await push == (204, "")
    assert received[0][0].labels == {"a": "b"}
    assert received[0][0].entries == [LogEntry(1, "x")]


async def test_without_handler_entries_are_only_counted(
    http: aiohttp.ClientSession,
) -> None:
    registry = CollectorRegistry()
    async with PushReceiver(registry=registry) as receiver:
        body = (DATA / "multi.pb.snappy").read_bytes()
        assert await post(http, receiver.push_url, body, PROTOBUF) == (204, "")
        bad = snappy_body([("{a=}", [LogEntry(1, "x")])])
        status, _ = await post(http, receiver.push_url, bad, PROTOBUF)
        assert status == 400
    assert receiver.entries_total == 4
    assert registry.get_sample_value("loki_source_api_entries_written_total") == 4


async def test_metrics_use_alloy_names(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(1, "x"), LogEntry(2, "y")])])
    await post(http, loki.push_url, body, PROTOBUF)
    await post(http, loki.push_url, body, {})
    registry = loki.registry
    assert registry.get_sample_value("loki_source_api_entries_written_total") == 2
    for status in ("204", "400"):
        labels = {
            "method": "POST",
            "route": "loki_api_v1_push",
            "status_code": status,
            "ws": "false",
        }
        count = registry.get_sample_value(
            "loki_source_api_request_duration_seconds_count", labels
        )
        assert count == 1
    assert registry.get_sample_value(
        "loki_source_api_request_message_bytes_sum",
        {"method": "POST", "route": "loki_api_v1_push"},
    ) == 2 * len(body)


async def test_faults_respond_for_n_requests_then_recover(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
    loki.faults.respond(429, "slow down", times=2)
    assert await post(http, loki.push_url, body, PROTOBUF) == (429, "slow down\n")
    assert await post(http, loki.push_url, body, PROTOBUF) == (429, "slow down\n")
    assert await post(http, loki.push_url, body, PROTOBUF) == (204, "")
    assert loki.requests.count == 3
    assert loki.requests.statuses == {429: 2, 204: 1}
    assert loki.lines() == ["x"]


async def test_faults_respond_until_cleared(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
    loki.faults.respond(500)
    for _ in range(3):
        assert await post(http, loki.push_url, body, PROTOBUF) == (
            500,
            "Internal Server Error\n",
        )
    loki.faults.clear()
    assert await post(http, loki.push_url, body, PROTOBUF) == (204, "")


async def test_hang_holds_requests_until_cleared(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
    loki.faults.hang()
    push = asyncio.create_task(post(http, loki.push_url, body, PROTOBUF))
    await loki.wait_for_requests(1)
    await asyncio.sleep(0.05)  # give a wrongly answered request time to complete
    assert not push.done()
    assert loki.entries == []
    loki.faults.clear()
    assert await push == (204, "")
    assert loki.lines() == ["x"]


async def test_hanging_request_times_out_at_the_client(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
    loki.faults.hang()
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            loki.push_url,
            data=body,
            headers=PROTOBUF,
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as response:
            await response.read()


async def test_restart_keeps_the_port(http: aiohttp.ClientSession) -> None:
    loki = FakeLoki()
    await loki.start()
    port, url = loki.port, loki.push_url
    assert port > 0
    await loki.aclose()
    await loki.aclose()  # idempotent
    body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, url, body, PROTOBUF)
    await loki.start()
    await loki.start()  # idempotent
    try:
        assert loki.port == port
        assert await post(http, url, body, PROTOBUF) == (204, "")
    finally:
        await loki.aclose()


async def test_ready_and_alias_routes(http: aiohttp.ClientSession) -> None:
    async with FakeLoki(path_prefix="/tenant-a/") as loki:
        assert loki.push_url.endswith("/tenant-a/loki/api/v1/push")
        async with http.get(loki.url + "/ready") as response:
            assert (response.status, await response.text()) == (200, "ready\n")
        body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
        assert await post(http, loki.url + "/api/v1/push", body, PROTOBUF) == (204, "")
        async with http.get(loki.push_url) as response:
            assert response.status == 405


async def test_wait_for_entries_wakes_on_arrival_and_times_out(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    waiter = asyncio.create_task(loki.wait_for_entries(2))
    body = snappy_body([('{a="b"}', [LogEntry(1, "x"), LogEntry(2, "y")])])
    await post(http, loki.push_url, body, PROTOBUF)
    await waiter
    with pytest.raises(TimeoutError):
        await loki.wait_for_entries(3, timeout=0.05)


async def test_url_of_a_wildcard_listener_is_loopback() -> None:
    receiver = PushReceiver(host="0.0.0.0", port=0)
    await receiver.start()
    try:
        assert receiver.url == f"http://127.0.0.1:{receiver.port}"
    finally:
        await receiver.aclose()


async def test_failing_handler_answers_500_and_the_server_goes_on(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def flaky(batches: list[StreamBatch]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("queue closed")

    async with PushReceiver(flaky) as receiver:
        body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
        assert await post(http, receiver.push_url, body, PROTOBUF) == (
            500,
            "queue closed\n",
        )
        assert await post(http, receiver.push_url, body, PROTOBUF) == (204, "")
    assert receiver.entries_total == 1
    assert "forwarding pushed entries failed" in caplog.text


@pytest.mark.parametrize(
    "ts", ["1_000", " 12", "12.5", "0x10", "+5", "", "99999999999999999999"]
)
async def test_json_timestamps_must_be_strings_of_digits(
    target: Target, http: aiohttp.ClientSession, ts: str
) -> None:
    body = orjson.dumps({"streams": [{"stream": {"a": "b"}, "values": [[ts, "x"]]}]})
    status, text = await target.post(http, body, JSON)
    assert status == 400
    assert text.startswith(
        "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: unmarshalerDecoder: "
        "Value looks like Number/Boolean/None, but can't find its end"
    )


def _stream(run: str, values: object, **labels: object) -> bytes:
    return orjson.dumps(
        {"streams": [{"stream": {"run": run, **labels}, "values": values}]}
    )


async def test_json_shapes_loki_reads_leniently(
    target: Target, http: aiohttp.ClientSession, run: str
) -> None:
    """Loki keeps a label value of another JSON type as its JSON text, reads an entry
    without its line as an empty line, ignores items after the metadata, lets a later
    duplicate key win, and unescapes keys."""
    now = time.time_ns()
    pushes = [
        _stream(run, [[str(now), "typed"]], n=1, t=True, z=None, o={"b": 1}),
        _stream(run, [[str(now + 1)]], kind="no-line"),
        _stream(run, [[str(now + 2), "four items", {"k": "v"}, 5]], kind="extra"),
        f'{{"streams": [{{"stream": {{"run": "{run}", "kind": "a", "kind": "dup", '
        f'"j\\u006fb": "escaped-key"}}, "values": [["{now + 3}", "dup"]]}}]}}'.encode(),
    ]
    for body in pushes:
        assert await target.post(http, body, JSON) == (204, ""), body
    assert await target.stored(http, run, 4) == [
        (
            {"n": "1", "t": "true", "z": "null", "o": '{"b":1}', "run": run}
            | {"service_name": "unknown_service"},
            LogEntry(now, "typed"),
        ),
        (
            expected_stream_labels({"kind": "no-line", "run": run}),
            LogEntry(now + 1, ""),
        ),
        (
            expected_stream_labels({"kind": "extra", "run": run}),
            LogEntry(now + 2, "four items", (("k", "v"),)),
        ),
        (
            expected_stream_labels({"job": "escaped-key", "kind": "dup", "run": run}),
            LogEntry(now + 3, "dup"),
        ),
    ]


_PREFIX = "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: "
_OBJECT = (
    "unmarshalerDecoder: Value looks like object, but can't find closing '}' symbol"
)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param(b"null", 422, "error at least one valid stream", id="null-body"),
        pytest.param(
            b"[1]", 400, "readObjectStart: expect { or n, but found [", id="array-body"
        ),
        pytest.param(
            b'{"streams": "x"}',
            400,
            _PREFIX + 'decode slice: expect [ or n, but found "',
            id="streams-string",
        ),
        pytest.param(b'{"streams": [null]}', 400, _PREFIX + _OBJECT, id="null-stream"),
        pytest.param(b'{"streams": [1]}', 400, _PREFIX + _OBJECT, id="number-stream"),
        pytest.param(
            b'{"streams": [{"stream": null, "values": []}]}',
            400,
            _PREFIX + _OBJECT,
            id="null-labels",
        ),
        pytest.param(
            b'{"streams": [{"stream": {"a": "b"}, "values": {}}]}',
            400,
            _PREFIX + "unmarshalerDecoder: Unknown value type",
            id="values-object",
        ),
        pytest.param(
            b'{"streams": [{"stream": {"a": "b"}, "values": ["x"]}]}',
            400,
            _PREFIX + "unmarshalerDecoder: Malformed JSON error",
            id="entry-string",
        ),
        pytest.param(
            b'{"streams": [{"stream": {"a": "b"}, "values": [["1", null]]}]}',
            400,
            _PREFIX + "unmarshalerDecoder: Value is string, but can't find closing",
            id="null-line",
        ),
        pytest.param(
            b'{"streams": [{"stream": {"a": "b"}, "values": [["1", "x", null]]}]}',
            400,
            _PREFIX + _OBJECT,
            id="null-metadata",
        ),
        pytest.param(
            b'{"streams": [{"stream": {"a": "b"}, "values": [["1", "x", {"k": 1}]]}]}',
            400,
            _PREFIX + "unmarshalerDecoder: Value is string, but can't find closing",
            id="number-metadata",
        ),
    ],
)
async def test_json_shapes_loki_refuses(
    target: Target,
    http: aiohttp.ClientSession,
    body: bytes,
    status: int,
    message: str,
) -> None:
    got_status, text = await target.post(http, body, JSON)
    assert (got_status, text[: len(message)]) == (status, message)
    assert text.endswith("\n")
    if target.fake is not None:
        assert target.fake.entries == []


async def test_raw_endpoint_takes_one_entry_per_line(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = b'{"msg":"one"}\r\n\n{"msg":"two"}\nthree\nthree'
    before = time.time_ns()
    assert await post(http, loki.url + "/loki/api/v1/raw", body, {}) == (204, "")
    assert loki.lines() == ['{"msg":"one"}', '{"msg":"two"}', "three", "three"]
    labels, first = loki.entries[0]
    assert labels == {}
    assert before <= first.timestamp_ns <= time.time_ns()
    # Each line its own nanosecond: Loki would keep only one of two equal entries.
    stamps = [e.timestamp_ns for _, e in loki.entries]
    assert stamps == sorted(set(stamps))


async def test_a_large_body_is_decoded_off_the_loop_and_whole(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    # Random lines do not compress: the body is well past the inline-decode size.
    lines = [os.urandom(60).hex() for _ in range(6000)]
    entries = [
        LogEntry(1_700_000_000_000_000_000 + i, line) for i, line in enumerate(lines)
    ]
    body = compress(encode_push_request([('{job="big"}', entries)]))
    assert len(body) > 256 << 10
    assert await post(http, loki.push_url, body, PROTOBUF) == (204, "")
    assert loki.lines() == lines
