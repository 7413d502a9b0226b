"""``loki.source.docker``'s positions file: how far each container's log was read
(``Positions``, on ``positions.PositionStore``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minilog.positions import PositionStore

__all__ = ["Position", "Positions"]


@dataclass(frozen=True, slots=True)
class Position:
    """A resume point: delivered up to ``ts_ns``, ``count_at_ts`` of those at ``ts_ns``.

    ``labels`` is informational (the target's canonical label text, for people reading
    the file).
    """

    ts_ns: int
    count_at_ts: int = 0
    labels: str = ""


def _docker_entry(value: Any) -> Position | None:
    """A Docker entry from its JSON form; None when it is not one minilog wrote."""
    if (
        not isinstance(value, dict)
        or type(value.get("ts_ns")) is not int
        or type(value.get("count_at_ts", 0)) is not int
        or value["ts_ns"] < 0
        or value.get("count_at_ts", 0) < 0
        or not isinstance(value.get("labels", ""), str)
    ):
        return None
    return Position(
        value["ts_ns"], value.get("count_at_ts", 0), value.get("labels", "")
    )


class Positions(PositionStore[Position]):
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

    Each save first keeps the file it replaces as ``<name>.bak`` (a hard link: no copy),
    so a good copy one save older survives damage to the file itself. A damaged file is
    recovered from as ``minilog.positions`` says, and the recovered state is saved at
    once.
    A missing file (with or without a backup) means no positions: deleting the file
    resets the source, as in Alloy.

    Args:
        path: the positions file.
        on_save: called after every save attempt with ``None`` (saved) or the
            ``OSError`` that stopped it; the component's health follows it.
        read: how a file is read (``Path.read_bytes``; tests inject failures).

    Attributes:
        recovery: what loading did about a damaged file ("" when nothing was wrong).
        save_error: the error of the last save attempt, None once one succeeds.
    """

    thing = "containers"
    missing = "a container without a position is read from the start of its Docker log"

    def load_entry(self, value: Any) -> Position | None:
        return _docker_entry(value)

    def dump_entry(self, entry: Position) -> dict[str, Any]:
        return {
            "ts_ns": entry.ts_ns,
            "count_at_ts": entry.count_at_ts,
            "labels": entry.labels,
        }

    def set(
        self, container_id: str, ts_ns: int, count_at_ts: int = 0, labels: str = ""
    ) -> None:
        """Record a position in memory; ``save()``/``run_flusher()`` persist it."""
        self.put(container_id, Position(ts_ns, count_at_ts, labels))
