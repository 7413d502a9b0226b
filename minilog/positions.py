"""The positions file of ``loki.source.docker``: how far each container's log was read.

Owns the file format, loading (a missing file is empty, a corrupt one is a
``ConfigError``) and crash-safe saving (temp file in the same directory, fsync, rename,
fsync of the directory). It knows nothing about Docker: ``tail.py`` decides what a
position means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from minilog.errors import ConfigError

__all__ = ["Position", "Positions"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Position:
    """A resume point: delivered up to ``ts_ns``, ``count_at_ts`` of those at ``ts_ns``.

    ``labels`` is informational (the target's canonical label text, for people reading
    the file).
    """

    ts_ns: int
    count_at_ts: int = 0
    labels: str = ""


class Positions:
    """Nanosecond positions keyed by container ID, kept in memory and saved atomically.

    The file is JSON, one object keyed by full container ID::

        {"<container id>": {"ts_ns": 1795753222054898543,
                            "count_at_ts": 1,
                            "labels": "{...}"}}

    ``ts_ns`` is the Docker timestamp (Unix ns) of the newest delivered line and
    ``count_at_ts`` how many delivered lines carry exactly that timestamp, so a resume
    skips them and nothing else. Unlike Alloy's ``positions.yml`` the key is the
    container ID only, so label drift between runs never loses a position. The directory
    is created with mode 0750 and the file written with mode 0600, as Alloy does.

    Raises:
        ConfigError: at construction, when the file exists but cannot be read or parsed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: dict[str, Position] = {}
        self._dirty = False
        # Monotonic time of the oldest change the file does not hold yet.
        self._unsaved_since: float | None = None
        self._changed = asyncio.Event()
        self._save_lock = asyncio.Lock()
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(f"cannot read positions file {self.path}: {exc}") from exc
        try:
            raw: Any = orjson.loads(data) if data.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"invalid positions file {self.path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(
                f"invalid positions file {self.path}: top level is not an object"
            )
        for key, value in raw.items():
            if (
                not isinstance(value, dict)
                or type(value.get("ts_ns")) is not int
                or type(value.get("count_at_ts", 0)) is not int
                or not isinstance(value.get("labels", ""), str)
            ):
                raise ConfigError(
                    f"invalid positions file {self.path}: bad entry for {key!r}"
                )
            self._entries[key] = Position(
                value["ts_ns"], value.get("count_at_ts", 0), value.get("labels", "")
            )

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

    def get(self, container_id: str) -> Position | None:
        return self._entries.get(container_id)

    def set(
        self, container_id: str, ts_ns: int, count_at_ts: int = 0, labels: str = ""
    ) -> None:
        """Record a position in memory; ``save()``/``run_flusher()`` persist it."""
        new = Position(ts_ns, count_at_ts, labels)
        if self._entries.get(container_id) != new:
            self._entries[container_id] = new
            self._mark_dirty()

    def remove(self, container_id: str) -> None:
        if self._entries.pop(container_id, None) is not None:
            self._mark_dirty()

    def _snapshot(self) -> bytes:
        return orjson.dumps(
            {
                key: {
                    "ts_ns": p.ts_ns,
                    "count_at_ts": p.count_at_ts,
                    "labels": p.labels,
                }
                for key, p in self._entries.items()
            },
            option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE,
        )

    def save(self) -> None:
        """Write the file atomically now (blocking; ``asave()`` runs it in a thread)."""
        since = self._saving()
        try:
            _write_atomic(self.path, self._snapshot())
        except BaseException:
            self._save_failed(since)
            raise

    async def asave(self) -> None:
        """Save without blocking the event loop; concurrent calls are serialised."""
        async with self._save_lock:
            # Snapshot on the loop thread: the dict must not change while it is
            # serialised.
            data = self._snapshot()
            since = self._saving()
            try:
                await asyncio.to_thread(_write_atomic, self.path, data)
            except BaseException:
                self._save_failed(since)
                raise

    async def run_flusher(self, interval_s: float = 0.0) -> None:
        """Save as soon as a position changes, until cancelled; errors are logged.

        Changes that arrive while a save runs are coalesced into the next one, so a
        burst of acknowledgements costs one write; ``interval_s`` is the least time
        between two saves. Saving at once keeps what ``kill -9`` can make the agent
        send again down to what was acknowledged while the last write was under way.
        """
        while True:
            await self._changed.wait()
            self._changed.clear()
            pause = interval_s
            if self._dirty:
                try:
                    await self.asave()
                except OSError as exc:
                    _log.warning("cannot save positions file %s: %s", self.path, exc)
                    # Try again after a pause, whether or not anything changes.
                    pause = max(interval_s, 1.0)
                    self._changed.set()
            if pause:
                await asyncio.sleep(pause)


def _write_atomic(path: Path, data: bytes) -> None:
    directory = path.parent
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
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
