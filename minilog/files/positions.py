"""The positions file of ``loki.source.file``: how far each file was read, and which
file that was.

The file handling (atomic saves, the backup, recovery from damage) is
``docker.positions.PositionStore``'s; this module defines the entry and converts a
Promtail/Grafana Agent positions file (``legacy_positions_file``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from minilog.positions import PositionStore

__all__ = ["FilePosition", "FilePositions", "read_legacy_positions"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FilePosition:
    """Delivered up to byte ``offset`` of the file that has inode ``ino`` and whose
    first ``sig_len`` bytes hash to ``sig`` (``signature``).

    The identity tells, after a restart, whether the file at the path is still the one
    the offset belongs to: a file replaced or rotated while the agent was down is not
    resumed in the middle. ``ino`` 0 means unknown (a converted legacy position): the
    offset is trusted when the file is at least that long, as Alloy does.
    """

    offset: int
    ino: int = 0
    sig_len: int = 0
    sig: str = ""
    labels: str = ""


def _load(value: Any) -> FilePosition | None:
    if not isinstance(value, dict):
        return None
    ints = [value.get(k, 0) for k in ("offset", "ino", "sig_len")]
    if any(type(v) is not int or v < 0 for v in ints) or "offset" not in value:
        return None
    sig, labels = value.get("sig", ""), value.get("labels", "")
    if not isinstance(sig, str) or not isinstance(labels, str):
        return None
    return FilePosition(ints[0], ints[1], ints[2], sig, labels)


class FilePositions(PositionStore[FilePosition]):
    """Byte positions keyed by absolute path, saved atomically with a backup.

    The file is JSON, one object keyed by path::

        {"/var/log/app.log": {"offset": 18734, "ino": 393239, "sig_len": 1024,
                              "sig": "5f0c...", "labels": "{job=\\"app\\"}"}}

    Keyed by path alone (Alloy keys by path and labels), so a label change never
    re-reads a file.
    """

    thing = "files"
    missing = "a file without a position is read from its start"

    def load_entry(self, value: Any) -> FilePosition | None:
        return _load(value)

    def dump_entry(self, entry: FilePosition) -> dict[str, Any]:
        return {
            "offset": entry.offset,
            "ino": entry.ino,
            "sig_len": entry.sig_len,
            "sig": entry.sig,
            "labels": entry.labels,
        }


def read_legacy_positions(path: str | os.PathLike[str]) -> dict[str, int] | None:
    """The positions of a Promtail / Grafana Agent static-mode ``positions.yaml``
    (``positions: {<path>: "<offset>"}``); None when it is missing, empty or invalid
    (said in the log), as Alloy's conversion treats it."""
    legacy = Path(path)
    try:
        data = legacy.read_bytes()
    except OSError as exc:
        _log.info("no legacy positions file found at %s (%s)", legacy, exc.strerror)
        return None
    if not data.strip():
        _log.info("no legacy positions file found at %s (empty)", legacy)
        return None
    try:
        parsed = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        _log.error("error parsing legacy positions file %s: %s", legacy, exc)
        return None
    positions = parsed.get("positions") if isinstance(parsed, dict) else None
    if not isinstance(parsed, dict) or set(parsed) - {"positions"}:
        _log.error("legacy positions file %s is not a positions file", legacy)
        return None
    out: dict[str, int] = {}
    for key, value in (positions or {}).items():
        try:
            out[str(key)] = int(str(value))
        except ValueError:
            _log.error(
                "legacy positions file %s: bad offset %r for %s", legacy, value, key
            )
            return None
    return out
