"""Reading a Loki push body: ``(labels, ts_ns, line)`` for every entry it holds.

Pure. The harness keeps the bodies Loki acknowledged and reads them back here after a
run, so it depends on no agent's code: snappy-compressed protobuf (``PushRequest`` of
Loki's ``push.proto``: streams = 1 {labels = 1, entries = 2 {timestamp = 1 {seconds = 1,
nanos = 2}, line = 2}}), and JSON (``{"streams": [{"stream": {...}, "values": [[ts,
line], ...]}]}``), either gzip-compressed or not. Unknown protobuf fields are skipped.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import orjson
import snappy

from minilog.errors import BenchError

__all__ = ["count_marker", "decode_push"]

_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise BenchError("truncated varint in a push body")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, value or start, end)`` of each field in
    ``buf[start:end]``; for a length-delimited field the value is its start."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value, pos
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise BenchError("a push body field runs past its end")
            yield number, wire, pos, pos + size
            pos += size
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise BenchError(f"unsupported protobuf wire type {wire} in a push body")


def _timestamp(buf: bytes, start: int, end: int) -> int:
    seconds = nanos = 0
    for number, wire, value, _ in _fields(buf, start, end):
        if wire != _VARINT:
            continue
        if number == 1:
            seconds = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 2:
            nanos = value
    return seconds * 1_000_000_000 + nanos


def _protobuf(buf: bytes) -> Iterator[tuple[str, int, bytes]]:
    for number, wire, s_start, s_end in _fields(buf, 0, len(buf)):
        if number != 1 or wire != _LEN:
            continue
        labels = ""
        entries: list[tuple[int, int]] = []
        for f_number, f_wire, f_start, f_end in _fields(buf, s_start, s_end):
            if f_wire != _LEN:
                continue
            if f_number == 1:
                labels = buf[f_start:f_end].decode("utf-8", "replace")
            elif f_number == 2:
                entries.append((f_start, f_end))
        for e_start, e_end in entries:
            ts = 0
            line = b""
            for e_number, e_wire, v_start, v_end in _fields(buf, e_start, e_end):
                if e_wire != _LEN:
                    continue
                if e_number == 1:
                    ts = _timestamp(buf, v_start, v_end)
                elif e_number == 2:
                    line = buf[v_start:v_end]
            yield labels, ts, line


def _json(body: bytes) -> Iterator[tuple[str, int, bytes]]:
    try:
        doc = orjson.loads(body)
        streams = doc["streams"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchError(f"a JSON push body that cannot be read: {exc}") from exc
    for stream in streams:
        pairs = stream.get("stream") or {}
        labels = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(pairs.items())) + "}"
        for value in stream.get("values") or []:
            yield labels, int(value[0]), str(value[1]).encode()


def decode_push(
    body: bytes, content_type: str, content_encoding: str = ""
) -> Iterator[tuple[str, int, bytes]]:
    """Every entry of one push body as ``(labels, ts_ns, line)``.

    Raises:
        BenchError: the body is neither snappy protobuf nor (gzip) JSON.
    """
    if content_encoding.strip().lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise BenchError(f"a gzip push body that cannot be read: {exc}") from exc
    if "json" in content_type.lower():
        return _json(body)
    try:
        raw = snappy.uncompress(body)
    except Exception as exc:
        raise BenchError(f"a snappy push body that cannot be read: {exc}") from exc
    return _protobuf(bytes(raw))


def count_marker(
    body: bytes, content_type: str, content_encoding: str, marker: bytes
) -> int:
    """How many times ``marker`` occurs in the uncompressed body (no parsing).

    Raises:
        BenchError: the body cannot be uncompressed.
    """
    try:
        if content_encoding.strip().lower() == "gzip":
            body = gzip.decompress(body)
        if "json" not in content_type.lower():
            body = bytes(snappy.uncompress(body))
    except Exception as exc:
        raise BenchError(f"a push body that cannot be uncompressed: {exc}") from exc
    return body.count(marker)
