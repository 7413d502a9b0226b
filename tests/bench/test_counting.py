"""``minilog bench``'s own counting, with losses and duplicates injected on purpose.

The harness's figures are only worth something if its counting is exact: these tests
feed it known losses and duplicates through each path it counts by (paging through
``query_range`` with many equal timestamps at page borders, the push bodies the fault
proxy keeps, and a real Loki) and check it finds exactly those.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilog.bench.analysis import Acks, percentile
from minilog.bench.counting import PageCursor, Tally
from minilog.bench.lines import generator_command, parse_line
from minilog.bench.lokiapi import LokiAPI
from minilog.bench.proxy import FaultProxy, recorded
from minilog.bench.wire import count_marker, decode_push
from minilog.loki.wire import compress, encode_push_request
from minilog.model import LogEntry

# -- the lines ----------


def _line(gen: str, seq: int) -> str:
    shapes = (
        f'{{"level":"info","gen":"{gen}","seq":{seq},"msg":"request handled"}}',
        f'ts=2026-01-01T00:00:00Z level=warn gen={gen} seq={seq} msg="slow"',
        f"2026-01-01T00:00:00Z INFO [worker-1] gen={gen} seq={seq} processed batch",
    )
    return shapes[seq % 3]


def test_every_shape_is_read_back_and_other_lines_are_not() -> None:
    for seq in (1, 2, 3, 1234567):
        assert parse_line(_line("g-1.a", seq).encode()) == ("g-1.a", seq)
    assert parse_line(b"a line from something else seq=3") is None
    assert parse_line(b"") is None


def test_generator_command_refuses_a_name_that_would_break_the_script() -> None:
    with pytest.raises(ValueError, match="generator name"):
        generator_command("g'; rm -rf /", 10, 0)
    with pytest.raises(ValueError, match="negative"):
        generator_command("g", -1, 0)


# -- Tally ----------


def test_tally_finds_injected_losses_and_duplicates_per_generator() -> None:
    written = {"a": 1000, "b": 500}
    lost = {"a": {1, 17, 1000}, "b": set(range(100, 150))}
    doubled = {"a": {2, 3, 999}, "b": {1}}
    observed = []
    for gen, n in written.items():
        for seq in range(1, n + 1):
            if seq in lost[gen]:
                continue
            observed.append((gen, seq))
            if seq in doubled[gen]:
                observed.append((gen, seq))
    observed.append(("a", 5000))  # a number it never wrote
    observed.append(("zz", 1))  # a generator of another run
    random.Random(7).shuffle(observed)
    tally = Tally(written)
    tally.add_all(observed)
    a, b = tally.counts()
    assert (a.gen, a.written, a.delivered, a.lost, a.duplicated, a.unexpected) == (
        "a",
        1000,
        997,
        3,
        3,
        1,
    )
    assert (b.lost, b.duplicated, b.unexpected) == (50, 1, 0)
    assert tally.missing("a") == [1, 17, 1000]
    assert tally.foreign == 1


# -- PageCursor ----------


def _fake_loki(entries: list[tuple[int, bytes]]):  # type: ignore[no-untyped-def]
    """``query_range`` over ``entries`` as Loki answers it: entries in
    ``[start, end)``, oldest first, at most ``limit``; order among equal timestamps
    differs from call to call (Loki promises none)."""
    rng = random.Random(3)

    def page(start: int, end: int, limit: int) -> list[tuple[int, bytes]]:
        hits = [e for e in entries if start <= e[0] < end]
        rng.shuffle(hits)
        hits.sort(key=lambda e: e[0])
        return hits[:limit]

    return page


def _walk(entries: list[tuple[int, bytes]], limit: int) -> list[tuple[int, bytes]]:
    page = _fake_loki(entries)
    cursor = PageCursor(0, 10**12, limit)
    out = []
    while not cursor.done:
        out.extend(cursor.feed(page(cursor.start_ns, cursor.end_ns, cursor.limit)))
    return out


def test_paging_keeps_every_entry_when_many_share_a_timestamp_at_the_border() -> None:
    # 7 entries share ts 100, a page holds 4: the border falls inside them twice, and
    # one of them is a true duplicate (Loki holding the same line twice).
    entries = [(50, b"x1"), (60, b"x2")]
    entries += [(100, f"t{i}".encode()) for i in range(6)] + [(100, b"t0")]
    entries += [(200, b"y")]
    got = _walk(entries, limit=4)
    assert Counter(got) == Counter(entries)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=30), max_size=80),
    st.integers(min_value=1, max_value=9),
)
def test_paging_returns_exactly_the_multiset_loki_holds(
    timestamps: list[int], limit: int
) -> None:
    entries = [(ts, f"line-{i % 5}".encode()) for i, ts in enumerate(timestamps)]
    assert Counter(_walk(entries, limit)) == Counter(entries)


def test_a_page_from_before_its_start_is_refused() -> None:
    cursor = PageCursor(100, 200, 2)
    with pytest.raises(ValueError, match="older than its start"):
        cursor.feed([(99, b"a")])


# -- what the proxy keeps ----------


async def test_proxy_record_counts_injected_losses_and_duplicates(
    tmp_path: Path,
) -> None:
    """Pushes through the proxy (null sink), one line left out and some sent twice,
    in snappy protobuf and in JSON: read back, the record says exactly that."""
    written = {"g1": 300, "g2": 200}
    proxy = FaultProxy(None, tmp_path / "acks.bin")
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            for gen, n in written.items():
                entries = [
                    LogEntry(1_700_000_000_000_000_000 + seq, _line(gen, seq))
                    for seq in range(1, n + 1)
                    if not (gen == "g2" and seq == 150)  # lost
                ]
                for start in range(0, len(entries), 64):
                    body = compress(
                        encode_push_request(
                            [(f'{{container="{gen}"}}', entries[start : start + 64])]
                        )
                    )
                    headers = {"Content-Type": "application/x-protobuf"}
                    async with session.post(
                        proxy.push_url, data=body, headers=headers
                    ) as r:
                        assert r.status == 204
            # g1's lines 10..19 again, as JSON: an agent re-sending one batch.
            doc = {
                "streams": [
                    {
                        "stream": {"container": "g1"},
                        "values": [
                            [str(1_700_000_000_000_000_000 + s), _line("g1", s)]
                            for s in range(10, 20)
                        ],
                    }
                ]
            }
            async with session.post(proxy.push_url, json=doc) as r:
                assert r.status == 204
    finally:
        await proxy.aclose()
    assert proxy.acked_lines == 300 + 199 + 10
    acks = Acks(written)
    for ack_ns, body, ct, ce in recorded(tmp_path / "acks.bin"):
        for _, ts, line in decode_push(body, ct, ce):
            parsed = parse_line(line)
            assert parsed is not None
            acks.add(parsed[0], parsed[1], ts, ack_ns)
    assert acks.delivered(["g1"]) == 300
    assert acks.delivered(["g2"]) == 199
    assert acks.duplicated(["g1"]) == 10
    assert acks.duplicated(["g2"]) == 0
    tally = acks.tally()
    assert tally.count("g2").lost == 1
    assert tally.missing("g2") == [150]


async def test_proxy_throttle_answers_429_with_retry_after_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    proxy = FaultProxy(None, tmp_path / "acks.bin")
    await proxy.start()
    proxy.mode = "throttle"
    proxy.retry_after_s = 7
    try:
        async with aiohttp.ClientSession() as session:
            body = compress(
                encode_push_request([('{a="b"}', [LogEntry(1, _line("g", 1))])])
            )
            async with session.post(proxy.push_url, data=body) as r:
                assert r.status == 429
                assert r.headers["Retry-After"] == "7"
            await proxy.go_down()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.post(proxy.push_url, data=body):
                    pass
            await proxy.come_back()
            proxy.mode = "pass"
            async with session.post(proxy.push_url, data=body) as r:
                assert r.status == 204
    finally:
        await proxy.aclose()
    assert [ack for ack, *_ in recorded(tmp_path / "acks.bin")] != []
    assert proxy.acked_lines == 1
    assert proxy.statuses == Counter({429: 1, 204: 1})


def test_count_marker_reads_compressed_bodies() -> None:
    raw = encode_push_request(
        [('{a="b"}', [LogEntry(1, _line("g", s)) for s in range(1, 6)])]
    )
    assert count_marker(compress(raw), "application/x-protobuf", "", b"seq") == 5


def test_acks_latency_throughput_and_backlog() -> None:
    acks = Acks({"g": 4})
    s = 1_000_000_000
    # Lines written at 0, 1, 2, 3 s; acknowledged at 0.5, 5, 5, 5.2 s; line 2 twice.
    for seq, ts, ack in (
        (1, 0, s // 2),
        (2, s, 5 * s),
        (2, s, 6 * s),
        (3, 2 * s, 5 * s),
        (4, 3 * s, 52 * s // 10),
    ):
        acks.add("g", seq, ts, ack)
    assert acks.duplicated() == 1
    assert sorted(acks.latencies_s()) == [0.5, 2.2, 3.0, 4.0]
    assert percentile(acks.latencies_s(), 50) == 2.2
    # Lines written in [1 s, 2 s]: the last of them acknowledged at 5 s.
    assert acks.backlog_cleared_ns(s, 2 * s) == 5 * s
    # At 4 s, lines 2, 3 and 4 were written and not yet acknowledged.
    assert acks.pending_at(4 * s) == 3
    assert dict(acks.throughput(0)) == {
        0.5: 1.0,
        1.5: 0.0,
        2.5: 0.0,
        3.5: 0.0,
        4.5: 0.0,
        5.5: 3.0,
    }


# -- a real Loki ----------


async def test_counting_from_a_real_loki_with_small_pages(loki_base: str) -> None:
    """Lines pushed to a real Loki with one generator losing some and 50 lines all on
    one timestamp; read back 7 at a time (many page borders inside equal
    timestamps), the tally finds exactly the injected losses."""
    run = "t" + uuid.uuid4().hex[:8]
    t0 = time.time_ns() - 60 * 10**9
    written = {"a": 120, "b": 80}
    lost = {"a": {5, 60}, "b": {80}}
    streams = []
    for gen, n in written.items():
        entries = []
        for seq in range(1, n + 1):
            if seq in lost[gen]:
                continue
            # b's lines 1..50 share one timestamp.
            ts = t0 + (1 if gen == "b" and seq <= 50 else seq) * 1000
            entries.append(LogEntry(ts, _line(gen, seq)))
        streams.append((f'{{bench_run="{run}", container="{gen}"}}', entries))
    async with aiohttp.ClientSession() as session:
        body = compress(encode_push_request(streams))
        async with session.post(
            loki_base + "/loki/api/v1/push",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
        ) as r:
            assert r.status == 204, await r.text()
    api = LokiAPI(loki_base)
    try:
        tally = Tally(written)
        async for _, line in api.entries(
            f'{{bench_run="{run}"}}', t0 - 10**9, time.time_ns(), limit=7
        ):
            parsed = parse_line(line)
            assert parsed is not None
            tally.add(*parsed)
    finally:
        await api.aclose()
    a, b = tally.count("a"), tally.count("b")
    assert (a.delivered, a.lost, a.duplicated) == (118, 2, 0)
    assert (b.delivered, b.lost, b.duplicated) == (79, 1, 0)
    assert tally.missing("a") == [5, 60]
    assert tally.missing("b") == [80]


# -- the report ----------


def _rec(agent: str, profile: str, **figures: object) -> dict[str, object]:
    from minilog.bench.profiles import new_record

    rec = new_record(agent, profile, "loki")
    rec.update(figures)
    return rec


def test_targets_say_met_or_by_how_much_missed() -> None:
    from minilog.bench.report import format_table, targets

    records = [
        _rec("minilog", "drain", agent_cpu_s_per_million=5.0),
        _rec("promtail", "drain", agent_cpu_s_per_million=12.5),
        _rec(
            "minilog",
            "outage",
            lines_lost=0,
            lines_duplicated=10,
            agent_peak_rss_in_fault_mb=70.0,
            rss_bound_mb=61.5,
            input_lines_per_s=2000.0,
            catch_up_lines_per_s=50_000.0,
            backlog_at_fault_end=120_000,
        ),
        _rec(
            "minilog",
            "slow",
            lines_lost=0,
            lines_duplicated=0,
            input_lines_per_s=2000.0,
            catch_up_lines_per_s=2500.0,
            backlog_at_fault_end=3000,
        ),
        _rec("minilog", "kill", lines_lost=3, lines_duplicated=9000),
        _rec("alloy", "drain", skipped="no Grafana Alloy here"),
        _rec("alloy", "outage", skipped="no Grafana Alloy here"),
    ]
    lines = targets(records)
    assert lines[0].endswith("= 0.40 (target <= 0.33): MISSED by 1.21x")
    assert "minilog outage: 0 lines lost (target 0): met" in lines
    assert any(line.endswith("61.5 MB: MISSED by 8.5 MB") for line in lines)
    assert any("25.0x the input rate (target >= 3x): met" in line for line in lines)
    assert "minilog kill: 3 lines lost (target 0): MISSED" in lines
    assert any(
        line.startswith("minilog kill: 9000 lines sent twice")
        and line.endswith("MISSED")
        for line in lines
    )
    assert any(
        line.startswith("minilog slow: backlog at the fault's end 3,000 lines")
        and line.endswith("catch-up not judged")
        for line in lines
    )
    table = format_table(records)
    assert table.count("skipped: no Grafana Alloy here") == 1
    assert "skipped (as above)" in table
    assert len(table.splitlines()) == 1 + len(records)
