"""Tests for minilog.docker.frames: real Docker bytes, every chunk boundary, partial
lines, timestamps.
"""

from __future__ import annotations

import calendar
import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilog.docker.frames import (
    PARTIAL_SIZE,
    Decoded,
    FrameDecoder,
    RawLineSplitter,
    parse_timestamp,
)
from minilog.model import LogEntry

DATA = Path(__file__).resolve().parents[1] / "data" / "docker"
MIXED_TS = (DATA / "mixed-logs-timestamps.bin").read_bytes()
MIXED_PLAIN = (DATA / "mixed-logs-plain.bin").read_bytes()
TTY_TS = (DATA / "tty-logs-timestamps.bin").read_bytes()


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def plain_messages(data: bytes) -> list[tuple[int, bytes]]:
    """Walk frames independently of the decoder (reference for the expected output)."""
    out = []
    i = 0
    while i < len(data):
        stream, size = data[i], int.from_bytes(data[i + 4 : i + 8], "big")
        out.append((stream, data[i + 8 : i + 8 + size]))
        i += 8 + size
    return out


def expected_lines(stream: int) -> list[str]:
    """The non-empty lines of the plain capture, with Docker's 16 KiB parts joined."""
    lines: list[str] = []
    pending = b""
    for s, payload in plain_messages(MIXED_PLAIN):
        if s != stream:
            continue
        pending += payload
        if payload.endswith(b"\n"):
            text = pending[:-1].decode()
            pending = b""
            if text:
                lines.append(text)
    return lines


def collect(results: list[Decoded]) -> tuple[list[LogEntry], list[LogEntry]]:
    out: list[LogEntry] = []
    err: list[LogEntry] = []
    for r in results:
        out.extend(r.stdout)
        err.extend(r.stderr)
    return out, err


def ns(text: str) -> int:
    """Reference conversion written independently: integer seconds via timegm + 9
    digits.
    """
    date, _, rest = text.partition("T")
    clock, _, frac = rest.rstrip("Z").partition(".")
    y, mo, d = (int(x) for x in date.split("-"))
    h, mi, s = (int(x) for x in clock.split(":"))
    return calendar.timegm((y, mo, d, h, mi, s)) * 10**9 + int(frac.ljust(9, "0"))


def reference_timestamps() -> list[tuple[int, int]]:
    return [
        (s, ns(p.split(b" ", 1)[0].decode()))
        for s, p in plain_messages(MIXED_TS)
        if len(p) < PARTIAL_SIZE  # the 16 KiB part shares its timestamp with its rest
    ]


def test_mixed_capture_decodes_to_the_plain_capture_lines() -> None:
    res = FrameDecoder().feed(MIXED_TS)
    assert [e.line for e in res.stdout] == expected_lines(1)
    assert [e.line for e in res.stderr] == expected_lines(2)
    assert res.parsing_errors == 0
    assert res.invalid_utf8 == 0


def test_entries_carry_docker_timestamps_in_nanoseconds() -> None:
    res = FrameDecoder().feed(MIXED_TS)
    ref = reference_timestamps()
    # the empty line is consumed but not emitted
    empty_ts = ns(
        next(p for _, p in plain_messages(MIXED_TS) if p.endswith(b"Z \n"))
        .split(b" ")[0]
        .decode()
    )
    want_out = [t for s, t in ref if s == 1 and t != empty_ts]
    assert [e.timestamp_ns for e in res.stdout] == want_out
    assert [e.timestamp_ns for e in res.stderr] == [t for s, t in ref if s == 2]
    assert res.position_ns == max(t for _, t in ref)
    assert res.count_at_position == 1


def test_long_line_is_rejoined_with_the_first_parts_timestamp() -> None:
    res = FrameDecoder().feed(MIXED_TS)
    long = [e for e in res.stdout if e.line.startswith("long:")]
    assert len(long) == 1
    assert long[0].line.endswith(":end")
    parts = [p for _, p in plain_messages(MIXED_TS) if len(p) >= PARTIAL_SIZE]
    assert long[0].timestamp_ns == ns(parts[0].split(b" ")[0].decode())
    assert "Z " not in long[0].line  # the second part's timestamp prefix was removed


@pytest.mark.parametrize(
    ("name", "data", "cls"),
    [("mixed", MIXED_TS, FrameDecoder), ("tty", TTY_TS, RawLineSplitter)],
)
def test_split_at_every_byte_boundary_gives_the_same_entries(
    name: str, data: bytes, cls: type[FrameDecoder] | type[RawLineSplitter]
) -> None:
    whole = collect([cls().feed(data), cls().finish()])
    step = (
        1 if len(data) < 1000 else 7
    )  # every boundary near frames; the long payload sampled
    boundaries = list(range(0, len(data) + 1, step))
    boundaries += [i for i in range(len(data) + 1) if i < 400 or len(data) - i < 400]
    for cut in sorted(set(boundaries)):
        dec = cls()
        got = collect([dec.feed(data[:cut]), dec.feed(data[cut:]), dec.finish()])
        assert got == whole, f"{name}: differs when cut at {cut}"
        assert dec.buffered == 0


def test_one_byte_chunks_decode_the_whole_capture() -> None:
    dec = FrameDecoder()
    results = [dec.feed(MIXED_TS[i : i + 1]) for i in range(len(MIXED_TS))]
    assert collect(results) == collect([FrameDecoder().feed(MIXED_TS)])


def test_tty_stream_strips_crlf_and_is_all_stdout() -> None:
    res = RawLineSplitter().feed(TTY_TS)
    assert [e.line for e in res.stdout] == ["tty line 1", "tty err", "tty line 3"]
    assert res.stderr == []
    assert [e.timestamp_ns for e in res.stdout] == [
        ns(line.split(b" ")[0].decode()) for line in TTY_TS.split(b"\r\n") if line
    ]


def test_tty_last_line_without_newline_is_emitted_at_finish() -> None:
    dec = RawLineSplitter()
    assert dec.feed(b"2026-11-27T04:20:22.000000001Z partial").stdout == []
    assert dec.buffered > 0
    assert [e.line for e in dec.finish().stdout] == ["partial"]


def test_stream_zero_is_stdout_and_three_is_a_daemon_error() -> None:
    data = (
        frame(0, b"2026-11-27T04:20:22.000000001Z from stdin\n")
        + frame(3, b"error from daemon: corrupt log file\n")
        + frame(2, b"2026-11-27T04:20:22.000000002Z after the error\n")
        + frame(7, b"junk")
    )
    res = FrameDecoder().feed(data)
    assert [e.line for e in res.stdout] == ["from stdin"]
    assert [e.line for e in res.stderr] == ["after the error"]
    assert res.daemon_errors == ["error from daemon: corrupt log file"]
    assert res.parsing_errors == 2


def test_lines_without_valid_timestamp_are_counted_and_skipped() -> None:
    data = (
        frame(1, b"no-space-here\n")
        + frame(1, b"yesterday hello\n")
        + frame(1, b"2026-13-27T04:20:22.000000001Z bad month\n")
        + frame(1, b"2026-11-27T04:20:22.00000000xZ bad digits\n")
        + frame(1, b"2026-11-27T04:20:22.5+02:00 offset ok\n")
    )
    res = FrameDecoder().feed(data)
    assert res.parsing_errors == 4
    assert res.stdout == [LogEntry(ns("2026-11-27T02:20:22.5Z"), "offset ok")]


def test_invalid_utf8_is_replaced_and_counted() -> None:
    res = FrameDecoder().feed(
        frame(1, b"2026-11-27T04:20:22.000000001Z bad \xff\xfe byte\n")
    )
    assert res.stdout[0].line == "bad \ufffd\ufffd byte"
    assert res.invalid_utf8 == 1


def test_rejoined_line_beyond_max_is_truncated_and_counted() -> None:
    ts = b"2026-11-27T04:20:22.000000001Z "
    first = ts + b"a" * PARTIAL_SIZE
    data = (
        frame(1, first)
        + frame(1, ts + b"b" * PARTIAL_SIZE)
        + frame(1, ts + b"c" * 10 + b"\n")
    )
    dec = FrameDecoder(max_line_size=20000)
    res = dec.feed(data)
    assert res.truncated == 1
    assert res.stdout[0].line == "a" * PARTIAL_SIZE + "b" * (20000 - PARTIAL_SIZE)
    assert dec.buffered == 0


def test_line_at_max_size_is_not_truncated() -> None:
    res = FrameDecoder(max_line_size=5).feed(
        frame(1, b"2026-11-27T04:20:22.000000001Z 12345\n")
    )
    assert (res.stdout[0].line, res.truncated) == ("12345", 0)
    res = FrameDecoder(max_line_size=4).feed(
        frame(1, b"2026-11-27T04:20:22.000000001Z 12345\n")
    )
    assert (res.stdout[0].line, res.truncated) == ("1234", 1)


def test_tty_line_without_newline_is_capped_while_buffering() -> None:
    dec = RawLineSplitter(max_line_size=100)
    dec.feed(b"2026-11-27T04:20:22.000000001Z " + b"x" * 10_000)
    dec.feed(b"y" * 10_000)
    assert dec.buffered < 300
    res = dec.feed(b"z\r\n2026-11-27T04:20:22.000000002Z next\n")
    assert [e.line for e in res.stdout] == ["x" * 100, "next"]
    assert res.truncated == 1


def test_resume_skips_older_lines_and_those_already_counted_at_the_position() -> None:
    t = "2026-11-27T04:20:22.000000005Z"
    data = b"".join(
        frame(1, f"{ts} {text}\n".encode())
        for ts, text in [
            ("2026-11-27T04:20:22.000000004Z", "old"),
            (t, "a"),
            (t, "b"),
            (t, "c"),
            ("2026-11-27T04:20:22.000000006Z", "new"),
        ]
    )
    res = FrameDecoder(position_ns=ns(t), count_at_position=2).feed(data)
    assert [e.line for e in res.stdout] == ["c", "new"]
    assert (res.position_ns, res.count_at_position) == (ns(t) + 1, 1)


def test_position_counts_empty_lines_at_the_same_timestamp() -> None:
    t = b"2026-11-27T04:20:22.000000005Z"
    res = FrameDecoder().feed(
        frame(1, t + b" x\n") + frame(2, t + b" \n") + frame(1, t + b" y\n")
    )
    assert [e.line for e in res.stdout] == ["x", "y"]
    assert (res.position_ns, res.count_at_position) == (ns(t.decode()), 3)


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED_TS)), max_size=6))
def test_any_chunking_of_the_capture_is_equivalent(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(MIXED_TS)]
    dec = FrameDecoder()
    got = collect(
        [dec.feed(MIXED_TS[a:b]) for a, b in itertools.pairwise(points)]
        + [dec.finish()]
    )
    assert got == collect([FrameDecoder().feed(MIXED_TS)])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-27T04:20:22.054898543Z", ns("2026-11-27T04:20:22.054898543Z")),
        ("2026-11-27T04:20:22.1Z", ns("2026-11-27T04:20:22.100000000Z")),
        ("2026-11-27T06:20:22.1+02:00", ns("2026-11-27T04:20:22.100000000Z")),
        ("2026-11-27T01:20:22-03:00", ns("2026-11-27T04:20:22Z")),
    ],
)
def test_parse_timestamp_variants(text: str, want: int) -> None:
    assert parse_timestamp(text.encode()) == want


@pytest.mark.parametrize(
    "text", ["", "2026-11-27", "2026-11-27T04:20:22", "2026-11-27T04:20:22.Z"]
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp(text.encode())


def test_second_cache_gives_exact_values_across_seconds() -> None:
    texts = [
        f"2026-11-27T04:20:{s:02d}.{f:09d}Z"
        for s in (1, 2, 1, 59)
        for f in (0, 1, 999999999)
    ]
    data = b"".join(frame(1, t.encode() + b" l\n") for t in texts)
    res = FrameDecoder().feed(data)
    assert [e.timestamp_ns for e in res.stdout] == [ns(t) for t in texts]


def test_resume_skips_the_delivered_line_of_the_other_stream() -> None:
    """Delivered up to stderr's line at T; the resumed reply interleaves a newer
    stdout line before it. stdout lines are decoded first: that must not make the
    already delivered stderr line look new."""
    t = "2026-11-27T10:00:00.000000115Z"
    t1 = "2026-11-27T10:00:00.000000116Z"
    reply = frame(2, f"{t} e115\n".encode()) + frame(1, f"{t1} l116\n".encode())
    reply += frame(2, f"{t1} e116\n".encode())
    decoder = FrameDecoder(position_ns=ns(t), count_at_position=1)
    out = decoder.feed(reply)
    assert [e.line for e in out.stdout] == ["l116"]
    assert [e.line for e in out.stderr] == ["e116"]
    assert (out.position_ns, out.count_at_position) == (ns(t1), 2)


def test_position_stays_before_a_line_still_being_rejoined() -> None:
    """A stream broken mid-rejoin must resume before the split line's first part."""
    t = "2026-11-27T10:00:00.000000100Z"
    t_other = "2026-11-27T10:00:00.000000200Z"
    head = f"{t} ".encode()
    first_part = head + b"x" * (PARTIAL_SIZE - len(head))  # no newline: split
    decoder = FrameDecoder()
    out = decoder.feed(frame(1, first_part) + frame(2, f"{t_other} err\n".encode()))
    assert [e.line for e in out.stderr] == ["err"]
    assert out.position_ns == ns(t) - 1  # held before the pending first part
    done = decoder.feed(frame(1, f"{t} tail\n".encode()))
    assert [len(e.line) for e in done.stdout] == [PARTIAL_SIZE - len(head) + 4]
    assert done.position_ns == ns(t_other)  # released once the line is whole
