"""One file's tailer for ``loki.source.file``: follow the file at a path, forward its
lines.

Owns what happens to the file under the path: growth, truncation (``copytruncate``),
rotation by rename and create, deletion (the open file is read to its end first), a new
file under the same name, compressed files read once (``decompression``), where to
start (the saved position, checked against the file's identity, ``tail_from_end``),
and the fan-out of each read chunk with one delivery. Splitting and decoding is
``lines``, delivery-gated positions ``docker.ledger`` (the Docker source's), the file
``positions``, waking ``minilog.fswatch``; the supervisor is ``source``.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import gzip
import hashlib
import logging
import os
import stat
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol

from minilog.errors import MinilogError
from minilog.files.lines import Codec, LineReader, Lines, detect_bom, lookup_encoding
from minilog.files.metrics import FileMetrics, FileRow
from minilog.files.positions import FilePosition, FilePositions
from minilog.fswatch import DirectoryWatcher
from minilog.labels import format_labels, public_labels
from minilog.ledger import Ledger, Position
from minilog.model import LogEntry, LogsReceiver, StreamBatch

__all__ = [
    "FILENAME_LABEL",
    "FileTailer",
    "FileTargetInfo",
    "TailerOptions",
    "signature_of",
]

_log = logging.getLogger(__name__)

#: The label Alloy gives every entry: the path the file was read from.
FILENAME_LABEL: Final = "filename"
#: Bytes read at a time; a chunk becomes one batch per receiver.
_CHUNK: Final = 1 << 20
#: How much of a file's head identifies it (Alloy's signature size).
_SIG_SIZE: Final = 1024
#: Delay between attempts to open a file that is missing or unreadable.
_RETRY_MIN_S: Final = 1.0
_RETRY_MAX_S: Final = 10.0

_new_entry = tuple.__new__  # LogEntry(...) costs 3x more


@dataclass(frozen=True, slots=True)
class TailerOptions:
    """What every tailer of one source shares."""

    forward_to: Sequence[LogsReceiver]
    positions: FilePositions
    metrics: FileMetrics
    codec: Codec
    compression: str
    initial_delay_s: float
    tail_from_end: bool
    min_poll_s: float
    max_poll_s: float
    max_line_size: int
    watcher: DirectoryWatcher | None
    on_settled: Callable[[], None]
    join_window_s: float
    clock_ns: Callable[[], int] = time.time_ns


@dataclass(frozen=True, slots=True)
class FileTargetInfo:
    """Debug state of one tailer, for the UI (Alloy's ``targets_info``)."""

    path: str
    labels: str
    is_running: bool
    last_error: str
    #: Offset (bytes) of the newest line Loki acknowledged, the read offset, the
    #: file's size and what is not acknowledged yet (size - position).
    position: int
    read_offset: int
    size: int
    lag_bytes: int


def signature_of(head: bytes) -> str:
    """The identity hash of a file's first bytes."""
    return hashlib.blake2b(head, digest_size=16).hexdigest()


class _Stream(Protocol):
    def read(self, n: int, /) -> bytes: ...

    def close(self) -> None: ...


class _ZlibStream:
    """A zlib (``z``) stream decompressed as it is read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._z = zlib.decompressobj()

    def read(self, n: int, /) -> bytes:
        while not self._z.eof:
            data = self._raw.read(n)
            if not data:
                return self._z.flush()
            out = self._z.decompress(data)
            if out:
                return out
        return b""

    def close(self) -> None:
        self._raw.close()


@dataclass(slots=True)
class _Instance:
    """One opened file: what the path named when it was opened."""

    raw: BinaryIO
    stream: _Stream
    ino: int
    gen: int
    reader: LineReader
    #: Bytes of the (decompressed) content fed to ``reader`` so far.
    fed: int
    sig_len: int
    sig: str

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
        with contextlib.suppress(OSError):
            self.raw.close()


#: A file's identity: inode, and the length and hash of the head it was checked on.
_Identity = tuple[int, int, str]


class _Prefixed:
    """A stream with bytes already read put back in front."""

    def __init__(self, stream: _Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    def read(self, n: int, /) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return self._stream.read(n)

    def close(self) -> None:
        self._stream.close()


class _Gone(MinilogError):
    """The path does not name a readable file right now."""


class FileTailer:
    """Follows the file at ``path`` and forwards its lines; created by
    ``source.FileSource``.

    Positions are ``(generation, offset)`` in the ledger: each file opened under the
    path is a new generation, so a rotation's new file (offset 0) still comes after
    the old one, and each committed position is saved with the identity (inode and
    head signature) of its file.
    """

    def __init__(
        self, opts: TailerOptions, path: str, labels: Mapping[str, str]
    ) -> None:
        self.path = path
        self._opts = opts
        self._dir = os.path.dirname(path) or "."
        self._labels: dict[str, str] = {}
        self._labels_text = ""
        self.set_labels(labels)
        saved = opts.positions.get(path)
        self._ledger = Ledger(
            (0, saved.offset if saved else 0),
            self._commit,
            opts.on_settled,
            opts.join_window_s,
        )
        # Identity of each generation's file, for the positions file.
        self._identities: dict[int, _Identity] = {}
        if saved is not None:
            self._identities[0] = (saved.ino, saved.sig_len, saved.sig)
        self._gen = 0
        self._inst: _Instance | None = None
        self._changed = asyncio.Event()
        self._last_ts = 0
        self.is_running = False
        self.last_error = ""
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self._size = 0
        self._delayed = False

    # -- state seen by the source --

    @property
    def labels(self) -> dict[str, str]:
        return self._labels

    @property
    def in_flight(self) -> int:
        return self._ledger.in_flight

    @property
    def committed_position(self) -> Position:
        return self._ledger.committed

    def set_labels(self, labels: Mapping[str, str]) -> None:
        """Entries carry the target's public labels and ``filename`` (Alloy)."""
        merged = {**public_labels(labels), FILENAME_LABEL: self.path}
        self._labels = merged
        self._labels_text = format_labels(public_labels(labels))

    def info(self) -> FileTargetInfo:
        committed = self._ledger.committed[1]
        read = self._ledger.read[1]
        size = self._current_size()
        return FileTargetInfo(
            path=self.path,
            labels=self._labels_text,
            is_running=self.is_running,
            last_error=self.last_error,
            position=committed,
            read_offset=read,
            size=size,
            lag_bytes=max(0, size - committed),
        )

    def row(self) -> FileRow:
        return (self.path, self._ledger.read[1], self._current_size())

    def _current_size(self) -> int:
        inst = self._inst
        if inst is not None and not self._opts.compression:
            with contextlib.suppress(OSError):
                self._size = os.fstat(inst.raw.fileno()).st_size
        return self._size

    def rewind(self) -> None:
        """After a crash: forget deliveries in flight, read again from the committed
        position."""
        if self._inst is not None:
            self._inst.close()
            self._inst = None
        self._ledger.rewind()
        gen = self._ledger.committed[0]
        self._gen = gen
        self.is_running = False

    # -- the loop --

    async def run(self) -> None:
        """Tail until cancelled; a missing or unreadable file is retried."""
        watcher = self._opts.watcher
        if watcher is not None:
            watcher.subscribe(self._dir, self._changed)
        retry = _RETRY_MIN_S
        self._opts.metrics.active.inc()
        try:
            while not self.done:
                try:
                    if self._inst is None:
                        await self._open_start()
                    self.last_error = ""
                    retry = _RETRY_MIN_S
                    self.is_running = True
                    await self._follow()
                except _Gone as exc:
                    self.is_running = False
                    if str(exc) != self.last_error:
                        _log.debug("file %s: %s", self.path, exc)
                    self.last_error = str(exc)
                    await self._wait(retry)
                    retry = min(retry * 2, _RETRY_MAX_S)
        finally:
            self.is_running = False
            self._opts.metrics.active.dec()
            with contextlib.suppress(KeyError):
                self._opts.metrics.read_lines.remove(self.path)
            if watcher is not None:
                watcher.unsubscribe(self._dir, self._changed)
            if self._inst is not None:
                self._inst.close()
                self._inst = None

    async def _wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        self._changed.clear()

    # -- opening --

    def _open(self, path: str) -> tuple[BinaryIO, os.stat_result]:
        try:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - owned by _Instance
        except FileNotFoundError as exc:
            raise _Gone(f"no such file: {path}") from exc
        except OSError as exc:
            raise _Gone(f"cannot open {path}: {exc.strerror or exc}") from exc
        st = os.fstat(raw.fileno())
        if not stat.S_ISREG(st.st_mode):
            raw.close()
            raise _Gone(f"{path} is not a regular file")
        return raw, st

    def _instance(
        self, raw: BinaryIO, st: os.stat_result, offset: int, gen: int
    ) -> _Instance:
        """A reader of ``raw`` from content ``offset`` on, as generation ``gen``.

        A byte order mark at the file's start picks the encoding (Alloy), wherever
        reading starts.
        """
        opts = self._opts
        head = os.pread(raw.fileno(), _SIG_SIZE, 0)
        stream: _Stream = raw
        if opts.compression:
            stream = _decompressing(raw, opts.compression)
            first = _read_exact(stream, 4)
            stream = _Prefixed(stream, first)
        else:
            first = head[:4]
        bom, name = detect_bom(first)
        codec = lookup_encoding(name) if name is not None else opts.codec
        start = max(offset, bom)
        if opts.compression:
            # Positions count decompressed bytes: the file is read again from its
            # start and the bytes before the position are skipped (Alloy).
            _discard(stream, start)
        else:
            raw.seek(start)
        reader = LineReader(codec, offset=start, max_line_size=opts.max_line_size)
        sig = signature_of(head)
        self._identities[gen] = (st.st_ino, len(head), sig)
        return _Instance(raw, stream, st.st_ino, gen, reader, start, len(head), sig)

    async def _open_start(self) -> None:
        """Open the file at the path where reading resumes.

        The resume point is the ledger's read position ``(generation, offset)``; it
        belongs to a file whose identity is known (the saved position's, or one
        opened before a crash). That file no longer at the path (rotated or replaced
        while the agent was down) is looked for by inode in the same directory:
        found, its rest is read first, then the new file from its start. Without a
        position, ``tail_from_end`` starts after the last whole line.
        """
        opts = self._opts
        if opts.compression and opts.initial_delay_s > 0 and not self._delayed:
            self._delayed = True
            await asyncio.sleep(opts.initial_delay_s)
        raw, st = self._open(self.path)
        self._size = st.st_size
        gen, offset = self._ledger.read
        identity = self._identities.get(gen) if gen == self._gen else None
        start = 0
        if identity is not None:
            resume = self._resume_offset(raw, st, identity, offset)
            if resume is not None:
                start = resume
            else:
                raw.close()
                old = _find_by_identity(self._dir, identity)
                if old is not None:
                    _log.info(
                        "file %s was rotated while the agent was down: reading the "
                        "rest of its old file %s first",
                        self.path,
                        old,
                    )
                    old_raw, old_st = self._open(old)
                    self._inst = self._instance(old_raw, old_st, offset, gen)
                    try:
                        await self._drain_and_flush(self._inst)
                    finally:
                        self._inst.close()
                        self._inst = None
                else:
                    opts.metrics.resume_misses.inc()
                    _log.warning(
                        "file %s is not the file its position (offset %d) belongs "
                        "to: it was replaced, rotated away or truncated while the "
                        "agent was down and the old file was not found; reading the "
                        "file now there from its start",
                        self.path,
                        offset,
                    )
                self._gen += 1
                raw, st = self._open(self.path)
        elif (
            opts.tail_from_end
            and not opts.compression
            and (gen, offset) == (0, 0)
            and self._gen == 0
        ):
            start = _after_last_newline(raw, st.st_size, opts.codec.newline)
        self._inst = self._instance(raw, st, start, self._gen)
        if self._ledger.read < (self._gen, start):
            # Nothing before ``start`` will be read: the ledger starts there.
            self._ledger.read_to((self._gen, start))(True)

    def _resume_offset(
        self, raw: BinaryIO, st: os.stat_result, identity: _Identity, offset: int
    ) -> int | None:
        """Where to resume ``raw`` at ``offset``; None when it is another file."""
        ino, sig_len, sig = identity
        compressed = bool(self._opts.compression)
        if ino == 0:
            # A converted legacy position: no identity; an offset that fits is
            # trusted, as Alloy does.
            return offset if compressed or st.st_size >= offset else 0
        if st.st_ino != ino:
            return None
        head = os.pread(raw.fileno(), sig_len, 0)
        if len(head) < sig_len or signature_of(head) != sig:
            return None  # the inode was reused, or the file rewritten in place
        if not compressed and st.st_size < offset:
            return None  # truncated while the agent was down
        return offset

    # -- following --

    async def _follow(self) -> None:
        inst = self._inst
        assert inst is not None
        opts = self._opts
        poll = opts.min_poll_s
        while True:
            self._changed.clear()
            data = inst.stream.read(_CHUNK)
            if data:
                poll = opts.min_poll_s
                await self._feed(inst, data)
                if len(data) == _CHUNK:
                    # A backlog: a file read never waits, nor does a send with room
                    # in the queue, so without this the send loops would not run
                    # (and Loki would idle) until the queue is full.
                    await asyncio.sleep(0)
                continue
            if opts.compression:
                # A compressed file is read once, to its end (Alloy).
                await self._forward(inst, inst.reader.flush())
                self.done = True
                return
            # At the end: wait for a change, and look at the file before reading
            # on (a file rewritten in place must not be read from the old offset).
            event = self._check(inst)
            while event is None:
                await self._wait(poll)
                poll = min(poll * 2, opts.max_poll_s)
                event = self._check(inst)
            poll = opts.min_poll_s
            if event == "grew":
                continue
            if event == "truncated":
                # copytruncate: what was held of an unfinished line is its own line.
                await self._forward(inst, inst.reader.flush())
                _log.info("file %s was truncated: reading it from its start", self.path)
                self._gen += 1
                inst.raw.seek(0)
                fresh = self._instance(
                    inst.raw, os.fstat(inst.raw.fileno()), 0, self._gen
                )
                self._inst = inst = fresh
                self._ledger.read_to((self._gen, 0))(True)
                continue
            # Deleted or replaced: the open file is read to its end, then the new
            # file under the path (when one appears) from its start.
            await self._drain_and_flush(inst)
            inst.close()
            self._inst = None
            self._gen += 1
            _log.info(
                "file %s was %s: reading the new file at that path from its start",
                self.path,
                event,
            )
            raise _Gone(f"file {self.path} was {event}")

    async def _drain_and_flush(self, inst: _Instance) -> None:
        while data := inst.stream.read(_CHUNK):
            await self._feed(inst, data)
        await self._forward(inst, inst.reader.flush())

    async def _feed(self, inst: _Instance, data: bytes) -> None:
        inst.fed += len(data)
        if (
            inst.sig_len < _SIG_SIZE
            and inst.fed > inst.sig_len
            and not (self._opts.compression)
        ):
            # The identity grows with the file, up to _SIG_SIZE bytes (Alloy).
            head = os.pread(inst.raw.fileno(), _SIG_SIZE, 0)
            inst.sig_len, inst.sig = len(head), signature_of(head)
            self._identities[inst.gen] = (inst.ino, inst.sig_len, inst.sig)
        await self._forward(inst, inst.reader.feed(data))

    def _check(self, inst: _Instance) -> str | None:
        """What happened to the path since the end of ``inst`` was reached."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None
        self._size = st.st_size
        if st.st_ino != inst.ino:
            return "replaced"
        if st.st_size < inst.fed:
            return "truncated"
        if inst.sig_len:
            head = os.pread(inst.raw.fileno(), inst.sig_len, 0)
            if signature_of(head) != inst.sig:
                return "truncated"  # rewritten in place, past where we were
        if st.st_size > inst.fed:
            return "grew"
        return None

    async def _forward(self, inst: _Instance, lines: Lines) -> None:
        opts = self._opts
        metrics = opts.metrics
        texts = lines.texts
        if lines.invalid:
            metrics.mutated.labels("invalid_encoding").inc(lines.invalid)
        if lines.truncated:
            metrics.mutated.labels("truncated").inc(lines.truncated)
        position = (inst.gen, lines.offset)
        ledger = self._ledger
        if not texts:
            if position > ledger.read:
                ledger.read_to(position)(True)
            return
        metrics.read_lines.labels(self.path).inc(len(texts))
        # Alloy stamps each line with the time it was read; distinct nanoseconds keep
        # Loki from folding identical lines read together into one.
        now = max(opts.clock_ns(), self._last_ts + 1)
        self._last_ts = now + len(texts) - 1
        new = _new_entry
        entries = [new(LogEntry, (now + i, text, ())) for i, text in enumerate(texts)]
        receivers = opts.forward_to
        if not receivers:
            ledger.read_to(position)(True)
            return
        delivery = ledger.deliver_to(position, len(receivers), time.monotonic())
        handed = 0
        try:
            for i, receiver in enumerate(receivers):
                batch = StreamBatch(
                    dict(self._labels), entries if i == 0 else list(entries), delivery
                )
                handed += 1
                await receiver.send(batch)
        except BaseException:
            for _ in range(len(receivers) - handed):
                delivery.release(abandoned=True)
            raise

    def _commit(self, position: Position) -> None:
        gen, offset = position
        ino, sig_len, sig = self._identities.get(gen, (0, 0, ""))
        for old in [g for g in self._identities if g < gen]:
            del self._identities[old]
        self._opts.positions.put(
            self.path, FilePosition(offset, ino, sig_len, sig, self._labels_text)
        )


def _decompressing(raw: BinaryIO, compression: str) -> _Stream:
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "z":
        return _ZlibStream(raw)
    raise ValueError(f"unsupported compression format {compression!r}")


def _read_exact(stream: _Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _discard(stream: _Stream, n: int) -> None:
    """Skip ``n`` more bytes of a decompressed stream (positions count decompressed
    bytes, so a compressed file is read again from its start, as in Alloy)."""
    while n > 0:
        data = stream.read(min(n, _CHUNK))
        if not data:
            return
        n -= len(data)


def _after_last_newline(raw: BinaryIO, size: int, newline: bytes) -> int:
    """The offset just past the last newline of the file (``tail_from_end``): the
    lines already there are skipped, an unfinished last one is read."""
    block = 1024
    pos = max(0, size - block)
    fd = raw.fileno()
    while True:
        data = os.pread(fd, min(block, size - pos) + len(newline) - 1, pos)
        i = data.rfind(newline)
        if i >= 0:
            return pos + i + len(newline)
        if pos == 0:
            return 0
        pos = max(0, pos - block)


def _find_by_identity(directory: str, identity: _Identity) -> str | None:
    """The file in ``directory`` with ``identity``'s inode and head signature."""
    ino, sig_len, sig = identity
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            if entry.inode() != ino or not entry.is_file(follow_symlinks=False):
                continue
            with open(entry.path, "rb", buffering=0) as f:
                head = os.pread(f.fileno(), sig_len, 0)
        except OSError:
            continue
        if len(head) == sig_len and signature_of(head) == sig:
            return entry.path
    return None
