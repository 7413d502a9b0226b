"""A file's bytes to lines, as ``loki.source.file`` reads them (pure: no I/O).

Owns the ``encoding`` argument (looked up in Python's codec registry), the byte order
mark at the start of a file, splitting on the encoded newline (and dropping one encoded
``\\r`` before it), the cap on line length, and the byte offset after the last whole
line: the resume point a position records. What is not a whole line yet (no newline)
is held until its newline comes, or until ``flush()`` (the file was rotated away,
deleted, or is a compressed file read to its end), as Alloy's reader holds it.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_ENCODING",
    "Codec",
    "LineReader",
    "Lines",
    "detect_bom",
    "lookup_encoding",
]

DEFAULT_ENCODING: Final = "utf-8"

# Headroom above the cap while holding a line, so a capped line is known to be over
# the limit when its newline comes.
_CAP_SLACK: Final = 64


@dataclass(frozen=True, slots=True)
class Codec:
    """An encoding as the reader needs it: the Python codec, its newline and carriage
    return, and its code unit (a newline only counts at a multiple of it)."""

    name: str
    newline: bytes
    carriage_return: bytes
    unit: int


# IANA's UTF-16 and UTF-32 without a byte order mean big-endian (RFC 2781; Go's
# ianaindex, which Alloy uses, agrees); Python's "utf-16" means the machine's order.
_BYTE_ORDERED: Final = {"utf-16": "utf-16-be", "utf-32": "utf-32-be"}


def lookup_encoding(name: str) -> Codec:
    """The codec for an ``encoding`` argument ("" is UTF-8, Alloy's default).

    IANA names and their registered aliases (``ISO-8859-1``, ``windows-1252``,
    ``Shift_JIS``, ``UTF-16LE``, ...) resolve through Python's codec registry.

    Raises:
        ValueError: an unknown encoding, or one that cannot encode a newline.
    """
    try:
        info = codecs.lookup(name or DEFAULT_ENCODING)
    except LookupError as exc:
        raise ValueError(f"unknown encoding {name!r}") from exc
    python_name = _BYTE_ORDERED.get(info.name, info.name)
    try:
        newline = "\n".encode(python_name)
        carriage_return = "\r".encode(python_name)
    except (UnicodeError, LookupError) as exc:
        raise ValueError(f"encoding {name!r} cannot be read as lines: {exc}") from exc
    if len(newline) not in (1, 2, 4) or newline.decode(python_name) != "\n":
        raise ValueError(f"encoding {name!r} cannot be read as lines")
    return Codec(python_name, newline, carriage_return, len(newline))


_BOMS: Final = (
    # Alloy's order: a UTF-32LE mark is taken for UTF-16LE's, which it starts with.
    (codecs.BOM_UTF8, DEFAULT_ENCODING),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF32_BE, None),
)


def detect_bom(head: bytes) -> tuple[int, str | None]:
    """``(bytes to skip, encoding it implies or None)`` for a file starting with
    ``head`` (its first 4 bytes): UTF-8 and UTF-16 marks override ``encoding``, as in
    Alloy, even when resuming in the middle of the file."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return len(bom), name
    return 0, None


@dataclass(slots=True)
class Lines:
    """What one ``feed()``/``flush()`` produced.

    ``offset`` is the resume point after it: the file offset just past the last whole
    line consumed (held bytes of an unfinished line are not consumed).
    """

    texts: list[str] = field(default_factory=list)
    offset: int = 0
    invalid: int = 0
    truncated: int = 0


class LineReader:
    """Incremental splitter of one file's bytes, fed from ``offset`` on.

    Rules, per line:
    - the line ends at the encoded newline (at a code-unit boundary for UTF-16/32);
      one encoded ``\\r`` before it is dropped (Go ``bufio.ScanLines``);
    - bytes that do not decode are replaced with U+FFFD and the line counted in
      ``invalid`` (Loki stores lines as UTF-8 text; Alloy sends such bytes as they are);
    - beyond ``max_line_size`` bytes the rest of the line is discarded up to its
      newline, the line is cut there (a character split by the cut is dropped) and
      counted in ``truncated``: a file without newlines cannot fill memory;
    - empty lines are kept, as Alloy keeps them.
    """

    __slots__ = (
        "_capped",
        "_codec",
        "_max",
        "_pending",
        "_pending_size",
        "_utf8",
        "offset",
    )

    def __init__(self, codec: Codec, *, offset: int = 0, max_line_size: int) -> None:
        if max_line_size <= 0:
            raise ValueError("max_line_size must be positive")
        self._codec = codec
        self._utf8 = codec.name == DEFAULT_ENCODING
        self._max = max_line_size
        #: File offset after the last whole line consumed.
        self.offset = offset
        self._pending: list[bytes] = []
        # Bytes of the unfinished line seen so far, kept or discarded.
        self._pending_size = 0
        self._capped = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held back (those kept)."""
        return sum(len(p) for p in self._pending)

    @property
    def codec(self) -> Codec:
        return self._codec

    def _split(self, data: bytes) -> tuple[list[bytes], bytes]:
        """Whole lines of ``data`` (without their newlines) and the unfinished rest."""
        nl = self._codec.newline
        unit = self._codec.unit
        if unit == 1:
            parts = data.split(nl)
            return parts, parts.pop()
        lines = []
        start = 0
        search = 0
        while True:
            i = data.find(nl, search)
            if i < 0:
                break
            if (i - start) % unit:
                search = i + 1  # a newline's bytes across two code units: no newline
                continue
            lines.append(data[start:i])
            start = search = i + unit
        return lines, data[start:]

    def feed(self, data: bytes) -> Lines:
        """Split ``data``, the bytes that follow what was fed before."""
        out = Lines(offset=self.offset)
        if not data:
            return out
        skipped = 0
        capped = False
        if self._pending_size:
            # The held start of a line, joined so that a newline (or a multi-byte
            # one's first bytes) at the chunk boundary is found.
            held = b"".join(self._pending)
            skipped = self._pending_size - len(held)
            capped = self._capped
            self._pending.clear()
            self._pending_size = 0
            self._capped = False
            data = held + data
        lines, rest = self._split(data)
        if lines:
            unit = self._codec.unit
            first = lines[0]
            self.offset += skipped + len(first) + unit
            self._append(first, out, capped)
            for line in lines[1:]:
                self.offset += len(line) + unit
                self._append(line, out, False)
            skipped = 0
            capped = False
        self._pending_size = skipped
        self._capped = capped
        self._hold(rest)
        out.offset = self.offset
        return out

    def _hold(self, rest: bytes) -> None:
        if not rest:
            return
        unit = self._codec.unit
        room = self._max + _CAP_SLACK - self.buffered
        room -= room % unit
        if room > 0:
            self._pending.append(rest[:room])
        if len(rest) > room:
            self._capped = True
        self._pending_size += len(rest)

    def _append(self, line: bytes, out: Lines, capped: bool) -> None:
        cr = self._codec.carriage_return
        if line.endswith(cr) and (len(line) - len(cr)) % self._codec.unit == 0:
            line = line[: -len(cr)]
        if capped or len(line) > self._max:
            out.truncated += 1
            out.texts.append(self._decode_cut(line[: self._max]))
            return
        if self._utf8:
            try:
                out.texts.append(line.decode())
            except UnicodeDecodeError:
                out.invalid += 1
                out.texts.append(line.decode("utf-8", "replace"))
            return
        try:
            out.texts.append(line.decode(self._codec.name))
        except UnicodeDecodeError:
            out.invalid += 1
            out.texts.append(line.decode(self._codec.name, "replace"))

    def _decode_cut(self, line: bytes) -> str:
        unit = self._codec.unit
        line = line[: len(line) - len(line) % unit]
        return line.decode(self._codec.name, "ignore")

    def flush(self) -> Lines:
        """Emit the unfinished line as it is (the file will not grow any more)."""
        out = Lines(offset=self.offset)
        if not self._pending_size:
            return out
        line = b"".join(self._pending)
        capped = self._capped or self._pending_size > len(line)
        self.offset += self._pending_size
        self._pending.clear()
        self._pending_size = 0
        self._capped = False
        self._append(line[: self._max + _CAP_SLACK], out, capped)
        out.offset = self.offset
        return out

    def reset(self, offset: int) -> None:
        """Read from ``offset`` of a new file: what was held is forgotten."""
        self.offset = offset
        self._pending.clear()
        self._pending_size = 0
        self._capped = False
