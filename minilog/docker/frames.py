"""Docker log streams to ``LogEntry`` lists: bytes in, entries out (pure, no I/O).

Owns the 8-byte multiplexed framing (the streaming decoder, and whole replies split
into frames for the tailer's resume window), raw TTY streams, the 16 KiB partial-line
rejoin (alloy-spec §3.4), RFC 3339 nano timestamps as integer ns, and the resume
position. It knows nothing of labels, deliveries or sockets: ``tailer`` feeds it what
it reads.
"""

from __future__ import annotations

import calendar
import operator
import re
import struct
import time
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Final

import orjson

from minilog.model import LogEntry

__all__ = [
    "DEFAULT_MAX_LINE_SIZE",
    "PARTIAL_SIZE",
    "Decoded",
    "FrameDecoder",
    "JsonLogDecoder",
    "RawLineSplitter",
    "format_timestamp",
    "frame_timestamp",
    "json_record_timestamp",
    "parse_timestamp",
    "split_frames",
]

#: Docker's json-file/local drivers cut longer messages into parts of this size
#: (alloy-spec §3.4).
PARTIAL_SIZE: Final = 16384
#: Same cap as Alloy's scanner (16384 x 64); see ``FrameDecoder`` for what happens
#: beyond it.
DEFAULT_MAX_LINE_SIZE: Final = 1 << 20

# Headroom above max_line_size while accumulating, so a capped buffer still holds the
# "<timestamp> " prefix plus more than max_line_size bytes of content, i.e. is known to
# be over the limit when it is finally emitted (and counted as truncated).
_CAP_SLACK: Final = 64

_HEADER = struct.Struct(">BxxxL")
_HEADER_SIZE: Final = 8
_new_entry = (
    tuple.__new__
)  # LogEntry(...) costs 3x more: NamedTuple.__new__ fills defaults

_NEWLINE: Final = 10
_CR: Final = 13
_DOT: Final = 46
_Z: Final = 90

_TS_RE: Final = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_SECOND_CACHE_MAX: Final = 4096


def _parse_slow(ts: bytes) -> int:
    m = _TS_RE.fullmatch(ts)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {ts[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not (
        1 <= month <= 12
        and 1 <= day <= 31
        and hour < 24
        and minute < 60
        and second < 61
    ):
        raise ValueError(f"timestamp field out of range: {ts[:40]!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9) is not None:
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == b"+" else -offset
    frac = m.group(7) or b""
    return seconds * 1_000_000_000 + (int(frac.ljust(9, b"0")) if frac else 0)


def parse_timestamp(ts: bytes) -> int:
    """RFC 3339 timestamp (1-9 fraction digits or none, ``Z`` or offset) to Unix ns.

    Raises:
        ValueError: the text is not such a timestamp.
    """
    return _parse_slow(ts)


def split_frames(data: bytes) -> list[bytes] | None:
    """The stdout/stderr frames (header included) of a whole multiplexed reply;
    ``None`` when ``data`` is not framed (a TTY's raw stream) or ends inside a frame."""
    frames = []
    i = 0
    n = len(data)
    while i < n:
        if n - i < _HEADER_SIZE or data[i + 1 : i + 4] != b"\0\0\0":
            return None
        kind, size = _HEADER.unpack_from(data, i)
        end = i + _HEADER_SIZE + size
        if kind > 3 or end > n:
            return None
        if kind != 3:
            frames.append(data[i:end])
        i = end
    return frames


def frame_timestamp(frame: bytes) -> int | None:
    """The Docker timestamp of one whole frame's message, or ``None``."""
    stamp = frame[_HEADER_SIZE:].split(b" ", 1)[0]
    try:
        return parse_timestamp(stamp)
    except ValueError:
        return None


@dataclass(slots=True)
class Decoded:
    """What one ``feed()``/``finish()`` call produced.

    ``position_ns``/``count_at_position`` are the decoder's resume point after this
    call: the newest line timestamp consumed so far and how many consumed lines carry
    exactly it. Lines consumed include empty ones and ones a caller later drops, so a
    resume with ``since=position_ns`` can skip exactly ``count_at_position`` lines at
    that timestamp.
    """

    stdout: list[LogEntry] = field(default_factory=list)
    stderr: list[LogEntry] = field(default_factory=list)
    position_ns: int = 0
    count_at_position: int = 0
    parsing_errors: int = 0
    invalid_utf8: int = 0
    truncated: int = 0
    daemon_errors: list[str] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return len(self.stdout) + len(self.stderr)


class _LineDecoder:
    """The part shared by both stream kinds: ``<timestamp> <content>`` lines to entries.

    Rules, per line:
    - no space, or an unparsable timestamp: counted in ``parsing_errors``, skipped;
    - one trailing ``\\n`` and then one ``\\r`` are removed (Go ``bufio.ScanLines``);
    - empty content: skipped silently (still consumed for the position);
    - content longer than ``max_line_size`` bytes: cut to ``max_line_size`` bytes, a
      character split by the cut is dropped, counted in ``truncated``;
    - invalid UTF-8: decoded with U+FFFD replacement characters (Loki stores lines as
      strings), counted in ``invalid_utf8``;
    - resume: lines older than the starting position are skipped, and so are the first
      ``count_at_position`` lines that carry exactly the starting timestamp (Docker's
      ``since`` is inclusive).
    """

    __slots__ = ("_cache", "_cnt", "_floor", "_max", "_pos", "_skip")

    def __init__(
        self,
        *,
        position_ns: int = 0,
        count_at_position: int = 0,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    ) -> None:
        if max_line_size <= 0:
            raise ValueError("max_line_size must be positive")
        self._max = max_line_size
        self._floor = position_ns
        self._pos = position_ns
        self._cnt = count_at_position
        self._skip = count_at_position
        self._cache: dict[bytes, int] = {}
        self._start()

    def _start(self) -> None:
        """Set up what the stream kind holds back between chunks."""

    @property
    def position_ns(self) -> int:
        return self._pos

    @property
    def count_at_position(self) -> int:
        return self._cnt

    def _result(self) -> Decoded:
        return Decoded(position_ns=self._pos, count_at_position=self._cnt)

    def _decode(self, lines: list[bytes], out: list[LogEntry], res: Decoded) -> None:
        # The per-line hot path: locals only, one slice for the content, one decode.
        cache = self._cache
        pos, cnt, skip, floor, max_size = (
            self._pos,
            self._cnt,
            self._skip,
            self._floor,
            self._max,
        )
        append = out.append
        new = _new_entry
        for line in lines:
            sp = line.find(b" ")
            if sp == 30 and line[29] == _Z and line[19] == _DOT:
                # Docker's fixed-width RFC3339NanoFixed:
                # "2006-01-02T15:04:05.000000000Z"
                frac = line[20:29]
                base = cache.get(line[:19])
                if base is None or not frac.isdigit():
                    try:
                        ts = _parse_slow(line[:30])
                    except ValueError:
                        res.parsing_errors += 1
                        continue
                    if len(cache) >= _SECOND_CACHE_MAX:
                        cache.clear()
                    cache[line[:19]] = ts - ts % 1_000_000_000
                else:
                    ts = base + int(frac)
            elif sp < 0:
                res.parsing_errors += 1
                continue
            else:
                try:
                    ts = _parse_slow(line[:sp])
                except ValueError:
                    res.parsing_errors += 1
                    continue
            # Resuming: what precedes the saved position was delivered, and so were
            # the first ``count`` lines at it. Judged against the saved position
            # alone: the stdout lines of a chunk are decoded before its stderr lines,
            # so a newer stdout line must not end the skipping of older stderr ones.
            if ts <= floor:
                if ts < floor:
                    continue
                if skip:
                    skip -= 1
                    continue
            if ts > pos:
                pos = ts
                cnt = 1
            elif ts == pos:
                cnt += 1
            end = len(line)
            if end and line[end - 1] == _NEWLINE:
                end -= 1
            if end > sp + 1 and line[end - 1] == _CR:
                end -= 1
            if end - sp - 1 > max_size:
                res.truncated += 1
                text = line[sp + 1 : sp + 1 + max_size].decode("utf-8", "ignore")
            elif end > sp + 1:
                content = line[sp + 1 : end]
                try:
                    text = content.decode()
                except UnicodeDecodeError:
                    res.invalid_utf8 += 1
                    text = content.decode("utf-8", "replace")
            else:
                continue
            append(new(LogEntry, (ts, text, ())))
        self._pos, self._cnt, self._skip = pos, cnt, skip
        res.position_ns, res.count_at_position = pos, cnt


class FrameDecoder(_LineDecoder):
    """Incremental decoder of Docker's multiplexed log stream (non-TTY containers).

    Each frame is an 8-byte header ``[stream, 0, 0, 0, size(uint32 BE)]`` and ``size``
    bytes; headers and payloads may be cut anywhere by chunk boundaries. Stream 1 (and
    0, stdin) is stdout, 2 is stderr; 3 is an error the daemon reports in-band, returned
    in ``daemon_errors`` and counted in ``parsing_errors``; other stream ids are counted
    and skipped. Decoding never raises on bad data.

    One frame is one log message with its own ``<timestamp> `` prefix. A message Docker
    split (payload >= 16 KiB without a trailing newline) is buffered per stream and the
    later parts appended without their timestamp prefix until a part ends with a
    newline; the line keeps the first part's timestamp. A rejoined line is capped while
    it accumulates: beyond ``max_line_size`` bytes of content the remaining parts are
    discarded and the line is emitted cut to ``max_line_size`` bytes (counted in
    ``truncated``). Unlike Alloy, a message without a trailing newline that was not
    split (a container's last words) is its own line rather than being glued to the next
    message.
    """

    __slots__ = ("_buf", "_partials")

    def _start(self) -> None:
        self._buf = b""
        # Per-stream rejoin buffers (index 1 stdout, 2 stderr): parts and their total
        # size.
        self._partials: list[tuple[list[bytes], int] | None] = [None, None, None]

    @property
    def buffered(self) -> int:
        """Bytes held back: an incomplete frame and unfinished partial messages."""
        return len(self._buf) + sum(p[1] for p in self._partials if p is not None)

    def feed(self, chunk: bytes) -> Decoded:
        """Decode ``chunk``, continuing what the previous call left incomplete."""
        buf = self._buf + chunk if self._buf else chunk
        n = len(buf)
        i = 0
        lines: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        res = self._result()
        unpack = _HEADER.unpack_from
        partials = self._partials
        while n - i >= _HEADER_SIZE:
            kind, size = unpack(buf, i)
            start = i + _HEADER_SIZE
            end = start + size
            if end > n:
                break
            i = end
            if kind == 1 or kind == 2:
                stream = kind
            elif kind == 0:
                stream = 1
            elif kind == 3:
                res.parsing_errors += 1
                res.daemon_errors.append(
                    buf[start:end].decode("utf-8", "replace").strip()
                )
                continue
            else:
                res.parsing_errors += 1
                continue
            if partials[stream] is None:
                if size < PARTIAL_SIZE or buf[end - 1] == _NEWLINE:
                    lines[stream].append(buf[start:end])
                else:
                    partials[stream] = ([buf[start:end]], size)
            else:
                self._continue_partial(stream, buf[start:end], lines[stream])
        self._buf = buf[i:]
        if lines[1]:
            self._decode(lines[1], res.stdout, res)
        if lines[2]:
            self._decode(lines[2], res.stderr, res)
        if partials[1] is not None or partials[2] is not None:
            self._hold_position(res)
        return res

    def _hold_position(self, res: Decoded) -> None:
        """Keep the reported position before a line still being rejoined.

        The other stream's lines go on moving the position; were it committed past the
        first part of a split line and the stream then broke, a resume would start
        after that part and the line would be lost. Held back, the resume reads it again
        (and may send a few lines of the other stream twice: at-least-once).
        """
        for pending in (self._partials[1], self._partials[2]):
            if pending is None:
                continue
            head = pending[0][0]
            try:
                first = parse_timestamp(head[: head.find(b" ")])
            except ValueError:
                continue
            if res.position_ns >= first:
                res.position_ns, res.count_at_position = first - 1, 0

    def _continue_partial(self, stream: int, payload: bytes, out: list[bytes]) -> None:
        parts, total = self._partials[stream] or ([], 0)
        sp = payload.find(b" ")
        if sp > 0:
            try:
                _parse_slow(payload[:sp])
            except ValueError:
                pass
            else:
                payload = payload[sp + 1 :]
        complete = payload[-1:] == b"\n"
        room = self._max + _CAP_SLACK - total
        if room > 0:
            parts.append(payload[:room])
            total += min(room, len(payload))
        if complete:
            line = b"".join(parts)
            if line[-1:] != b"\n":
                line += b"\n"
            out.append(line)
            self._partials[stream] = None
        else:
            self._partials[stream] = (parts, total)

    def finish(self) -> Decoded:
        """End of stream: emit buffered partial messages; drop an incomplete frame."""
        res = self._result()
        if self._buf:
            res.parsing_errors += 1
            self._buf = b""
        for stream, out in ((1, res.stdout), (2, res.stderr)):
            pending = self._partials[stream]
            if pending is not None:
                self._partials[stream] = None
                self._decode([b"".join(pending[0])], out, res)
        return res


class RawLineSplitter(_LineDecoder):
    """Incremental decoder of a TTY container's raw ``\\n``/``\\r\\n`` stream.

    Everything is stdout (a TTY merges stderr into it) and there is no partial rejoin:
    Docker repeats the timestamp inside a split TTY line, so the text is kept as it
    comes. A line still without its newline after ``max_line_size`` bytes of content is
    capped there (the rest up to its newline is discarded) and emitted truncated when
    its newline arrives.
    """

    __slots__ = ("_pending", "_pending_size")

    def _start(self) -> None:
        self._pending: list[bytes] = []
        self._pending_size = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete last line held back."""
        return self._pending_size

    def feed(self, chunk: bytes) -> Decoded:
        """Decode ``chunk``, continuing the incomplete line of the previous call."""
        res = self._result()
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if lines and self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
        if tail:
            room = self._max + _CAP_SLACK - self._pending_size
            if room > 0:
                self._pending.append(tail[:room])
                self._pending_size += min(room, len(tail))
        if lines:
            self._decode(lines, res.stdout, res)
        return res

    def finish(self) -> Decoded:
        """End of stream: emit the last line even without its newline."""
        res = self._result()
        if self._pending:
            line = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._decode([line], res.stdout, res)
        return res


_JSON_HEAD: Final = b'{"log":"'
_JSON_STREAM: Final = b'","stream":"'
_JSON_TIME: Final = b'"time":"'
_ESCAPED_NL: Final = b"\\n"
# What the API puts before a message's content: the fixed-width timestamp and a space
# (RFC3339NanoFixed). A piece is a partial one by the same size rule on both paths.
_API_PREFIX: Final = 31
#: What a fraction of n digits is worth in ns.
_FRACTION_SCALE: Final[tuple[int, ...]] = tuple(10 ** (9 - n) for n in range(10))
# Fields of parsed json-file records, and pieces of their texts, taken in C (map).
_LOG: Final = operator.itemgetter("log")
_STREAM: Final = operator.itemgetter("stream")
_TIME: Final = operator.itemgetter("time")
_CHOP: Final = operator.itemgetter(slice(None, -1))
_SECOND: Final = operator.itemgetter(slice(None, 19))
_FRACTION: Final = operator.itemgetter(slice(20, -1))
_AT_DOT: Final = operator.itemgetter(19)
_LAST: Final = operator.itemgetter(-1)


def format_timestamp(ts_ns: int) -> bytes:
    """Unix ns as Docker's fixed-width RFC 3339 (``2006-01-02T15:04:05.000000000Z``)."""
    seconds, frac = divmod(ts_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{frac:09d}Z".encode()


def _escapes_last(raw: bytes) -> bool:
    """Whether ``raw`` ends with an escaped newline rather than an escaped backslash
    and the letter n: the run of backslashes before the ``n`` is odd."""
    if raw[-3:-2] != b"\\":
        return True
    run = len(raw) - 1 - len(raw[:-1].rstrip(b"\\"))
    return run % 2 == 1


def json_record_timestamp(record: bytes) -> int | None:
    """The ``time`` of one json-file record (a line of the file), or ``None``."""
    i = record.rfind(_JSON_TIME)
    if i < 0:
        return None
    end = record.find(b'"', i + 8)
    try:
        return parse_timestamp(record[i + 8 : end])
    except ValueError:
        return None


class JsonLogDecoder(_LineDecoder):
    """Incremental decoder of Docker's json-file log (``LogPath``), giving what
    ``FrameDecoder`` (or ``RawLineSplitter`` for a TTY) gives for the same records
    read through the API: the same entries, the same positions.

    Each line of the file is one record ``{"log":"...","stream":"...","time":"..."}``
    (``attrs`` may come before ``time``; an empty ``log`` is left out). A record whose
    ``log`` lacks its trailing newline is a piece of a longer message (Docker cuts at
    16 KiB) or a container's last words; as through the API, a piece that would make a
    frame of 16 KiB or more starts a rejoin and the pieces after it are appended until
    one ends with a newline, while a shorter one is a line of its own. The records of
    a TTY container are one raw stream, split at newlines as ``RawLineSplitter`` does.
    Bytes after the last newline of the file are held until the rest is written.
    Unparsable records are counted in ``parsing_errors`` and skipped.
    """

    __slots__ = ("_held", "_partials", "_raw", "_scache", "_tcache")

    def __init__(
        self,
        *,
        position_ns: int = 0,
        count_at_position: int = 0,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        tty: bool = False,
    ) -> None:
        super().__init__(
            position_ns=position_ns,
            count_at_position=count_at_position,
            max_line_size=max_line_size,
        )
        self._raw = (
            RawLineSplitter(
                position_ns=position_ns,
                count_at_position=count_at_position,
                max_line_size=max_line_size,
            )
            if tty
            else None
        )

    def _start(self) -> None:
        self._held = b""
        # Per-stream rejoin: (first piece's timestamp, pieces, total size).
        self._partials: list[tuple[int, list[bytes], int] | None] = [None, None, None]
        self._tcache: dict[bytes, int] = {}
        self._scache: dict[str, int] = {}

    @property
    def position_ns(self) -> int:
        return self._raw.position_ns if self._raw is not None else self._pos

    @property
    def count_at_position(self) -> int:
        return self._raw.count_at_position if self._raw is not None else self._cnt

    @property
    def buffered(self) -> int:
        """Bytes held back: an unfinished record and unfinished partial messages."""
        return len(self._held) + sum(p[2] for p in self._partials if p is not None)

    def drop_unfinished(self) -> None:
        """Forget the unfinished record held back (its file was truncated: the rest
        of it will never come)."""
        self._held = b""

    def _time(self, text: bytes) -> int:
        # RFC3339Nano as Go writes it: the fraction without its trailing zeros.
        cache = self._tcache
        base = cache.get(text[:19])
        if base is not None and 21 < len(text) <= 30 and text[19] == _DOT:
            frac = text[20:-1]
            if frac.isdigit() and text[-1] == _Z:
                return base + int(frac) * _FRACTION_SCALE[len(frac)]
        ts = _parse_slow(text)
        if text[-1:] in b"Zz":
            # Only a UTC time's first 19 characters name its second: with an offset
            # they name another one.
            if len(cache) >= _SECOND_CACHE_MAX:
                cache.clear()
            cache[text[:19]] = ts - ts % 1_000_000_000
        return ts

    def _record(self, record: bytes) -> tuple[int, int, bytes, bool] | None:
        """``(stream, ts, content without its newline, ends with a newline)``."""
        if record.startswith(_JSON_HEAD):
            i = record.find(_JSON_STREAM, 8)
            if i > 0:
                raw = record[8:i]
                stream = 2 if record[i + 15 : i + 18] == b"err" else 1
                t = record.rfind(_JSON_TIME)
                end = record.find(b'"', t + 8)
                if t > i and end > 0:
                    try:
                        ts = self._time(record[t + 8 : end])
                    except ValueError:
                        return None
                    newline = raw.endswith(_ESCAPED_NL) and _escapes_last(raw)
                    if newline:
                        raw = raw[:-2]
                    if b"\\" not in raw:
                        return stream, ts, raw, newline
                    try:
                        text = orjson.loads(b'"' + raw + b'"')
                    except orjson.JSONDecodeError:
                        return None
                    return stream, ts, text.encode("utf-8", "surrogatepass"), newline
        try:
            obj = orjson.loads(record)
            log = obj.get("log", "")
            ts = parse_timestamp(obj["time"].encode())
        except (orjson.JSONDecodeError, AttributeError, KeyError, ValueError):
            return None
        if not isinstance(log, str):
            return None
        stream = 2 if obj.get("stream") == "stderr" else 1
        content = log.encode("utf-8", "surrogatepass")
        newline = content.endswith(b"\n")
        return stream, ts, content[:-1] if newline else content, newline

    def feed(self, data: bytes) -> Decoded:
        """Decode ``data``, continuing what the previous call left unfinished."""
        held = self._held
        end = data.rfind(b"\n")
        res = self._result()
        if end < 0:
            self._held = held + data
            records = []
        else:
            # Copies of a whole chunk cost more than the Python work on it: the
            # common case copies it only to make one JSON document of its records.
            self._held = data[end + 1 :]
            if self._raw is None and self._feed_whole(held, data, end, res):
                return res
            records = (held + data[:end]).split(b"\n")
        if self._raw is not None:
            return self._feed_raw(records)
        lines: tuple[list[tuple[int, bytes]], ...] = ([], [], [])
        partials = self._partials
        for record in records:
            parsed = self._record(record)
            if parsed is None:
                if record.strip():
                    res.parsing_errors += 1
                continue
            stream, ts, content, newline = parsed
            pending = partials[stream]
            if pending is None:
                if newline or len(content) + _API_PREFIX < PARTIAL_SIZE:
                    lines[stream].append((ts, content))
                else:
                    partials[stream] = (ts, [content], len(content) + _API_PREFIX)
                continue
            first_ts, parts, total = pending
            room = self._max + _CAP_SLACK - total
            if room > 0:
                parts.append(content[:room])
                total += min(room, len(content))
            if newline:
                lines[stream].append((first_ts, b"".join(parts)))
                partials[stream] = None
            else:
                partials[stream] = (first_ts, parts, total)
        for stream, out in ((1, res.stdout), (2, res.stderr)):
            if lines[stream]:
                self._decode_parsed(lines[stream], out, res)
        if partials[1] is not None or partials[2] is not None:
            for pending in (partials[1], partials[2]):
                if pending is not None and res.position_ns >= pending[0]:
                    res.position_ns, res.count_at_position = pending[0] - 1, 0
        return res

    def _feed_whole(self, held: bytes, data: bytes, end: int, res: Decoded) -> bool:
        """The common case, a column at a time: one JSON parse for all the records in
        ``held + data[:end]`` (whole lines of the file, without the last newline; no
        newline in ``held``), then each field
        of all of them in one C-level pass: no Python code runs per line, which would
        cost more than the parse. It applies when every record is an object whose
        ``log`` ends with a newline (a whole line) and that has a ``stream`` and a UTC
        ``time`` with a fraction, no rejoin is in progress and nothing is at or before
        the resume position. False, with nothing changed, for anything else: the
        caller then takes the records one by one (which decides every odd case)."""
        if self._skip or self._partials[1] is not None or self._partials[2] is not None:
            return False
        try:
            # A record holds no raw newline (JSON escapes it): one line, one element.
            records = memoryview(data.replace(b"\n", b","))[:end]
            objs = orjson.loads(b"".join((b"[", held, records, b"]")))
        except orjson.JSONDecodeError:
            return False
        try:
            logs = list(map(_LOG, objs))
            streams = list(map(_STREAM, objs))
            if not all(map(str.endswith, logs, repeat("\n"))):
                return False  # a piece of a longer message, or last words
            stamps = self._stamps(list(map(_TIME, objs)))
        except (KeyError, TypeError, ValueError, IndexError):
            return False
        if not stamps or (self._floor and min(stamps) <= self._floor):
            return False
        if any(map(str.endswith, logs, repeat("\r\n"))):
            texts = list(map(str.removesuffix, map(_CHOP, logs), repeat("\r")))
        else:
            texts = list(map(_CHOP, logs))
        if max(map(len, texts)) > self._max // 4 and any(
            len(text.encode()) > self._max for text in texts
        ):
            return False  # to be cut: the record-by-record path cuts at a byte count
        newest = max(stamps)
        if newest > self._pos:
            self._pos, self._cnt = newest, stamps.count(newest)
        elif newest == self._pos:
            self._cnt += stamps.count(newest)
        entries = list(
            map(_new_entry, repeat(LogEntry), zip(stamps, texts, repeat(())))
        )
        if "" in texts:
            # Empty lines move the position but are not sent.
            entries = list(compress(entries, texts))
            streams = list(compress(streams, texts))
        if "stderr" in streams:
            errs = list(map(operator.eq, streams, repeat("stderr")))
            res.stdout = list(compress(entries, map(operator.not_, errs)))
            res.stderr = list(compress(entries, errs))
        else:
            res.stdout = entries
        res.position_ns, res.count_at_position = self._pos, self._cnt
        return True

    def _stamps(self, times: list[str]) -> list[int] | None:
        """Unix ns of json-file ``time`` values as Docker writes them (RFC3339Nano in
        UTC: ``2006-01-02T15:04:05.999999999Z``, trailing zeros of the fraction left
        out); None when one is in another form.

        Raises:
            TypeError, ValueError, IndexError: a value is not such a string.
        """
        n = len(times)
        fractions = list(map(_FRACTION, times))
        digits = "".join(fractions)
        if (
            not digits.isascii()
            or not digits.isdigit()
            or "".join(map(_AT_DOT, times)) != "." * n
            or "".join(map(_LAST, times)) != "Z" * n
        ):
            return None
        cache = self._scache
        keys = list(map(_SECOND, times))
        seconds = list(map(cache.get, keys))
        if None in seconds:
            # Each second not seen before is parsed once, however many lines it has.
            if len(cache) >= _SECOND_CACHE_MAX:
                cache.clear()
            for key in set(compress(keys, map(operator.is_, seconds, repeat(None)))):
                cache[key] = _parse_slow(key.encode() + b"Z")
            seconds = list(map(cache.__getitem__, keys))
        # int("") raises for a "." without digits, the scale's IndexError for more
        # than nine digits: no timestamps either.
        return list(
            map(
                operator.add,
                seconds,
                map(
                    operator.mul,
                    map(int, fractions),
                    map(_FRACTION_SCALE.__getitem__, map(len, fractions)),
                ),
            )
        )

    def _feed_raw(self, records: list[bytes]) -> Decoded:
        assert self._raw is not None
        parts = []
        errors = 0
        for record in records:
            parsed = self._record(record)
            if parsed is None:
                errors += record.strip() != b""
                continue
            _, ts, content, newline = parsed
            parts.append(
                format_timestamp(ts) + b" " + content + (b"\n" if newline else b"")
            )
        res = self._raw.feed(b"".join(parts))
        res.parsing_errors += errors
        return res

    def _decode_parsed(
        self, lines: list[tuple[int, bytes]], out: list[LogEntry], res: Decoded
    ) -> None:
        """``_LineDecoder._decode`` for lines whose timestamp is parsed already."""
        pos, cnt, skip, floor, max_size = (
            self._pos,
            self._cnt,
            self._skip,
            self._floor,
            self._max,
        )
        append = out.append
        new = _new_entry
        for ts, content in lines:
            if ts <= floor:
                if ts < floor:
                    continue
                if skip:
                    skip -= 1
                    continue
            if ts > pos:
                pos = ts
                cnt = 1
            elif ts == pos:
                cnt += 1
            end = len(content)
            if end and content[end - 1] == _CR:
                end -= 1
            if end > max_size:
                res.truncated += 1
                text = content[:max_size].decode("utf-8", "ignore")
            elif end:
                try:
                    text = (content[:end] if end != len(content) else content).decode()
                except UnicodeDecodeError:
                    res.invalid_utf8 += 1
                    text = content[:end].decode("utf-8", "replace")
            else:
                continue
            append(new(LogEntry, (ts, text, ())))
        self._pos, self._cnt, self._skip = pos, cnt, skip
        res.position_ns, res.count_at_position = pos, cnt

    def finish(self) -> Decoded:
        """End of the log: emit unfinished partial messages (as through the API)."""
        if self._raw is not None:
            res = self._raw.finish()
            if self._held.strip():
                res.parsing_errors += 1
            self._held = b""
            return res
        res = self._result()
        if self._held.strip():
            res.parsing_errors += 1
        self._held = b""
        for stream, out in ((1, res.stdout), (2, res.stderr)):
            pending = self._partials[stream]
            if pending is not None:
                self._partials[stream] = None
                self._decode_parsed([(pending[0], b"".join(pending[1]))], out, res)
        return res
