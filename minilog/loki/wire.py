"""Loki ``PushRequest`` wire format: encoders, decoder and snappy block framing.

Owns the hand-written hot-path encoder (byte-identical to Loki's gogo marshaller), the
protobuf-library reference encoder, a strict decoder with Loki's checks, and snappy
block (de)compression with a size cap. Pure: no I/O. HTTP and label parsing live in
``receiver`` and ``minilog.labels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import snappy

from minilog.errors import BodyTooLargeError, DecodeError
from minilog.model import LogEntry, Metadata

__all__ = [
    "Streams",
    "compress",
    "count_push_entries",
    "decode_push_request",
    "decode_push_request_strict",
    "decompress",
    "encode_push_request",
    "encode_push_request_buffer",
    "encode_push_request_pb",
    "scan_push_request",
    "snappy_decoded_length",
]

#: What the encoders take and the decoder returns: ``(labels_text, entries)``.
Streams = Sequence[tuple[str, Sequence[LogEntry]]]

_NS = 1_000_000_000
_U64 = (1 << 64) - 1
# Loki's pkg/push/timestamp.go bounds: 0001-01-01T00:00:00Z <= t < 10000-01-01.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300800


def _varint(n: int) -> bytes:
    """Base-128 varint; negative numbers as 10-byte two's complement (proto int64)."""
    if n < 0:
        n &= _U64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints of every value below 2**14 (one or two bytes), and the two-byte "low 14 bits
# with continuation" prefixes: together they spell any nanos value in up to 3 lookups.
_SMALL = 1 << 14
_V: tuple[bytes, ...] = tuple(_varint(n) for n in range(_SMALL))
_CONT: tuple[bytes, ...] = tuple(
    bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(_SMALL)
)


def _uvarint(n: int) -> bytes:
    if n < _SMALL:
        return _V[n]
    if n < 1 << 28:
        return _CONT[n & 0x3FFF] + _V[n >> 14]
    return _varint(n)


def _nanos_field(nanos: int) -> bytes:
    """Timestamp field 2 (tag 0x10) for 0 <= nanos < 1e9; empty for zero (proto3)."""
    if not nanos:
        return b""
    if nanos < _SMALL:
        return b"\x10" + _V[nanos]
    if nanos < 1 << 28:
        return b"\x10" + _CONT[nanos & 0x3FFF] + _V[nanos >> 14]
    return (
        b"\x10"
        + _CONT[nanos & 0x3FFF]
        + _CONT[(nanos >> 14) & 0x3FFF]
        + _V[nanos >> 28]
    )


def _string_field(tag: bytes, value: str) -> bytes:
    """A length-delimited string field; empty for an empty string (proto3)."""
    if not value:
        return b""
    data = value.encode("utf-8", "surrogateescape")
    return tag + _uvarint(len(data)) + data


def _metadata_field(metadata: Metadata) -> bytes:
    """``structuredMetadata`` (field 3) pairs; empty names/values omitted (proto3)."""
    out = []
    for name, value in metadata:
        pair = _string_field(b"\x0a", name) + _string_field(b"\x12", value)
        out.append(b"\x1a" + _uvarint(len(pair)) + pair)
    return b"".join(out)


def _encode_entry(ts: int, line: str, metadata: Metadata) -> bytes:
    """One whole ``entries`` element (tag, length, body): the general, slower path."""
    secs, nanos = divmod(ts, _NS)
    ts_body = (b"\x08" + _varint(secs) if secs else b"") + _nanos_field(nanos)
    body = (
        b"\x0a"
        + _V[len(ts_body)]
        + ts_body
        + _string_field(b"\x12", line)
        + _metadata_field(metadata)
    )
    return b"\x12" + _uvarint(len(body)) + body


# Longest line the fast path takes: its entry length must stay below 2**14 too.
_FAST_MAX_LINE = _SMALL - 64
_NANOS_3 = 1 << 28  # nanos at or above this need a 5-byte varint
_NANOS_2 = 1 << 21  # ... and at or above this, at least 4 bytes


def encode_push_request(streams: Streams) -> bytes:
    """Encode a Loki ``PushRequest``, byte for byte as Loki's own marshaller does.

    See :func:`encode_push_request_buffer`, which this copies into ``bytes``.
    """
    return bytes(encode_push_request_buffer(streams))


def encode_push_request_buffer(streams: Streams) -> bytearray:
    """Encode a Loki ``PushRequest`` into one buffer (what ``compress`` takes as is).

    ``streams`` is a sequence of ``(labels_text, entries)``. Fields are written in
    field order; the entry timestamp is always present (``0a 00`` at the epoch); zero
    seconds/nanos, empty lines, empty labels and empty metadata names/values are
    omitted; seconds are ``floor(ns / 1e9)`` and negative ones are 10-byte varints.
    Strings are UTF-8, ``surrogateescape`` stand-ins written back as the original bytes.
    """
    # Hot loop: every piece but the encoded line is a cached constant. Each entry is
    # joined once and appended to the one buffer, so nothing per entry outlives the
    # loop: a list of all pieces would peak at several times the body's size, and
    # joining per-stream buffers at the end at twice it (a 1 MiB batch is encoded
    # while the writer's queue may be full, so that copy came on top of it).
    buf = bytearray()
    join = b"".join
    v = _V
    cont = _CONT
    # Timestamps of one batch share their second; the seconds field and the timestamp
    # heads (one per nanos-field length) are rebuilt only when the second changes.
    base = -(1 << 80)  # makes the first entry rebuild them
    secs_len = 0
    ts_heads: list[bytes] = []
    for labels, entries in streams:
        start = len(buf)
        buf += _string_field(b"\x0a", labels)
        for ts, line, metadata in entries:
            nanos = ts - base
            if not 0 <= nanos < _NS:
                secs, nanos = divmod(ts, _NS)
                base = secs * _NS
                secs_field = b"\x08" + _varint(secs) if secs else b""
                secs_len = len(secs_field)
                ts_heads = [
                    b"\x0a" + v[secs_len + k] + secs_field + (b"\x10" if k else b"")
                    for k in range(7)
                ]
            try:
                body = line.encode()
            except UnicodeEncodeError:
                body = line.encode("utf-8", "surrogateescape")
            n = len(body)
            if metadata or not n or n > _FAST_MAX_LINE:
                buf += _encode_entry(ts, line, metadata)
                continue
            # inner = timestamp (2 + secs + nanos field) + line (1 + len varint + n)
            if nanos >= _NANOS_3:
                inner = 10 + secs_len + (n > 127) + n
                buf += join(
                    (
                        b"\x12",
                        v[inner],
                        ts_heads[6],
                        cont[nanos & 0x3FFF],
                        cont[(nanos >> 14) & 0x3FFF],
                        v[nanos >> 28],
                        b"\x12",
                        v[n],
                        body,
                    )
                )
            elif nanos >= _NANOS_2:
                inner = 9 + secs_len + (n > 127) + n
                buf += join(
                    (
                        b"\x12",
                        v[inner],
                        ts_heads[5],
                        cont[nanos & 0x3FFF],
                        v[nanos >> 14],
                        b"\x12",
                        v[n],
                        body,
                    )
                )
            else:
                nanos_varint = _uvarint(nanos) if nanos else b""
                k = len(nanos_varint) + 1 if nanos else 0
                inner = 4 + secs_len + k + (n > 127) + n
                buf += join(
                    (b"\x12", v[inner], ts_heads[k], nanos_varint, b"\x12", v[n], body)
                )
        # The stream's tag and length go in front of it, moving it along in place.
        buf[start:start] = b"\x0a" + _uvarint(len(buf) - start)
    return buf


def encode_push_request_pb(streams: Streams) -> bytes:
    """Encode the same ``PushRequest`` with the protobuf library (reference path)."""
    from minilog._pb import push_pb2

    request = push_pb2.PushRequest()
    for labels, entries in streams:
        stream = request.streams.add()
        stream.labels = labels
        for ts, line, metadata in entries:
            entry = stream.entries.add()
            secs, nanos = divmod(ts, _NS)
            # Loki always writes the timestamp, even when both of its fields are zero.
            entry.timestamp.SetInParent()
            entry.timestamp.seconds = secs
            entry.timestamp.nanos = nanos
            entry.line = line
            for name, value in metadata:
                entry.structuredMetadata.add(name=name, value=value)
    return request.SerializeToString()


# -------------------------------------------------------------------------------------
# Decoder. Mirrors the gogo-style Unmarshal of pkg/push/types.go: unknown fields are
# skipped, a known field with the wrong wire type is an error, and timestamps are
# range checked (pkg/push/timestamp.go). Error texts follow gogo's.


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if shift >= 64:
            raise DecodeError("proto: integer overflow")
        if pos >= end:
            raise DecodeError("unexpected EOF")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _U64, pos
        shift += 7


def _read_len(data: bytes, pos: int, end: int) -> tuple[int, int]:
    b = data[pos] if pos < end else 0x80
    if b < 0x80:
        length = b
        pos += 1
    else:
        length, pos = _read_varint(data, pos, end)
        if length > 0x7FFFFFFFFFFFFFFF:
            raise DecodeError("proto: negative length found during unmarshaling")
    if pos + length > end:
        raise DecodeError("unexpected EOF")
    return pos + length, pos


def _skip(data: bytes, pos: int, end: int, wire: int) -> int:
    """Skip one unknown field's value (gogo ``skipPush``)."""
    if wire == 0:
        return _read_varint(data, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 2:
        return _read_len(data, pos, end)[0]
    elif wire == 3:
        # A group: skip fields until the matching end-group tag.
        while True:
            tag, pos = _read_varint(data, pos, end)
            if tag & 7 == 4:
                return pos
            pos = _skip(data, pos, end, tag & 7)
    else:
        raise DecodeError(f"proto: illegal wireType {wire}")
    if pos > end:
        raise DecodeError("unexpected EOF")
    return pos


def _tag(data: bytes, pos: int, end: int, message: str) -> tuple[int, int, int]:
    b = data[pos]
    if b < 0x80:
        tag = b
        pos += 1
    else:
        tag, pos = _read_varint(data, pos, end)
    field, wire = tag >> 3, tag & 7
    if wire == 4:
        raise DecodeError(f"proto: {message}: wiretype end group for non-group")
    if field <= 0:
        raise DecodeError(f"proto: {message}: illegal tag {field} (wire type {wire})")
    return field, wire, pos


def _wrong(wire: int, field: str) -> DecodeError:
    return DecodeError(f"proto: wrong wireType = {wire} for field {field}")


def _string(data: bytes, start: int, stop: int) -> str:
    return data[start:stop].decode("utf-8", "surrogateescape")


def _decode_timestamp(data: bytes, pos: int, end: int) -> int:
    seconds = nanos = 0
    while pos < end:
        field, wire, pos = _tag(data, pos, end, "Timestamp")
        if field == 1:
            if wire != 0:
                raise _wrong(wire, "Seconds")
            seconds, pos = _read_varint(data, pos, end)
            if seconds >= 1 << 63:
                seconds -= 1 << 64
        elif field == 2:
            if wire != 0:
                raise _wrong(wire, "Nanos")
            nanos, pos = _read_varint(data, pos, end)
            nanos &= 0xFFFFFFFF
            if nanos >= 1 << 31:
                nanos -= 1 << 32
        else:
            pos = _skip(data, pos, end, wire)
    if seconds < _MIN_SECONDS:
        raise DecodeError(
            f"timestamp: seconds:{seconds} nanos:{nanos} before 0001-01-01"
        )
    if seconds >= _MAX_SECONDS:
        raise DecodeError(
            f"timestamp: seconds:{seconds} nanos:{nanos} after 10000-01-01"
        )
    if not 0 <= nanos < _NS:
        raise DecodeError(
            f"timestamp: seconds:{seconds} nanos:{nanos}: nanos not in range [0, 1e9)"
        )
    return seconds * _NS + nanos


def _decode_pair(data: bytes, pos: int, end: int) -> tuple[str, str]:
    name = value = ""
    while pos < end:
        field, wire, pos = _tag(data, pos, end, "LabelPairAdapter")
        if field == 1 or field == 2:
            if wire != 2:
                raise _wrong(wire, "Name" if field == 1 else "Value")
            stop, pos = _read_len(data, pos, end)
            if field == 1:
                name = _string(data, pos, stop)
            else:
                value = _string(data, pos, stop)
            pos = stop
        else:
            pos = _skip(data, pos, end, wire)
    return name, value


# Go's zero time.Time (0001-01-01T00:00:00Z) is what an entry without a timestamp gets.
_ZERO_TIME_NS = _MIN_SECONDS * _NS


def _decode_entry(data: bytes, pos: int, end: int) -> LogEntry:
    ts = _ZERO_TIME_NS
    line = ""
    metadata: list[tuple[str, str]] = []
    while pos < end:
        b = data[pos]
        if b == 0x0A:  # timestamp, the common case first
            stop, pos = _read_len(data, pos + 1, end)
            ts = _decode_timestamp(data, pos, stop)
            pos = stop
            continue
        if b == 0x12:  # line
            stop, pos = _read_len(data, pos + 1, end)
            line = _string(data, pos, stop)
            pos = stop
            continue
        field, wire, pos = _tag(data, pos, end, "EntryAdapter")
        if field == 1 or field == 2:
            raise _wrong(wire, "Timestamp" if field == 1 else "Line")
        if field == 3 or field == 4:
            if wire != 2:
                raise _wrong(wire, "StructuredMetadata" if field == 3 else "Parsed")
            stop, pos = _read_len(data, pos, end)
            if field == 3:
                metadata.append(_decode_pair(data, pos, stop))
            else:
                _decode_pair(data, pos, stop)  # checked, then ignored: query-side only
            pos = stop
        else:
            pos = _skip(data, pos, end, wire)
    return LogEntry(ts, line, tuple(metadata))


def _decode_stream(data: bytes, pos: int, end: int) -> tuple[str, list[LogEntry]]:
    labels = ""
    entries: list[LogEntry] = []
    append = entries.append
    while pos < end:
        b = data[pos]
        if b == 0x12:  # entries, the common case first
            stop, pos = _read_len(data, pos + 1, end)
            append(_decode_entry(data, pos, stop))
            pos = stop
            continue
        field, wire, pos = _tag(data, pos, end, "StreamAdapter")
        if field == 1:
            if wire != 2:
                raise _wrong(wire, "Labels")
            stop, pos = _read_len(data, pos, end)
            labels = _string(data, pos, stop)
            pos = stop
        elif field == 2:
            raise _wrong(wire, "Entries")
        elif field == 3:
            if wire != 0:
                raise _wrong(wire, "Hash")
            pos = _read_varint(data, pos, end)[1]
        else:
            pos = _skip(data, pos, end, wire)
    return labels, entries


def _walk_request(data: bytes) -> list[tuple[int, int]]:
    """Bounds ``(start, stop)`` of each ``streams`` element of a PushRequest."""
    spans = []
    pos, end = 0, len(data)
    while pos < end:
        field, wire, pos = _tag(data, pos, end, "PushRequest")
        if field == 1 or field == 2:
            if wire != 2:
                raise _wrong(wire, "Streams" if field == 1 else "Format")
            stop, pos = _read_len(data, pos, end)
            if field == 1:
                spans.append((pos, stop))
            pos = stop
        else:
            pos = _skip(data, pos, end, wire)
    return spans


def decode_push_request(data: bytes) -> list[tuple[str, list[LogEntry]]]:
    """Decode an uncompressed ``PushRequest`` into ``(labels_text, entries)`` pairs.

    Unknown fields are skipped; a known field with the wrong wire type, a truncated
    message or a timestamp outside years 1..9999 raises :class:`DecodeError`. Strings
    are decoded with ``surrogateescape`` (Loki does not validate UTF-8).
    """
    fast = _decode_canonical(data)
    if fast is not None:
        return fast
    return decode_push_request_strict(data)


def decode_push_request_strict(data: bytes) -> list[tuple[str, list[LogEntry]]]:
    """The pure-Python decoder behind :func:`decode_push_request`: any valid input."""
    try:
        return [
            _decode_stream(data, start, stop) for start, stop in _walk_request(data)
        ]
    except IndexError as exc:  # pragma: no cover - every read is bounds-checked first
        raise DecodeError("unexpected EOF") from exc


def _decode_canonical(data: bytes) -> list[tuple[str, list[LogEntry]]] | None:
    """Decode with upb when ``data`` is exactly what a canonical encoder writes.

    upb parses in C but is lenient: it keeps mismatched wire types as unknown fields
    and lets a repeated scalar overwrite. Dropping unknown fields and serialising again
    gives back the input only if there were none of those, so then its values are the
    strict decoder's. Anything else (or invalid UTF-8, which upb refuses) returns None
    for the strict decoder to judge. Timestamps are range-checked here as well.
    """
    from google.protobuf.message import DecodeError as ProtobufDecodeError

    from minilog._pb import push_pb2

    request = push_pb2.PushRequest()
    try:
        request.ParseFromString(data)
    except ProtobufDecodeError:
        return None
    request.DiscardUnknownFields()
    if request.SerializeToString() != data:
        return None
    out: list[tuple[str, list[LogEntry]]] = []
    for stream in request.streams:
        entries: list[LogEntry] = []
        append = entries.append
        for entry in stream.entries:
            timestamp = entry.timestamp
            seconds = timestamp.seconds
            nanos = timestamp.nanos
            if not (_MIN_SECONDS <= seconds < _MAX_SECONDS and 0 <= nanos < _NS):
                return None  # the strict decoder words the error
            if not seconds and not nanos and not entry.HasField("timestamp"):
                return None  # absent: the strict decoder gives Go's zero time
            metadata = entry.structuredMetadata
            append(
                LogEntry(
                    seconds * _NS + nanos,
                    entry.line,
                    tuple([(p.name, p.value) for p in metadata]) if metadata else (),
                )
            )
        out.append((stream.labels, entries))
    return out


def scan_push_request(data: bytes) -> list[tuple[str, int]]:
    """``(labels_text, entry_count)`` per stream, without decoding the entries.

    Checks the framing of the request and its streams only: the cheap path for a
    receiver that just counts.
    """
    out = []
    for pos, end in _walk_request(data):
        labels = ""
        count = 0
        while pos < end:
            field, wire, pos = _tag(data, pos, end, "StreamAdapter")
            if field == 1 or field == 2:
                if wire != 2:
                    raise _wrong(wire, "Labels" if field == 1 else "Entries")
                stop, pos = _read_len(data, pos, end)
                if field == 1:
                    labels = _string(data, pos, stop)
                else:
                    count += 1
                pos = stop
            else:
                pos = _skip(data, pos, end, wire)
        out.append((labels, count))
    return out


def count_push_entries(data: bytes) -> tuple[int, int]:
    """``(streams, entries)`` of an uncompressed ``PushRequest``, cheaply."""
    streams = scan_push_request(data)
    return len(streams), sum(n for _, n in streams)


# -------------------------------------------------------------------------------------
# Snappy block format (what Loki's util.ParseProtoReader expects; not the framed one).


def compress(data: bytes | bytearray) -> bytes:
    """Snappy block-compress ``data``."""
    return bytes(snappy.compress(data))


def snappy_decoded_length(data: bytes | bytearray) -> int:
    """The uncompressed length a snappy block declares in its uvarint header."""
    result = shift = 0
    for b in data[:10]:
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result > 0xFFFFFFFF:  # golang/snappy decodedLen limit
                break
            return result
        shift += 7
    raise DecodeError("snappy: corrupt input")


def decompress(data: bytes | bytearray, max_size: int | None = None) -> bytes:
    """Snappy block-decompress ``data``.

    With ``max_size`` the declared length is checked before any work is done and
    :class:`BodyTooLargeError` raised when it is over. Corrupt input raises
    :class:`DecodeError` ``snappy: corrupt input``.
    """
    declared = snappy_decoded_length(data)
    if max_size is not None and declared > max_size:
        raise BodyTooLargeError(declared, max_size)
    try:
        out = snappy.uncompress(data)
    except (snappy.UncompressError, ValueError) as exc:
        raise DecodeError("snappy: corrupt input") from exc
    return bytes(out)
