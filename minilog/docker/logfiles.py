"""A container's json-file log on disk (``LogPath`` and Docker's rotated files), for
``loki.source.docker``'s fast path: the one module that reads Docker's files.

Docker's rotation (``max-size``, ``max-file``): the live file ``<id>-json.log`` is
renamed ``.1`` and a new one created; older ones move up (``.2`` ...) and the oldest
is deleted; with ``compress=true`` the ``.1`` is gzipped into ``.1.gz`` soon after.
``chain`` lists the files oldest first; ``open_from`` opens them from a position
(binary search by timestamp in plain files) and says when Docker deleted records
newer than the position before they were read (a gap); ``successors`` finds the files
that follow one that was rotated while it was read; ``LogFile.truncated`` sees a live
file cut short in place (Docker 19.03's rotation with ``max-file=1``). Every file is
opened as soon as it is known: an open file stays readable after Docker deletes it
(the tailer holds the files behind the one it reads open for that reason).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol

from minilog.docker.frames import json_record_timestamp

__all__ = ["Gap", "LogFile", "chain", "open_from", "readable", "successors"]

#: Start a resume this long before the position: the records of a container's two
#: streams reach the file slightly out of timestamp order.
RESUME_SLACK_NS: Final = 5_000_000_000
_ROTATED = re.compile(r"\.(\d+)(\.gz)?\Z")
_FIRST_LINE_MAX: Final = 1 << 21


class _Stream(Protocol):
    def read(self, n: int, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class LogFile:
    """One opened log file: its content read from ``offset`` (a gzip file, from its
    start), ``first`` its first record (the identity that survives a rename and a
    compression)."""

    path: str
    raw: BinaryIO
    ino: int
    compressed: bool
    first: bytes
    stream: _Stream

    def read(self, n: int) -> bytes:
        if self.first or self.compressed:
            return self.stream.read(n)
        at = self.raw.tell()
        data = self.stream.read(n)
        if at == 0:
            # What is read from the start is the file's identity: learned from the
            # bytes decoded, it cannot be a later file's start.
            self.first = data.split(b"\n", 1)[0] if b"\n" in data else b""
        return data

    def truncated(self) -> bool:
        """Whether this plain file was cut short under its reader: it is shorter than
        what was read, or starts with another record than its first (it grew back
        past the reader's offset). A file opened empty learns its first record here.
        """
        fd = self.raw.fileno()
        if os.fstat(fd).st_size < self.raw.tell():
            return True
        if not self.first:
            # Opened before its first record was whole: it is now (a truncation
            # racing this look is missed, as by Docker's own readers).
            self.first = _first_line(_PositionalReader(fd))
            return False
        return os.pread(fd, len(self.first), 0) != self.first

    def restart(self) -> None:
        """Read a truncated file again from its start, as the file it now is."""
        self.raw.seek(0)
        self.first = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
        with contextlib.suppress(OSError):
            self.raw.close()


@dataclass(frozen=True, slots=True)
class Gap:
    """Records Docker deleted before they were read: everything after the position
    ``after_ns`` and before the oldest record it keeps, ``before_ns``."""

    after_ns: int
    before_ns: int


class _PositionalReader:
    """Reads a file from its start without moving the reader's offset."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._at = 0

    def read(self, n: int, /) -> bytes:
        data = os.pread(self._fd, n, self._at)
        self._at += len(data)
        return data

    def close(self) -> None:
        pass


def readable(log_path: str) -> bool:
    return bool(log_path) and os.access(log_path, os.R_OK)


def chain(log_path: str) -> list[str]:
    """The container's log files, oldest first, the live one last."""
    directory, name = os.path.split(log_path)
    rotated: list[tuple[int, bool, str]] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return [log_path]
    for entry in entries:
        if not entry.startswith(name) or entry == name:
            continue
        m = _ROTATED.fullmatch(entry[len(name) :])
        if m:
            rotated.append((int(m.group(1)), m.group(2) is not None, entry))
    # A ".1" being compressed exists twice for a moment: the plain file wins.
    plain = {n for n, gz, _ in rotated if not gz}
    files = [
        os.path.join(directory, e)
        for n, gz, e in sorted(rotated, reverse=True)
        if not (gz and n in plain)
    ]
    return [*files, log_path]


def _open(path: str) -> LogFile | None:
    try:
        raw = open(path, "rb", buffering=0)  # noqa: SIM115 - owned by LogFile
    except OSError:
        return None
    compressed = path.endswith(".gz")
    stream: _Stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    try:
        first = _first_line(stream)
        if compressed:
            stream.close()
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            raw.seek(0)
    except (OSError, EOFError):
        raw.close()
        return None
    return LogFile(path, raw, os.fstat(raw.fileno()).st_ino, compressed, first, stream)


def _first_line(stream: _Stream) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < _FIRST_LINE_MAX:
        more = stream.read(65536)
        if not more:
            return b""  # no whole record yet (a new live file)
        data += more
    return data.split(b"\n", 1)[0]


def _seek_before(f: LogFile, floor_ns: int) -> None:
    """Position a plain file at a record boundary before every record at or after
    ``floor_ns`` (binary search on the records' timestamps)."""
    fd = f.raw.fileno()
    size = os.fstat(fd).st_size
    lo, hi = 0, size
    while hi - lo > 65536:
        mid = (lo + hi) // 2
        chunk = os.pread(fd, 65536, mid)
        nl = chunk.find(b"\n")
        if nl < 0:
            break
        start = mid + nl + 1
        end = chunk.find(b"\n", nl + 1)
        record = chunk[nl + 1 : end] if end > 0 else b""
        ts = json_record_timestamp(record) if record else None
        if ts is None:
            break
        if ts < floor_ns:
            lo = start
        else:
            hi = mid
    f.raw.seek(lo)


def open_from(log_path: str, position_ns: int) -> tuple[list[LogFile], Gap | None]:
    """The files to read, opened, for a resume from ``position_ns`` (0: all).

    The first is the newest file whose first record is older than the position (less
    the slack), placed close before it; the files after it follow. When even the
    oldest file starts after the position, Docker deleted what came between: the
    ``Gap`` says from when to when (how many records that was, no file tells).
    """
    opened = [f for f in (_open(p) for p in chain(log_path)) if f is not None]
    if not opened:
        return [], None
    floor = position_ns - RESUME_SLACK_NS
    start = 0
    if position_ns > 0:
        for i, f in enumerate(opened):
            ts = json_record_timestamp(f.first) if f.first else None
            if ts is not None and ts < floor:
                start = i
    for f in opened[:start]:
        f.close()
    files = opened[start:]
    gap = None
    if position_ns > 0:
        oldest = json_record_timestamp(files[0].first) if files[0].first else None
        if oldest is not None and oldest > position_ns:
            gap = Gap(position_ns, oldest)
        elif not files[0].compressed:
            _seek_before(files[0], floor)
    return files, gap


def successors(log_path: str, current: LogFile) -> tuple[list[LogFile], bool]:
    """After ``current`` was rotated: the files that came after it, opened, oldest
    first, the new live file last, and whether ``current`` is still among Docker's
    files. It is found by its first record; when Docker deleted it already, every
    file it keeps is newer, and the files between it and them may be gone too."""
    if not current.first and not current.compressed:
        # Opened while still empty: its first record is there by now.
        with contextlib.suppress(OSError):
            head = os.pread(current.raw.fileno(), _FIRST_LINE_MAX, 0)
            if b"\n" in head:
                current.first = head.split(b"\n", 1)[0]
    paths = chain(log_path)
    opened = [f for f in (_open(p) for p in paths) if f is not None]
    index = -1
    for i, f in enumerate(opened):
        if f.ino == current.ino or (current.first and f.first == current.first):
            index = i
    found = index >= 0
    if not found and current.first:
        # Docker can delete a file out of turn (a rotation while the previous ".1"
        # is still being gzipped removes the new ".1", and the gzip of the old one
        # stays): the files that start before ``current`` were read already.
        since = json_record_timestamp(current.first)
        while (
            since is not None
            and index + 1 < len(opened)
            and _starts_before(opened[index + 1], since)
        ):
            index += 1
    for f in opened[: index + 1]:
        f.close()
    return opened[index + 1 :], found


def _starts_before(f: LogFile, ts_ns: int) -> bool:
    first = json_record_timestamp(f.first) if f.first else None
    return first is not None and first < ts_ns
