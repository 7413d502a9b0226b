"""Positions files: the file handling ``loki.source.docker``'s positions
(``docker.positions``) and ``loki.source.file``'s (``files.positions``) share.

Owns the file format (one JSON object of entries keyed by a string), loading,
crash-safe saving (temp file in the same directory, fsync, rename, fsync of the
directory) with one backup kept, and the recovery from a damaged file. It knows
nothing about what an entry means: each source's module says how its entries are read
and written, and ``ledger`` decides what a position means.

Damage never stops the agent. A file that cannot be read or is not what minilog writes
(truncated, garbage, wrong shape, empty, a directory, unreadable) is set aside as
``positions.json.corrupt-<UTC time>``, said once in the log, and the backup
``positions.json.bak`` (the file as it was one save earlier) is used instead. What
neither file records cannot be proven delivered: such a container or file is read
from the start of what is retained, so lines may reach Loki twice but none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import orjson

from minilog.errors import MinilogError

__all__ = ["BACKUP_SUFFIX", "CORRUPT_INFIX", "PositionStore"]

_log = logging.getLogger(__name__)

#: The backup is ``<file name><BACKUP_SUFFIX>``.
BACKUP_SUFFIX: Final = ".bak"
#: A damaged file is set aside as ``<file name><CORRUPT_INFIX><UTC time>``.
CORRUPT_INFIX: Final = ".corrupt-"
# Least time between two attempts while saving fails (a full or read-only disk).
_SAVE_RETRY_S: Final = 1.0

#: The entry type of a positions file.
EntryT = TypeVar("EntryT")


class _DamagedError(MinilogError):
    """The file exists but does not hold positions minilog wrote (the reason)."""


def _parse(data: bytes, load: Callable[[Any], EntryT | None]) -> dict[str, EntryT]:
    if not data.strip():
        # minilog always writes at least "{}": an empty file was cut short.
        raise _DamagedError("the file is empty")
    try:
        raw: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _DamagedError(f"invalid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise _DamagedError("the top level is not an object")
    entries = {}
    for key, value in raw.items():
        entry = load(value) if key else None
        if entry is None:
            raise _DamagedError(f"bad entry for {key!r}")
        entries[key] = entry
    return entries


def _read(
    path: Path, read: Callable[[Path], bytes], load: Callable[[Any], EntryT | None]
) -> dict[str, EntryT] | None:
    """The positions in ``path``; None when there is no such file.

    Raises:
        _DamagedError: the file cannot be read or is not a positions file.
    """
    try:
        data = read(path)
    except FileNotFoundError:
        return None
    except IsADirectoryError as exc:
        raise _DamagedError("it is a directory") from exc
    except OSError as exc:
        raise _DamagedError(f"cannot read it: {exc}") from exc
    return _parse(data, load)


class PositionStore(Generic[EntryT]):
    """Entries keyed by a string, kept in memory and saved atomically: the file
    handling every positions file shares (see ``Positions`` for Docker's, and
    ``files.positions`` for files'). Subclasses say how an entry is read and written
    (``load_entry``, ``dump_entry``) and what it is called in messages (``thing``).
    """

    #: What a key names, in log messages ("containers", "files").
    thing = "entries"
    #: What happens to a key without a position, for the recovery message.
    missing = "an entry without a position starts afresh"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_save: Callable[[OSError | None], None] | None = None,
        read: Callable[[Path], bytes] = Path.read_bytes,
    ) -> None:
        self.path = Path(path)
        self._read_file = read
        self.backup_path = self.path.with_name(self.path.name + BACKUP_SUFFIX)
        self.recovery = ""
        self.save_error: OSError | None = None
        self._on_save = on_save
        self._entries: dict[str, EntryT] = {}
        self._dirty = False
        # Monotonic time of the oldest change the file does not hold yet.
        self._unsaved_since: float | None = None
        self._changed = asyncio.Event()
        self._save_lock = asyncio.Lock()
        # Whether the file on disk is a good copy, worth keeping as the backup.
        self._file_good = False
        self._load()

    def load_entry(self, value: Any) -> EntryT | None:
        """An entry from its JSON form; None when it is not one minilog wrote."""
        raise NotImplementedError

    def dump_entry(self, entry: EntryT) -> dict[str, Any]:
        raise NotImplementedError

    # -- loading --

    def _load(self) -> None:
        try:
            entries = _read(self.path, self._read_file, self.load_entry)
        except _DamagedError as exc:
            self._recover(str(exc))
            return
        if entries is None:
            if self.backup_path.exists():
                _log.warning(
                    "positions file %s does not exist: starting without positions "
                    "(its backup %s is ignored, as a deleted file means a reset)",
                    self.path,
                    self.backup_path,
                )
            return
        self._entries = entries
        self._file_good = True

    def _recover(self, reason: str) -> None:
        moved = self._set_aside()
        try:
            backup = _read(self.backup_path, self._read_file, self.load_entry)
        except _DamagedError as exc:
            backup, unusable = (
                None,
                f"its backup {self.backup_path} is damaged too ({exc})",
            )
        else:
            unusable = f"it has no backup ({self.backup_path})"
        if backup is not None:
            self._entries = backup
            source = (
                f"resumed from its backup {self.backup_path} (one save older, "
                f"{len(backup)} {self.thing})"
            )
        else:
            source = unusable
        self.recovery = (
            f"positions file {self.path} is damaged ({reason}); {moved}; {source}; "
            f"{self.missing}"
        )
        _log.warning("%s", self.recovery)
        # Save the recovered state now: the damaged file must not be read again, and
        # a crash before the first position moves must not lose the backup's content.
        self._mark_dirty()
        # A failure is recorded in save_error; the flusher retries.
        with contextlib.suppress(OSError):
            self.save()

    def _set_aside(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}{CORRUPT_INFIX}{stamp}")
        n = 0
        while os.path.lexists(target):
            n += 1
            target = self.path.with_name(f"{self.path.name}{CORRUPT_INFIX}{stamp}-{n}")
        try:
            if self.path.is_dir():
                os.rename(self.path, target)
            else:
                try:
                    # A link keeps the file in place until the save replaces it, so the
                    # source never runs without a file while it cannot write one.
                    os.link(self.path, target)
                except OSError:
                    os.rename(self.path, target)
        except OSError as exc:
            return f"could not set it aside ({exc})"
        return f"set it aside as {target}"

    # -- the positions --

    @property
    def dirty(self) -> bool:
        """True when memory holds changes not saved yet."""
        return self._dirty

    def unsaved_for(self, now: float) -> float:
        """Seconds since the oldest change the file does not hold yet (0 when it holds
        them all); ``now`` is ``time.monotonic()``."""
        since = self._unsaved_since
        return 0.0 if since is None else max(0.0, now - since)

    def _mark_dirty(self) -> None:
        if self._unsaved_since is None:
            self._unsaved_since = time.monotonic()
        self._dirty = True
        self._changed.set()

    def _saving(self) -> float | None:
        """Call as a save starts: memory is now what is being written."""
        since, self._unsaved_since = self._unsaved_since, None
        self._dirty = False
        return since

    def _save_failed(self, since: float | None) -> None:
        self._dirty = True
        if since is not None and (
            self._unsaved_since is None or since < self._unsaved_since
        ):
            self._unsaved_since = since

    def ids(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> EntryT | None:
        return self._entries.get(key)

    def put(self, key: str, entry: EntryT) -> None:
        """Record an entry in memory; ``save()``/``run_flusher()`` persist it."""
        if self._entries.get(key) != entry:
            self._entries[key] = entry
            self._mark_dirty()

    def remove(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._mark_dirty()

    # -- saving --

    def _snapshot(self) -> bytes:
        dump = self.dump_entry
        return orjson.dumps(
            {key: dump(entry) for key, entry in self._entries.items()},
            option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE,
        )

    def _backup_target(self) -> Path | None:
        return self.backup_path if self._file_good else None

    def _saved(self, exc: OSError | None) -> None:
        """Record a save attempt: say once when saving starts failing and once when it
        works again (a full disk would otherwise log every second)."""
        failing_before = self.save_error is not None
        self.save_error = exc
        if exc is None:
            self._file_good = True
            if failing_before:
                _log.info("positions file %s saved again", self.path)
        elif not failing_before:
            _log.warning(
                "cannot save positions file %s: %s; retrying every %g s (lines are "
                "still shipped, but a restart re-sends those delivered since the "
                "last save)",
                self.path,
                exc,
                _SAVE_RETRY_S,
            )
        if self._on_save is not None:
            self._on_save(exc)

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """One save: its outcome is recorded (``save_error``, the log, ``on_save``)."""
        since = self._saving()
        try:
            yield
        except OSError as exc:
            self._save_failed(since)
            self._saved(exc)
            raise
        except BaseException:
            self._save_failed(since)
            raise
        self._saved(None)

    def save(self) -> None:
        """Write the file atomically now (blocking; ``asave()`` runs it in a thread).

        Raises:
            OSError: the file could not be written (also recorded in ``save_error``).
        """
        with self._recording():
            _write_atomic(self.path, self._snapshot(), self._backup_target())

    async def asave(self) -> None:
        """Save without blocking the event loop; concurrent calls are serialised.

        Raises:
            OSError: as ``save``.
        """
        async with self._save_lock:
            # Snapshot on the loop thread: the dict must not change while it is
            # serialised.
            data = self._snapshot()
            with self._recording():
                await asyncio.to_thread(
                    _write_atomic, self.path, data, self._backup_target()
                )

    async def run_flusher(self, interval_s: float = 0.0) -> None:
        """Save as soon as a position changes, until cancelled.

        Changes that arrive while a save runs are coalesced into the next one, so a
        burst of acknowledgements costs one write; ``interval_s`` is the least time
        between two saves. Saving at once keeps what ``kill -9`` can make the agent
        send again down to what was acknowledged while the last write was under way.
        A failed save is retried every second whether or not anything changes.
        """
        while True:
            await self._changed.wait()
            self._changed.clear()
            pause = interval_s
            if self._dirty:
                try:
                    await self.asave()
                except OSError:
                    pause = max(interval_s, _SAVE_RETRY_S)
                    self._changed.set()
            if pause:
                await asyncio.sleep(pause)


def _keep_backup(path: Path, backup: Path) -> None:
    """Make ``backup`` the file now at ``path`` (a hard link, swapped in atomically).

    Best effort: when it fails (no file yet, no hard links on this file system) the
    previous backup, older still, stays, and the save goes on.
    """
    staging = backup.with_name(f".{backup.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        os.link(path, staging)
        os.replace(staging, backup)
    except FileNotFoundError:
        return
    except OSError as exc:
        _log.debug("cannot keep %s as the backup of %s: %s", backup, path, exc)


def _write_atomic(path: Path, data: bytes, backup: Path | None) -> None:
    directory = path.parent
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        if backup is not None:
            _keep_backup(path, backup)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk too.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
