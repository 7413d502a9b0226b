"""The json-file fast path's decoder gives what the API path gives for the same
records: entries, positions, resumes (``frames.JsonLogDecoder`` against
``FrameDecoder`` and ``RawLineSplitter``)."""

from __future__ import annotations

import random
import struct

import pytest

from minilog.docker.frames import (
    PARTIAL_SIZE,
    Decoded,
    FrameDecoder,
    JsonLogDecoder,
    RawLineSplitter,
    format_timestamp,
    parse_timestamp,
)

T0 = 1_795_753_222_000_000_000
Record = tuple[str, int, bytes]  # stream, ts, log (as the logger got it)


def go_json_string(data: bytes) -> bytes:
    """Docker's json-file escaping (``ffjsonWriteJSONBytesAsString``)."""
    out = bytearray(b'"')
    text = data.decode("utf-8", "replace")
    for ch in text:
        code = ord(ch)
        if ch in '\\"':
            out += b"\\" + ch.encode()
        elif ch == "\n":
            out += b"\\n"
        elif ch == "\r":
            out += b"\\r"
        elif code < 0x20 or ch in "<>&\u2028\u2029":
            out += f"\\u{code:04x}".encode()
        else:
            out += ch.encode()
    return bytes(out + b'"')


def rfc3339nano(ts: int) -> bytes:
    """Go's RFC3339Nano: the fraction's trailing zeros dropped."""
    fixed = format_timestamp(ts)
    head, frac = fixed[:19], fixed[20:29].rstrip(b"0")
    return head + (b"." + frac if frac else b"") + b"Z"


def json_file(records: list[Record]) -> bytes:
    out = []
    for stream, ts, log in records:
        body = (b'"log":' + go_json_string(log) + b",") if log else b""
        out.append(
            b"{"
            + body
            + b'"stream":"'
            + stream.encode()
            + b'","time":"'
            + rfc3339nano(ts)
            + b'"}\n'
        )
    return b"".join(out)


def api_frames(records: list[Record], tty: bool) -> bytes:
    out = []
    for stream, ts, log in records:
        payload = format_timestamp(ts) + b" " + log
        if tty:
            out.append(payload)
        else:
            kind = 2 if stream == "stderr" else 1
            out.append(struct.pack(">BxxxL", kind, len(payload)) + payload)
    return b"".join(out)


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 12)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def decode(
    decoder: JsonLogDecoder | FrameDecoder | RawLineSplitter, parts: list[bytes]
) -> tuple[list[tuple[str, int, str]], tuple[int, int]]:
    entries: list[tuple[str, int, str]] = []

    def take(res: Decoded) -> None:
        entries.extend(("stdout", e.timestamp_ns, e.line) for e in res.stdout)
        entries.extend(("stderr", e.timestamp_ns, e.line) for e in res.stderr)

    for part in parts:
        take(decoder.feed(part))
    take(decoder.finish())
    return sorted(entries), (decoder.position_ns, decoder.count_at_position)


def sample_records(rng: random.Random, interleave: bool = False) -> list[Record]:
    records: list[Record] = []
    ts = T0
    for _ in range(60):
        ts += rng.choice([0, 1, 7, 1_000_000, 999_999_999])
        stream = rng.choice(["stdout", "stderr"])
        kind = rng.randrange(8)
        if kind == 0:
            # A message Docker cut: 16 KiB pieces without newline, the last with one,
            # all with the first piece's time. With ``interleave``, the other
            # stream's copier logs between two pieces, as a real daemon may.
            other = "stderr" if stream == "stdout" else "stdout"
            for _ in range(rng.randrange(1, 4)):
                piece = bytes([97 + rng.randrange(26)]) * PARTIAL_SIZE
                records.append((stream, ts, piece))
                if interleave and rng.randrange(2):
                    records.append((other, ts + 1, b"from the other stream\n"))
            records.append((stream, ts, b"end of long\n"))
        elif kind == 1:
            records.append(
                (stream, ts, 'quotes " back\\slash <&> tab\t \u2028 é\r\n'.encode())
            )
        elif kind == 2:
            records.append((stream, ts, b"\n"))
        elif kind == 3:
            records.append((stream, ts, b"last words without newline"))
        elif kind == 4:
            records.append((stream, ts, b"ends with a backslash and n \\n\n"))
        else:
            records.append((stream, ts, f"line {rng.random()}\n".encode()))
    return records


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_json_file_and_api_give_the_same_entries_and_positions(
    seed: int, interleave: bool
) -> None:
    rng = random.Random(seed)
    records = sample_records(rng, interleave)
    via_file = decode(
        JsonLogDecoder(max_line_size=40000), chunks(json_file(records), rng)
    )
    via_api = decode(
        FrameDecoder(max_line_size=40000), chunks(api_frames(records, False), rng)
    )
    assert via_file == via_api
    assert via_file[0], "the sample has lines"


@pytest.mark.parametrize("seed", range(6))
def test_a_resume_from_the_api_paths_position_continues_on_the_file_path(
    seed: int,
) -> None:
    """Switching paths mid-log: everything once, nothing twice.

    Without interleaving: a cut while the other stream's lines fall between the
    pieces of a split line resends some of them by design (the reported position
    stays before a line still being rejoined, so that line is never lost).
    """
    rng = random.Random(100 + seed)
    records = sample_records(rng)
    frames = api_frames(records, False)
    cut = rng.randrange(len(frames) // 4, len(frames) // 2)
    api = FrameDecoder(max_line_size=40000)
    first = api.feed(frames[:cut])
    resumed = JsonLogDecoder(
        position_ns=first.position_ns,
        count_at_position=first.count_at_position,
        max_line_size=40000,
    )
    rest = decode(resumed, [json_file(records)])[0]
    got = sorted(
        [("stdout", e.timestamp_ns, e.line) for e in first.stdout]
        + [("stderr", e.timestamp_ns, e.line) for e in first.stderr]
        + rest
    )
    whole = decode(FrameDecoder(max_line_size=40000), [frames])[0]
    assert got == whole


def test_tty_records_are_one_raw_stream() -> None:
    records = [
        ("stdout", T0, b"x" * PARTIAL_SIZE),
        ("stdout", T0, b"rest\r\n"),
        ("stdout", T0 + 5, b"second\r\n"),
    ]
    via_file = decode(JsonLogDecoder(tty=True), [json_file(records)])
    via_api = decode(RawLineSplitter(), [api_frames(records, True)])
    assert via_file == via_api
    assert len(via_file[0]) == 2


def test_unparsable_records_are_counted_and_skipped() -> None:
    decoder = JsonLogDecoder()
    res = decoder.feed(
        b'garbage\n{"log":"ok\\n","stream":"stdout","time":"bad"}\n'
        + json_file([("stdout", T0, b"fine\n")])
    )
    assert [e.line for e in res.stdout] == ["fine"]
    assert res.parsing_errors == 2


def test_an_unfinished_record_waits_for_the_rest() -> None:
    data = json_file([("stdout", T0, b"one\n"), ("stderr", T0 + 1, b"two\n")])
    decoder = JsonLogDecoder()
    first = decoder.feed(data[:-10])
    assert [e.line for e in first.stdout] == ["one"] and not first.stderr
    assert (first.position_ns, first.count_at_position) == (T0, 1)
    second = decoder.feed(data[-10:])
    assert [e.line for e in second.stderr] == ["two"]


# -- whole chunks: the common case, decoded a column at a time ----------------------


def whole_line_records(rng: random.Random, n: int = 300) -> list[Record]:
    """Only whole lines (no piece of a longer message, no last words): every chunk
    of these takes the whole-chunk path."""
    records: list[Record] = []
    ts = T0
    for i in range(n):
        # Steps that leave 1-9 fraction digits once trailing zeros are trimmed, and
        # whole seconds, which Go writes without a fraction at all.
        ts += rng.choice([0, 1, 10, 1_000, 100_000_000, 999_999_999, 1_000_000_000])
        if i == n // 2:
            ts += 1_000_000_000 - ts % 1_000_000_000
        stream = rng.choice(["stdout", "stdout", "stderr"])
        kind = rng.randrange(6)
        if kind == 0:
            log = b"\n"
        elif kind == 1:
            log = b"crlf line\r\n"
        elif kind == 2:
            log = 'quotes " back\\slash <&> \t \u2028 é 😀\n'.encode()
        elif kind == 3:
            log = b"ends with a backslash and n \\n\n"
        else:
            log = f"line {i} {rng.random()}\n".encode()
        records.append((stream, ts, log))
    return records


@pytest.mark.parametrize("seed", range(12))
def test_whole_lines_in_chunks_match_the_api_path(seed: int) -> None:
    rng = random.Random(500 + seed)
    records = whole_line_records(rng)
    assert any(t % 1_000_000_000 == 0 for _, t, _ in records)
    via_file = decode(JsonLogDecoder(), chunks(json_file(records), rng))
    via_api = decode(FrameDecoder(), chunks(api_frames(records, False), rng))
    assert via_file == via_api
    lines = [line for _, _, line in via_file[0]]
    assert "crlf line" in lines and "" not in lines


def test_lines_over_max_line_size_are_cut_as_through_the_api() -> None:
    records: list[Record] = [
        ("stdout", T0 + 123_456_789 + i, ("é" * (5 + i) + "\n").encode())
        for i in range(12)
    ]
    file_decoder, api_decoder = (
        JsonLogDecoder(max_line_size=16),
        FrameDecoder(max_line_size=16),
    )
    via_file = file_decoder.feed(json_file(records))
    via_api = api_decoder.feed(api_frames(records, False))
    assert [e.line for e in via_file.stdout] == [e.line for e in via_api.stdout]
    assert via_file.truncated == via_api.truncated > 0


def test_records_with_attrs_decode_like_plain_ones() -> None:
    plain = json_file([("stdout", T0, b"one\n"), ("stderr", T0 + 1, b"two\n")])
    with_attrs = plain.replace(b'","time"', b'","attrs":{"tag":"web"},"time"')
    assert with_attrs != plain
    assert decode(JsonLogDecoder(), [with_attrs]) == decode(JsonLogDecoder(), [plain])


def resumed_lines(position: tuple[int, int], data: bytes) -> list[tuple[int, str]]:
    decoder = JsonLogDecoder(position_ns=position[0], count_at_position=position[1])
    res = decoder.feed(data)
    return [(e.timestamp_ns, e.line) for e in res.stdout]


def test_a_resume_skips_what_was_delivered_within_a_whole_chunk() -> None:
    t = T0 + 123_456_789  # not a whole second: Go writes those without a fraction
    records: list[Record] = [
        ("stdout", t, b"a\n"),
        ("stdout", t + 5, b"b\n"),
        ("stdout", t + 5, b"c\n"),
        ("stdout", t + 5, b"d\n"),
        ("stdout", t + 9, b"e\n"),
    ]
    data = json_file(records)
    assert resumed_lines((t + 5, 2), data) == [(t + 5, "d"), (t + 9, "e")]
    assert resumed_lines((t + 5, 0), data) == [(t + 5, x) for x in "bcd"] + [
        (t + 9, "e")
    ]
    assert resumed_lines((t - 1, 0), data)[0] == (t, "a")
    decoder = JsonLogDecoder(position_ns=t - 1)
    decoder.feed(data)
    assert (decoder.position_ns, decoder.count_at_position) == (t + 9, 1)


def test_the_count_at_the_position_goes_on_across_chunks() -> None:
    t = T0 + 123_456_789
    decoder = JsonLogDecoder()
    decoder.feed(json_file([("stdout", t, b"a\n"), ("stderr", t + 1, b"b\n")]))
    assert (decoder.position_ns, decoder.count_at_position) == (t + 1, 1)
    decoder.feed(json_file([("stdout", t + 1, b"c\n"), ("stdout", t, b"d\n")]))
    assert (decoder.position_ns, decoder.count_at_position) == (t + 1, 2)
    decoder.feed(json_file([("stdout", t + 1, b"\n")]))  # empty: not sent, counted
    assert (decoder.position_ns, decoder.count_at_position) == (t + 1, 3)
    res = decoder.feed(json_file([("stdout", t + 2, b"e\n")]))
    assert (res.position_ns, res.count_at_position) == (t + 2, 1)


def record_with_time(time: str, log: str = "x\\n") -> bytes:
    return f'{{"log":"{log}","stream":"stdout","time":"{time}"}}\n'.encode()


@pytest.mark.parametrize(
    "time",
    [
        "2026-12-06T07:47:17.541812817Z",  # all nine digits
        "2026-12-06T07:47:17.5418128Z",  # trailing zeros trimmed (Go's RFC3339Nano)
        "2026-12-06T07:47:17.5Z",
        "2026-12-06T07:47:17.000000001Z",
        "2026-12-06T07:47:17Z",  # a whole second: no fraction at all
        "2026-12-06t07:47:17.25z",  # lower case, which RFC 3339 allows
        "2026-12-06T07:47:17.25+01:00",  # an offset
        "2016-12-31T23:59:60.5Z",  # a leap second
    ],
)
def test_time_forms_alone_and_among_docker_records(time: str) -> None:
    expected = parse_timestamp(time.encode())
    alone = JsonLogDecoder().feed(record_with_time(time))
    assert [(e.timestamp_ns, e.line) for e in alone.stdout] == [(expected, "x")]
    # Among ordinary records, before and after, in one chunk and one per chunk.
    ordinary = record_with_time("2026-12-06T07:47:18.123Z", "y\\n")
    data = ordinary + record_with_time(time) + ordinary
    for parts in ([data], data.splitlines(keepends=True)):
        decoder = JsonLogDecoder()
        stamps = [e.timestamp_ns for p in parts for e in decoder.feed(p).stdout]
        assert stamps[1] == expected, parts
        assert len(stamps) == 3


def test_an_offset_time_does_not_shift_a_utc_time_of_the_same_clock_second() -> None:
    offset, utc = "2026-12-06T07:47:17.5+01:00", "2026-12-06T07:47:17.5Z"
    for data in (
        record_with_time(offset) + record_with_time(utc),
        record_with_time(utc) + record_with_time(offset),
    ):
        res = JsonLogDecoder().feed(data)
        assert sorted(e.timestamp_ns for e in res.stdout) == sorted(
            [parse_timestamp(offset.encode()), parse_timestamp(utc.encode())]
        )


@pytest.mark.parametrize(
    "bad",
    [
        b'{"log":"x\\n","stream":"stdout","time":"2026-12-06T07:47:17.Z"}',
        b'{"log":"x\\n","stream":"stdout","time":"2026-12-06T07:47:17,5Z"}',
        b'{"log":"x\\n","stream":"stdout","time":"2026-12-06T07:47:17.55"}',
        b'{"log":"x\\n","stream":"stdout","time":"2026-12-06T07:47:17.1234567890Z"}',
        # Arabic-Indic digits: str.isdigit() and int() take them, RFC 3339 does not.
        '{"log":"x\\n","stream":"stdout","time":"2026-12-06T07:47:17.\u0661\u0662Z"}'.encode(),
        b'{"log":"x\\n","stream":"stdout","time":"2026-12-06T07:47:17.1_0Z"}',
        b'{"log":"x\\n","stream":"stdout","time":"2026-12-06T07:47:17. 1Z"}',
        b'{"log":"x\\n","stream":"stdout","time":"2026-13-06T07:47:17.1Z"}',
        b'{"log":"x\\n","stream":"stdout","time":1796543237}',
        b'{"log":5,"stream":"stdout","time":"2026-12-06T07:47:17.1Z"}',
        b'["log","stream","time"]',
    ],
)
def test_a_bad_record_among_good_ones_is_counted_and_skipped(bad: bytes) -> None:
    t = T0 + 123_456_789
    good = json_file([("stdout", t + i, f"good {i}\n".encode()) for i in range(3)])
    lines = good.splitlines(keepends=True)
    res = JsonLogDecoder().feed(b"".join([lines[0], lines[1], bad + b"\n", lines[2]]))
    assert [e.line for e in res.stdout] == ["good 0", "good 1", "good 2"]
    assert res.parsing_errors == 1
