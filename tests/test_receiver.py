"""Push receiver and FakeLoki: real HTTP bodies in, Loki's answers and entries out."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from minilog.encode import compress, encode_push_request
from minilog.model import LogEntry, StreamBatch
from minilog.receiver import PushReceiver
from minilog.testing import FakeLoki

DATA = Path(__file__).parent / "data" / "loki-push"
VECTORS = {v["name"]: v for v in json.loads((DATA / "vectors.json").read_text())}
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def loki() -> AsyncIterator[FakeLoki]:
    async with FakeLoki() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


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


def json_v1_body() -> bytes:
    return orjson.dumps(
        {
            "streams": [
                {
                    "stream": {"job": "test", "host": "a", "empty": ""},
                    "values": [
                        ["1700000000123456789", "hello"],
                        ["1700000000123456790", "with metadata", {"trace_id": "abc"}],
                        None,
                    ],
                },
                {"stream": {"job": "other"}, "values": None},
            ]
        }
    )


async def test_json_v1_push_is_decoded(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    assert await post(http, loki.push_url, json_v1_body(), JSON) == (204, "")
    assert loki.streams() == {
        '{host="a", job="test"}': [
            LogEntry(1700000000123456789, "hello"),
            LogEntry(1700000000123456790, "with metadata", (("trace_id", "abc"),)),
        ]
    }


async def test_gzip_json_push_is_decoded(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    headers = {**JSON, "Content-Encoding": "gzip"}
    assert await post(http, loki.push_url, gzip.compress(json_v1_body()), headers) == (
        204,
        "",
    )
    assert len(loki.entries) == 2


async def test_deflate_wrapped_snappy_protobuf_is_decoded(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    raw = snappy_body([('{a="b"}', [LogEntry(1, "x"), LogEntry(2, "y")])])
    packer = zlib.compressobj(wbits=-15)
    body = packer.compress(raw) + packer.flush()
    headers = {**PROTOBUF, "Content-Encoding": "deflate"}
    assert await post(http, loki.push_url, body, headers) == (204, "")
    assert loki.lines() == ["x", "y"]


async def test_snappy_content_encoding_is_tolerated(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
    headers = {**PROTOBUF, "Content-Encoding": "snappy"}
    assert await post(http, loki.push_url, body, headers) == (204, "")


async def test_legacy_prom_push_takes_the_old_json_shape(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = orjson.dumps(
        {
            "streams": [
                {
                    "labels": '{job="test"}',
                    "entries": [
                        {"ts": "2023-11-14T22:13:20.123456789Z", "line": "hello"},
                        {"ts": "2023-11-14T23:13:20.5+01:00", "line": "zoned"},
                    ],
                }
            ]
        }
    )
    assert await post(http, loki.url + "/api/prom/push", body, JSON) == (204, "")
    assert loki.streams() == {
        '{job="test"}': [
            LogEntry(1_700_000_000_123_456_789, "hello"),
            LogEntry(1_700_000_000_500_000_000, "zoned"),
        ]
    }


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({}, b"x", 400, "mime: no media type"),
        (
            {"Content-Type": "application/json; charsetutf-8"},
            b"{}",
            400,
            "mime: invalid media parameter",
        ),
        (
            {**PROTOBUF, "Content-Encoding": "br"},
            b"x",
            400,
            'Content-Encoding "br" not supported',
        ),
        (  # Loki compares the encoding exactly
            {**PROTOBUF, "Content-Encoding": "GZIP"},
            b"x",
            400,
            'Content-Encoding "GZIP" not supported',
        ),
        (PROTOBUF, b"\x05garbage", 400, "snappy: corrupt input"),
        (
            PROTOBUF,
            compress(b"\x08\x01"),
            400,
            "proto: wrong wireType = 0 for field Streams",
        ),
        (
            JSON,
            b'{"streams": []}',
            422,
            "error at least one valid stream is required for ingestion",
        ),
        (
            PROTOBUF,
            compress(b""),
            422,
            "error at least one valid stream is required for ingestion",
        ),
        (
            JSON,
            b'{"streams": [{"stream": {"a": "b"}, "values": [[1, "x"]]}]}',
            400,
            "Value is string, but can't find closing '\"' symbol",
        ),
        (JSON, b'{"streams": [', 400, "unexpected end of data"),
    ],
    ids=[
        "no-type",
        "bad-param",
        "br",
        "encoding-case",
        "corrupt-snappy",
        "wire-type",
        "no-streams-json",
        "no-streams-pb",
        "numeric-ts",
        "bad-json",
    ],
)
async def test_bad_requests_get_loki_status_and_text_body(
    loki: FakeLoki,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    body: bytes,
    status: int,
    message: str,
) -> None:
    async with http.post(
        loki.push_url, data=body, headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        text = await response.text()
        assert response.status == status
        assert response.content_type == "text/plain"
    assert text.endswith("\n")
    assert message in text
    assert loki.entries == []


async def test_unparseable_labels_fail_the_whole_request(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body(
        [('{a="ok"}', [LogEntry(1, "x")]), ('{foo.bar="x"}', [LogEntry(1, "y")])]
    )
    status, text = await post(http, loki.push_url, body, PROTOBUF)
    assert (status, text) == (
        400,
        "couldn't parse labels: 1:5: parse error: "
        "unexpected character inside braces: '.'\n",
    )
    assert loki.entries == []


async def test_json_keys_that_are_not_identifiers_fail_label_parsing(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = orjson.dumps(
        {"streams": [{"stream": {"service.name": "x"}, "values": [["1", "a"]]}]}
    )
    status, text = await post(http, loki.push_url, body, JSON)
    assert status == 400
    assert text.startswith("couldn't parse labels: 1:9: parse error:")


async def test_invalid_streams_are_dropped_and_reported_while_valid_ones_pass(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    many = "{" + ", ".join(f'l{i:02d}="v"' for i in range(16)) + "}"
    body = snappy_body(
        [
            ('{a="1", a="2"}', [LogEntry(1, "dup")]),
            (many, [LogEntry(1, "many")]),
            ("{" + "n" * 1025 + '="v"}', [LogEntry(1, "long name")]),
            ('{a="' + "v" * 2049 + '"}', [LogEntry(1, "long value")]),
            ('{good="yes"}', [LogEntry(1, "kept")]),
        ]
    )
    status, text = await post(http, loki.push_url, body, PROTOBUF)
    assert status == 400
    # Loki's GroupedErrors: distinct messages, each counted, joined with "; ". The
    # stream is named as Loki names it, with the service_name its discovery adds.
    assert text.startswith(
        '1 errors like: stream \'{a="1", a="2", service_name="unknown_service"}\''
        " has duplicate label name: 'a'; "
    )
    assert '; 1 errors like: entry for stream \'{l00="v"' in text
    assert (
        'l15="v", service_name="unknown_service"}\' has 16 label names; limit 15; '
        in text
    )
    assert (
        f'; 1 errors like: stream \'{{{"n" * 1025}="v", '
        'service_name="unknown_service"}\' has label name too long: ' in text
    )
    assert text.endswith(f"has label value too long: '{'v' * 2049}'\n")
    assert loki.lines() == ["kept"]


async def test_a_repeated_single_error_is_counted(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="1", a="2"}', [LogEntry(1, "x")])] * 2)
    status, text = await post(http, loki.push_url, body, PROTOBUF)
    assert (status, text) == (
        400,
        '2 errors like: stream \'{a="1", a="2", service_name="unknown_service"}\' '
        "has duplicate label name: 'a'\n",
    )


async def test_one_error_is_reported_bare(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="1", a="2"}', [LogEntry(1, "x")])])
    _, text = await post(http, loki.push_url, body, PROTOBUF)
    assert text == (
        'stream \'{a="1", a="2", service_name="unknown_service"}\' '
        "has duplicate label name: 'a'\n"
    )


async def test_streams_without_entries_are_skipped(
    loki: FakeLoki, http: aiohttp.ClientSession
) -> None:
    body = snappy_body([('{a="1", a="2"}', []), ('{b="1"}', [LogEntry(3, "z")])])
    assert await post(http, loki.push_url, body, PROTOBUF) == (204, "")
    assert loki.lines() == ["z"]


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
    loki: FakeLoki, http: aiohttp.ClientSession, tenant: str, message: str
) -> None:
    body = snappy_body([('{a="b"}', [LogEntry(1, "x")])])
    headers = {**PROTOBUF, "X-Scope-OrgID": tenant}
    assert await post(http, loki.push_url, body, headers) == (400, message + "\n")


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


@pytest.mark.parametrize("ts", ["1_000", " 12", "12.5", "0x10", "99999999999999999999"])
async def test_json_timestamps_must_be_go_integers(
    loki: FakeLoki, http: aiohttp.ClientSession, ts: str
) -> None:
    body = orjson.dumps({"streams": [{"stream": {"a": "b"}, "values": [[ts, "x"]]}]})
    status, text = await post(http, loki.push_url, body, JSON)
    assert status == 400
    assert text.startswith(f'strconv.ParseInt: parsing "{ts}": ')


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
