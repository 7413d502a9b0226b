"""Wire format: Loki's golden vectors, encoder equivalence, decoder checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from minilog.errors import BodyTooLargeError, DecodeError
from minilog.loki.wire import (
    compress,
    count_push_entries,
    decode_push_request,
    decode_push_request_strict,
    decompress,
    encode_push_request,
    encode_push_request_pb,
    snappy_decoded_length,
)
from minilog.model import LogEntry

DATA = Path(__file__).resolve().parents[1] / "data" / "loki-push"
VECTORS = json.loads((DATA / "vectors.json").read_text())
NAMES = [v["name"] for v in VECTORS]


def _streams(vector: dict[str, object]) -> list[tuple[str, list[LogEntry]]]:
    request = vector["request"]
    assert isinstance(request, dict)
    return [
        (
            stream["labels"],
            [
                LogEntry(
                    int(e["ts_unix_nano"]),
                    e["line"],
                    tuple((k, v) for k, v in e.get("structured_metadata", [])),
                )
                for e in stream["entries"]
            ],
        )
        for stream in request["streams"]
    ]


@pytest.mark.parametrize("vector", VECTORS, ids=NAMES)
def test_hand_encoder_reproduces_loki_bytes(vector: dict[str, object]) -> None:
    expected = (DATA / f"{vector['name']}.pb").read_bytes()
    assert encode_push_request(_streams(vector)) == expected


@pytest.mark.parametrize("vector", VECTORS, ids=NAMES)
def test_protobuf_library_reproduces_loki_bytes(vector: dict[str, object]) -> None:
    expected = (DATA / f"{vector['name']}.pb").read_bytes()
    assert encode_push_request_pb(_streams(vector)) == expected


@pytest.mark.parametrize("decode", [decode_push_request, decode_push_request_strict])
@pytest.mark.parametrize("vector", VECTORS, ids=NAMES)
def test_snappy_bodies_decode_to_the_vector_entries(
    vector: dict[str, object], decode: Callable[[bytes], object]
) -> None:
    body = (DATA / f"{vector['name']}.pb.snappy").read_bytes()
    assert decode(decompress(body)) == _streams(vector)


@pytest.mark.parametrize("vector", VECTORS, ids=NAMES)
def test_count_matches_full_decode(vector: dict[str, object]) -> None:
    raw = (DATA / f"{vector['name']}.pb").read_bytes()
    streams = _streams(vector)
    assert count_push_entries(raw) == (len(streams), sum(len(e) for _, e in streams))


def test_worked_example_from_the_protocol_notes() -> None:
    """loki-protocol.md section 1.3, byte for byte."""
    entry = LogEntry(1_700_000_000_123_456_789, "hello", (("trace_id", "abc"),))
    expected = bytes.fromhex(
        "0a35"
        "0a0c7b6a6f623d2274657374227d"
        "1225"
        "0a0b"
        "0880e2cfaa06"
        "10959aef3a"
        "120568656c6c6f"
        "1a0f"
        "0a0874726163655f6964"
        "1203616263"
    )
    assert encode_push_request([('{job="test"}', [entry])]) == expected


def test_epoch_entry_keeps_an_empty_timestamp() -> None:
    raw = encode_push_request([("", [LogEntry(0, "x")])])
    assert raw == bytes.fromhex("0a07 1205 0a00 120178")


def test_pre_1970_seconds_are_ten_byte_varints_with_floored_nanos() -> None:
    raw = encode_push_request([("", [LogEntry(-1, "")])])
    # -1 ns = second -1 + 999999999 ns
    assert raw == bytes.fromhex("0a15 1213 0a11 08ffffffffffffffffff01 10ff93ebdc03")
    assert decode_push_request(raw) == [("", [LogEntry(-1, "")])]


def test_empty_metadata_value_writes_only_the_name() -> None:
    raw = encode_push_request([("", [LogEntry(0, "", (("k", ""),))])])
    assert raw == bytes.fromhex("0a09 1207 0a00 1a03 0a016b")


def test_long_lines_take_the_general_path_and_stay_identical() -> None:
    entries = [
        LogEntry(1_764_216_000_000_000_000 + i, "y" * size)
        for i, size in enumerate([1, 127, 128, 16_319, 16_320, 16_321, 16_384, 70_000])
    ]
    streams = [('{a="b"}', entries)]
    assert encode_push_request(streams) == encode_push_request_pb(streams)


def test_invalid_utf8_in_lines_round_trips_as_raw_bytes() -> None:
    line = b"ok \xff\xfe end".decode("utf-8", "surrogateescape")
    raw = encode_push_request([('{a="b"}', [LogEntry(5, line)])])
    assert b"ok \xff\xfe end" in raw
    assert decode_push_request(raw)[0][1][0].line == line


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_line = st.one_of(
    _text, st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
)
_timestamp = st.one_of(
    st.integers(-62_135_596_800 * 10**9, 253_402_300_799 * 10**9),
    st.sampled_from([0, -1, 1, 10**9, 1_764_216_000_000_000_000, 2**63 - 1]),
)
_entry = st.builds(
    LogEntry,
    _timestamp,
    _line,
    st.lists(st.tuples(_text, _text), max_size=3).map(tuple),
)
_streams_strategy = st.lists(st.tuples(_text, st.lists(_entry, max_size=6)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(_streams_strategy)
def test_hand_encoder_matches_protobuf_library(
    streams: list[tuple[str, list[LogEntry]]],
) -> None:
    raw = encode_push_request(streams)
    assert raw == encode_push_request_pb(streams)
    expected = [(labels, list(es)) for labels, es in streams]
    assert decode_push_request(raw) == expected
    assert decode_push_request_strict(raw) == expected


def test_wire_type_mismatch_after_the_known_fields_is_still_an_error() -> None:
    """upb would keep it as an unknown field; Loki's decoder refuses it."""
    raw = bytes.fromhex("0a09 1207 0a00 120178 1001")
    with pytest.raises(DecodeError, match="wrong wireType = 0 for field Line"):
        decode_push_request(raw)


def test_unknown_fields_inside_entries_are_skipped() -> None:
    raw = bytes.fromhex("0a0e 120c 0a02 4801 120178 4a0161 4801")
    assert decode_push_request(raw) == [("", [LogEntry(0, "x")])]


def test_repeated_line_field_keeps_the_last_like_gogo() -> None:
    raw = bytes.fromhex("0a0a 1208 0a00 120178 120179")
    assert decode_push_request(raw) == [("", [LogEntry(0, "y")])]


def test_decoder_skips_unknown_fields() -> None:
    raw = encode_push_request([('{a="b"}', [LogEntry(7, "x")])])
    # field 9 varint, field 10 fixed64, field 11 bytes, field 12 fixed32 at top level
    extra = bytes.fromhex("4801 510102030405060708 5a03616263 6501020304")
    assert decode_push_request(extra + raw + extra) == [('{a="b"}', [LogEntry(7, "x")])]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (bytes.fromhex("0801"), "proto: wrong wireType = 0 for field Streams"),
        (bytes.fromhex("0a020801"), "proto: wrong wireType = 0 for field Labels"),
        (bytes.fromhex("0a021001"), "proto: wrong wireType = 0 for field Entries"),
        (
            bytes.fromhex("0a04 1202 0801"),
            "proto: wrong wireType = 0 for field Timestamp",
        ),
        (
            bytes.fromhex("0a06 1204 0a02 0a00"),
            "proto: wrong wireType = 2 for field Seconds",
        ),
        (bytes.fromhex("0a05"), "unexpected EOF"),
        (bytes.fromhex("0a0212"), "unexpected EOF"),
        (bytes.fromhex("07"), "illegal tag 0"),
    ],
)
def test_decoder_rejects_malformed_messages(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_push_request(raw)


@pytest.mark.parametrize(
    ("seconds", "nanos", "message"),
    [
        (-62_135_596_801, 0, "before 0001-01-01"),
        (253_402_300_800, 0, "after 10000-01-01"),
        (0, 1_000_000_000, "nanos not in range"),
        (0, -1, "nanos not in range"),
    ],
)
def test_decoder_rejects_timestamps_loki_rejects(
    seconds: int, nanos: int, message: str
) -> None:
    ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos).SerializeToString()
    entry = b"\x0a" + bytes([len(ts)]) + ts
    raw = b"\x0a" + bytes([len(entry) + 2]) + b"\x12" + bytes([len(entry)]) + entry
    with pytest.raises(DecodeError, match=message):
        decode_push_request(raw)


def test_decoder_accepts_timestamp_bounds() -> None:
    low, high = -62_135_596_800 * 10**9, 253_402_300_800 * 10**9 - 1
    streams = [("", [LogEntry(low, "a"), LogEntry(high, "b")])]
    assert decode_push_request(encode_push_request(streams)) == streams


def test_missing_timestamp_decodes_as_go_zero_time() -> None:
    raw = bytes.fromhex("0a05 1203 120178")
    assert decode_push_request(raw) == [("", [LogEntry(-62_135_596_800 * 10**9, "x")])]


def test_snappy_round_trip_and_declared_length() -> None:
    data = b"abc" * 1000
    packed = compress(data)
    assert snappy_decoded_length(packed) == len(data)
    assert decompress(packed, max_size=len(data)) == data


def test_decompress_refuses_declared_length_over_limit_before_work() -> None:
    packed = compress(b"z" * 5000)
    with pytest.raises(BodyTooLargeError) as info:
        decompress(packed, max_size=4999)
    assert (info.value.size, info.value.limit) == (5000, 4999)
    assert str(info.value) == "message size too large than max (5000 vs 4999)"


@pytest.mark.parametrize(
    "body", [b"", b"\xff\xff\xff\xff\xff\xff", b"\x10garbage-literal"]
)
def test_decompress_reports_corrupt_input(body: bytes) -> None:
    with pytest.raises(DecodeError, match="snappy: corrupt input"):
        decompress(body)
