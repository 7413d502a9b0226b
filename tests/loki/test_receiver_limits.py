"""The push receiver under hostile input: memory budget, decompression bombs, Loki's
per-entry checks (line size, timestamps), slow and vanishing clients.

Each test drives a real ``PushReceiver`` over HTTP and checks what it answered, what
it handed on, what it counted, and what it held.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
from hostile_helpers import drop_mid_body, gzip_json_bomb, snappy_bomb
from loki_helpers import tenant_headers, wait_ready
from prometheus_client import CollectorRegistry

from minilog._httpguard import ServerLimits
from minilog.loki.receiver import PushReceiver
from minilog.loki.validation import EntryLimits
from minilog.loki.wire import compress, encode_push_request
from minilog.model import LogEntry, StreamBatch

__all__: list[str] = []

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
NS = 1_000_000_000


class Sink:
    """A handler that records batches; ``hold()`` makes it wait until ``release()``."""

    def __init__(self) -> None:
        self.batches: list[StreamBatch] = []
        self.entered = asyncio.Event()
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    async def __call__(self, batches: list[StreamBatch]) -> None:
        self.batches.extend(batches)
        self.entered.set()
        if self._gate is not None:
            await self._gate.wait()

    def lines(self) -> list[str]:
        return [e.line for b in self.batches for e in b.entries]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
) -> tuple[int, str, dict[str, str]]:
    # A BytesIO: aiohttp warns about large bytes bodies (and sets Content-Length).
    async with http.post(url, data=io.BytesIO(body), headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def proto_body(entries: list[LogEntry], labels: str = '{job="t"}') -> bytes:
    return compress(encode_push_request([(labels, entries)]))


def go_time(ns: int) -> str:
    return datetime.fromtimestamp(ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ memory budget


async def test_a_gzip_bomb_is_refused_while_inflating_within_the_budget(
    http: aiohttp.ClientSession,
) -> None:
    """A 64 MB line in a ~64 KB gzip body: 413 once the inflated part passes the
    budget, and the receiver never held much more than the budget."""
    budget = 8 << 20
    bomb = gzip_json_bomb(64_000_000)
    assert len(bomb) < 100_000
    sink = Sink()
    async with PushReceiver(sink, max_inflight_bytes=budget) as receiver:
        headers = {**JSON, "Content-Encoding": "gzip"}
        tracemalloc.start()
        try:
            status, text, _ = await post(http, receiver.push_url, bomb, headers)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 413
        assert text.startswith("request body too large: ")
        assert text.endswith(f" bytes, limit: {budget} bytes\n")
        assert peak < 2 * budget
        assert receiver.inflight_bytes == 0
        assert sink.batches == []
        # The same bomb under a max message size smaller than the budget: Loki's text.
    async with PushReceiver(sink, max_recv_msg_size=1 << 20) as small:
        status, text, _ = await post(http, small.push_url, bomb, headers)
        assert status == 413
        assert text.startswith("request body too large: message size too large than")
        assert text.endswith(f" vs {1 << 20})\n")


async def test_deflate_and_multi_member_gzip_are_inflated_whole(
    http: aiohttp.ClientSession,
) -> None:
    sink = Sink()
    one = orjson.dumps({"streams": [{"stream": {"a": "1"}, "values": [["1", "x"]]}]})
    async with PushReceiver(sink) as receiver:
        deflater = zlib.compressobj(wbits=-15)
        raw_deflate = deflater.compress(one) + deflater.flush()
        headers = {**JSON, "Content-Encoding": "deflate"}
        assert (await post(http, receiver.push_url, raw_deflate, headers))[0] == 204
        # Go's gzip reader reads concatenated members as one stream.
        half = len(one) // 2
        members = gzip.compress(one[:half]) + gzip.compress(one[half:])
        headers = {**JSON, "Content-Encoding": "gzip"}
        assert (await post(http, receiver.push_url, members, headers))[0] == 204
        truncated = gzip.compress(one)[:-12]
        status, text, _ = await post(http, receiver.push_url, truncated, headers)
        assert (status, text) == (400, "unexpected EOF\n")
    assert sink.lines() == ["x", "x"]


async def test_a_snappy_bomb_is_refused_by_its_declared_length_before_decoding(
    http: aiohttp.ClientSession,
) -> None:
    budget = 8 << 20
    bomb = snappy_bomb(20_000_000)  # ~1 MB declaring 20 MB
    sink = Sink()
    async with PushReceiver(sink, max_inflight_bytes=budget) as receiver:
        tracemalloc.start()
        try:
            status, text, _ = await post(http, receiver.push_url, bomb, PROTOBUF)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert status == 413
    assert text.endswith(f" bytes, limit: {budget} bytes\n")
    # Never decompressed: the 20 MB were not allocated.
    assert peak < 4 << 20
    assert sink.batches == []


async def test_a_body_over_the_budget_is_refused_unread_and_its_connection_closed(
    http: aiohttp.ClientSession,
) -> None:
    sink = Sink()
    async with PushReceiver(sink, max_inflight_bytes=1 << 20) as receiver:
        big = orjson.dumps(
            {"streams": [{"stream": {"a": "b"}, "values": [["1", "y" * (2 << 20)]]}]}
        )
        status, text, headers = await post(http, receiver.push_url, big, JSON)
        assert status == 413
        assert (
            text
            == f"request body too large: {len(big)} bytes, limit: {1 << 20} bytes\n"
        )
        assert headers.get("Connection") == "close"
        assert receiver.inflight_bytes == 0


async def test_a_chunked_body_is_charged_as_it_arrives(
    http: aiohttp.ClientSession,
) -> None:
    """No Content-Length: each chunk is charged before it is kept."""
    sink = Sink()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"z" * (64 << 10)

    async with PushReceiver(sink, max_inflight_bytes=1 << 20) as receiver:
        async with http.post(receiver.push_url, data=chunks(), headers=JSON) as resp:
            assert resp.status == 413
            assert "limit: 1048576 bytes" in await resp.text()
        assert receiver.inflight_bytes == 0


async def test_requests_beyond_the_budget_get_503_then_pass_once_it_frees(
    http: aiohttp.ClientSession,
) -> None:
    sink = Sink()
    sink.hold()
    line = "p" * 300_000
    body = proto_body([LogEntry(i, line) for i in range(8)], '{job="first"}')
    registry = CollectorRegistry()
    limits = EntryLimits(max_line_size=0)
    async with PushReceiver(
        sink, max_inflight_bytes=6 << 20, entry_limits=limits, registry=registry
    ) as receiver:
        first = asyncio.create_task(post(http, receiver.push_url, body, PROTOBUF))
        await sink.entered.wait()  # the first push holds its decoded entries
        held = receiver.inflight_bytes
        assert held >= 8 * 300_000  # the lines, as str, until the handler returns
        status, text, headers = await post(http, receiver.push_url, body, PROTOBUF)
        assert status == 503
        assert text.startswith("too many push requests in flight")
        assert headers["Retry-After"] == "1"
        assert receiver.inflight_bytes == held  # the refused one gave back its share
        sink.release()
        assert (await first)[0] == 204
        assert receiver.inflight_bytes == 0
        assert (await post(http, receiver.push_url, body, PROTOBUF))[0] == 204
    assert len(sink.lines()) == 16
    refused = registry.get_sample_value(
        "minilog_source_api_refused_requests_total", {"reason": "inflight_bytes_limit"}
    )
    assert refused == 1


async def test_a_huge_json_push_is_refused_before_it_is_parsed(
    http: aiohttp.ClientSession,
) -> None:
    values = [[str(i), "v" * 1000] for i in range(20_000)]
    body = orjson.dumps({"streams": [{"stream": {"a": "b"}, "values": values}]})
    sink = Sink()
    async with PushReceiver(sink, max_inflight_bytes=4 << 20) as receiver:
        status, text, _ = await post(http, receiver.push_url, body, JSON)
    assert (status, text) == (
        413,
        f"request body too large: {len(body)} bytes, limit: {4 << 20} bytes\n",
    )
    assert sink.batches == []


async def test_large_pushes_within_the_budget_pass_whole(
    http: aiohttp.ClientSession,
) -> None:
    """Many 1 MiB batches at once (a busy relay): every entry arrives."""
    sink = Sink()
    entries = [
        LogEntry(1_700_000_000 * NS + i, f"line {i:06d} " + "q" * 90)
        for i in range(10_000)
    ]
    body = proto_body(entries)
    gz = gzip.compress(body)
    async with PushReceiver(sink) as receiver:
        results = await asyncio.gather(
            *(post(http, receiver.push_url, body, PROTOBUF) for _ in range(4)),
            *(
                post(
                    http,
                    receiver.push_url,
                    gz,
                    {**PROTOBUF, "Content-Encoding": "gzip"},
                )
                for _ in range(4)
            ),
        )
        assert [r[0] for r in results] == [204] * 8
        assert receiver.inflight_bytes == 0
    assert len(sink.lines()) == 80_000


# ------------------------------------------------------------------ Loki's entry checks


async def test_lines_over_max_line_size_are_dropped_with_loki_errors_and_the_rest_kept(
    http: aiohttp.ClientSession,
) -> None:
    sink = Sink()
    registry = CollectorRegistry()
    limit = 262144
    long_a = "a" * (limit + 1)
    long_b = "é" * (limit // 2 + 1)  # fewer characters than the limit, more bytes
    body = proto_body(
        [
            LogEntry(1, "ok 1"),
            LogEntry(2, long_a),
            LogEntry(3, "ok 2"),
            LogEntry(4, long_b),
        ]
    )
    async with PushReceiver(sink, registry=registry) as receiver:
        status, text, _ = await post(http, receiver.push_url, body, PROTOBUF)
        assert receiver.entries_total == 2
    assert status == 400
    # The stream as Loki names it: with the service_name its discovery adds.
    stream = '{job="t", service_name="t"}'
    assert text == (
        f"1 errors like: max entry size '{limit}' bytes exceeded for stream "
        f"'{stream}' while adding an entry with length '{limit + 1}' bytes; "
        f"1 errors like: max entry size '{limit}' bytes exceeded for stream "
        f"'{stream}' while adding an entry with length '{limit + 2}' bytes\n"
    )
    assert sink.lines() == ["ok 1", "ok 2"]
    assert registry.get_sample_value("loki_source_api_entries_written_total") == 2
    assert (
        registry.get_sample_value(
            "minilog_source_api_discarded_entries_total", {"reason": "line_too_long"}
        )
        == 2
    )


async def test_a_line_exactly_at_the_limit_passes_and_zero_means_no_limit(
    http: aiohttp.ClientSession,
) -> None:
    sink = Sink()
    async with PushReceiver(sink, entry_limits=EntryLimits(max_line_size=10)) as r:
        body = proto_body([LogEntry(1, "0123456789")])
        assert (await post(http, r.push_url, body, PROTOBUF))[0] == 204
        body = proto_body([LogEntry(1, "0123456789+")])
        assert (await post(http, r.push_url, body, PROTOBUF))[0] == 400
        r.entry_limits = EntryLimits(max_line_size=0)
        assert (await post(http, r.push_url, body, PROTOBUF))[0] == 204
    assert sink.lines() == ["0123456789", "0123456789+"]


async def test_raw_and_json_lines_are_checked_too(http: aiohttp.ClientSession) -> None:
    sink = Sink()
    async with PushReceiver(sink, entry_limits=EntryLimits(max_line_size=4)) as r:
        raw_url = r.url + "/loki/api/v1/raw"
        status, text, _ = await post(http, raw_url, b"ok\ntoolong\n", {})
        assert status == 400
        assert text == (
            "max entry size '4' bytes exceeded for stream "
            "'{service_name=\"unknown_service\"}' while adding an entry with length "
            "'7' bytes\n"
        )
        values = [["5", "fine"], ["6", "12345"]]
        body = orjson.dumps({"streams": [{"stream": {"a": "b"}, "values": values}]})
        status, text, _ = await post(http, r.push_url, body, JSON)
        assert status == 400
        assert text == (
            "max entry size '4' bytes exceeded for stream "
            '\'{a="b", service_name="unknown_service"}\' '
            "while adding an entry with length '5' bytes\n"
        )
    assert sink.lines() == ["ok", "fine"]


async def test_timestamps_loki_refuses_get_loki_answers_when_checked(
    http: aiohttp.ClientSession,
) -> None:
    sink = Sink()
    registry = CollectorRegistry()
    now = time.time_ns()
    good = now - 60 * NS
    entries = [
        LogEntry(0, "epoch"),
        LogEntry(-5 * NS, "negative"),
        LogEntry(now - 8 * 86400 * NS, "eight days old"),
        LogEntry(good, "fresh"),
        LogEntry(now + 3600 * NS, "an hour ahead"),
        LogEntry(now + 5 * 60 * NS, "within the grace period"),
    ]
    limits = EntryLimits(check_timestamps=True)
    async with PushReceiver(sink, entry_limits=limits, registry=registry) as r:
        before = time.time_ns()
        status, text, _ = await post(http, r.push_url, proto_body(entries), PROTOBUF)
        after = time.time_ns()
    assert status == 400
    assert sink.lines() == ["fresh", "within the grace period"]
    messages = text.rstrip("\n").split("; ")
    assert len(messages) == 4
    stream = '{job="t", service_name="t"}'
    assert all(
        m.startswith(f"1 errors like: entry for stream '{stream}' has ")
        for m in messages
    )
    cutoffs = {go_time(t - 7 * 86400 * NS) for t in (before, after)}
    old = [m for m in messages if "too old" in m]
    assert len(old) == 3
    for stamp, message in zip((0, -5 * NS, now - 8 * 86400 * NS), old, strict=True):
        head, _, cutoff = message.partition(", oldest acceptable timestamp is: ")
        assert head.endswith(f"has timestamp too old: {go_time(stamp)}")
        assert cutoff in cutoffs
    assert go_time(-5 * NS) == "1969-12-31T23:59:55Z"
    (new,) = [m for m in messages if "too new" in m]
    assert new.endswith(f"has timestamp too new: {go_time(now + 3600 * NS)}")
    sample = registry.get_sample_value
    name = "minilog_source_api_discarded_entries_total"
    assert sample(name, {"reason": "greater_than_max_sample_age"}) == 3
    assert sample(name, {"reason": "too_far_in_future"}) == 1
    assert sample("loki_source_api_entries_written_total") == 2


async def test_an_entry_without_a_timestamp_is_go_zero_time_and_too_old(
    http: aiohttp.ClientSession,
) -> None:
    # An EntryAdapter with only a line: Go's zero time, 0001-01-01T00:00:00Z.
    line = b"\x12\x01z"
    labels = b'{job="t"}'
    stream = (
        b"\x0a" + bytes([len(labels)]) + labels + b"\x12" + bytes([len(line)]) + line
    )
    body = compress(b"\x0a" + bytes([len(stream)]) + stream)
    sink = Sink()
    async with PushReceiver(sink, entry_limits=EntryLimits(check_timestamps=True)) as r:
        status, text, _ = await post(http, r.push_url, body, PROTOBUF)
    assert status == 400
    assert "has timestamp too old: 0001-01-01T00:00:00Z, oldest acceptable" in text
    assert sink.batches == []


async def test_timestamps_are_not_checked_by_default(
    http: aiohttp.ClientSession,
) -> None:
    sink = Sink()
    async with PushReceiver(sink) as r:
        body = proto_body([LogEntry(0, "a"), LogEntry(-1, "b"), LogEntry(1 << 62, "c")])
        assert (await post(http, r.push_url, body, PROTOBUF))[0] == 204
    assert sink.lines() == ["a", "b", "c"]


# ------------------------------------------------------------ slow and gone clients


async def test_a_client_hanging_up_mid_body_is_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture, http: aiohttp.ClientSession
) -> None:
    sink = Sink()
    caplog.set_level(logging.DEBUG)
    async with PushReceiver(sink) as r:
        await drop_mid_body("127.0.0.1", r.port, count=5)
        await wait_for(lambda: r.connections.open == 0 and r.requests.count == 5)
        assert r.inflight_bytes == 0
        # Still serving.
        body = proto_body([LogEntry(1, "after")])
        assert (await post(http, r.push_url, body, PROTOBUF))[0] == 204
    assert [rec for rec in caplog.records if rec.levelno >= logging.WARNING] == []
    assert any("push body not received" in rec.getMessage() for rec in caplog.records)
    assert sink.lines() == ["after"]


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll server state that offers no event (connection counts) until true."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.01)


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the server sent before it closed (or reset) the connection."""
    data = b""
    async with asyncio.timeout(timeout_s):
        try:
            while chunk := await reader.read(4096):
                data += chunk
        except ConnectionResetError:
            pass
    return data


async def test_headers_trickled_slower_than_the_read_timeout_close_the_connection() -> (
    None
):
    limits = ServerLimits(read_timeout_s=0.3)
    async with PushReceiver(Sink(), server_limits=limits) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            for _ in range(200):  # 20 s at most; the server closes long before
                await asyncio.sleep(0.1)
                writer.write(b"X")

        dripping = asyncio.create_task(trickle())
        try:
            assert await read_until_closed(reader, 10) == b""
        finally:
            dripping.cancel()
            writer.transport.abort()
        assert r.connections.timed_out["read"] == 1
        await wait_for(lambda: r.connections.open == 0)


async def test_a_body_trickled_past_the_read_timeout_is_cut_and_its_charge_freed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = ServerLimits(read_timeout_s=0.5)
    sink = Sink()
    async with PushReceiver(sink, server_limits=limits) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(
            b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-protobuf\r\nContent-Length: 5000\r\n\r\n"
        )
        await wait_for(lambda: r.inflight_bytes == 5000)
        try:
            for _ in range(100):
                writer.write(b"z")
                try:
                    async with asyncio.timeout(0.1):
                        if not await reader.read(4096):
                            break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("the server never closed the slow body")
        finally:
            writer.transport.abort()
        await wait_for(lambda: r.connections.open == 0 and r.inflight_bytes == 0)
        assert r.connections.timed_out["body"] == 1
    assert [rec for rec in caplog.records if rec.levelno >= logging.WARNING] == []
    assert sink.batches == []


async def test_a_slow_handler_is_not_cut_by_the_read_timeout(
    http: aiohttp.ClientSession,
) -> None:
    """Downstream backpressure may hold a push longer than server_read_timeout."""
    sink = Sink()
    sink.hold()
    limits = ServerLimits(read_timeout_s=0.2, write_timeout_s=0.2)
    async with PushReceiver(sink, server_limits=limits) as r:
        push = asyncio.create_task(
            post(http, r.push_url, proto_body([LogEntry(1, "slow")]), PROTOBUF)
        )
        await sink.entered.wait()
        await asyncio.sleep(0.8)  # several read and write timeouts pass meanwhile
        sink.release()
        assert (await push)[0] == 204
        assert r.connections.timed_out == {"read": 0, "body": 0, "write": 0}


async def test_connections_over_the_cap_wait_until_one_closes(
    http: aiohttp.ClientSession,
) -> None:
    limits = ServerLimits(conn_limit=3)
    async with PushReceiver(Sink(), server_limits=limits) as r:
        held = [await asyncio.open_connection("127.0.0.1", r.port) for _ in range(3)]
        await wait_for(lambda: r.connections.open == 3)
        body = proto_body([LogEntry(1, "in")])
        push = asyncio.create_task(post(http, r.push_url, body, PROTOBUF))
        await wait_for(lambda: r.connections.paused)
        assert not push.done()
        held[0][1].close()
        assert (await push)[0] == 204
        assert r.connections.limited >= 1
        for _, w in held[1:]:
            w.close()
        await wait_for(lambda: r.connections.open <= 1)


async def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() -> None:
    limits = ServerLimits(idle_timeout_s=0.3)
    async with PushReceiver(Sink(), server_limits=limits) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_until_closed(reader, 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"ready\n")
        assert r.connections.timed_out == {"read": 0, "body": 0, "write": 0}


# ------------------------------------------------------------ against a real Loki


async def test_refusals_match_a_real_lokis_status_and_text(
    http: aiohttp.ClientSession, loki_base: str
) -> None:
    """The same bodies to Loki 3.6 and to the receiver (timestamps checked): the same
    status and the same grouped messages (Go orders them at random)."""
    base = loki_base
    now = time.time_ns()
    many = "{" + ", ".join(f'l{i:02d}="v"' for i in range(16)) + "}"
    proto = {
        "labels": proto_body([LogEntry(now, "x")], many),
        "entries": proto_body(
            [
                LogEntry(now - 1, "ok"),
                LogEntry(now, "y" * 300_000),
                LogEntry(0, "epoch"),
                LogEntry(now + 3600 * NS, "ahead"),
                LogEntry(now, "é" * 131_073),
            ],
            '{app="web", job="m"}',
        ),
        "service_name_kept": proto_body(
            [LogEntry(now, "z" * 262_145)], '{job="j", service_name="svc"}'
        ),
    }
    values = [[str(now), "x" * 262_145], ["-5", "negative"], [str(now), "fine"]]
    json_body = orjson.dumps({"streams": [{"stream": {"c": "d"}, "values": values}]})
    cases = [(body, PROTOBUF) for body in proto.values()] + [(json_body, JSON)]
    limits = EntryLimits(check_timestamps=True)
    headers = tenant_headers()
    async with PushReceiver(Sink(), entry_limits=limits) as receiver:
        await wait_ready(http, base)
        for body, content_type in cases:
            answers = []
            for url in (base + "/loki/api/v1/push", receiver.push_url):
                status, text, _ = await post(
                    http, url, body, {**content_type, **headers}
                )
                answers.append((status, sorted(text.rstrip("\n").split("; "))))
            assert answers[0] == answers[1]
            assert answers[0][0] == 400
