"""Live debugging (Alloy's ``livedebugging`` block): viewers watch the entries leaving
a component, as they leave.

A component that forwards entries does so through ``components.base.Fanout``; while
someone watches the component, its fanouts carry a :class:`ComponentTap` that copies
each batch into every viewer's bounded buffer. Nobody watching (or live debugging
disabled, the default): the fanouts' tap is ``None`` and the hot path pays one
``None`` check per batch. A viewer that does not keep up (a slow or stalled browser)
never slows the pipeline: what does not fit in its buffer is dropped for that viewer
and counted, and the count is shown to it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from minilog.errors import MinilogError
from minilog.model import LogEntry, StreamBatch

__all__ = [
    "DEFAULT_VIEWER_CAPACITY",
    "DISABLED_MESSAGE",
    "MAX_VIEWER_CAPACITY",
    "ComponentTap",
    "LiveDebugging",
    "LiveDebuggingError",
    "Seen",
    "Viewer",
]

#: Entries one viewer's buffer in the agent holds by default, and at most.
DEFAULT_VIEWER_CAPACITY: Final = 1000
MAX_VIEWER_CAPACITY: Final = 10_000

#: Alloy's answer when the block is off.
DISABLED_MESSAGE: Final = (
    "the live debugging service is disabled. Check the documentation to find out "
    "how to enable it"
)


class LiveDebuggingError(MinilogError):
    """A viewer cannot watch: disabled, no such component, or it forwards nothing."""


@dataclass(frozen=True, slots=True)
class Seen:
    """One entry as it left the component."""

    labels: dict[str, str]
    entry: LogEntry


class Viewer:
    """One watcher's bounded buffer; the server drains it to the client."""

    __slots__ = ("_buffer", "_wake", "capacity", "closed", "component_id", "dropped")

    def __init__(self, component_id: str, capacity: int) -> None:
        self.component_id = component_id
        self.capacity = capacity
        self._buffer: deque[Seen] = deque()
        self._wake = asyncio.Event()
        #: Entries that did not fit, for this viewer only.
        self.dropped = 0
        #: Set when the agent stops the watch (live debugging turned off, shutdown).
        self.closed = False

    def offer(self, labels: dict[str, str], entries: list[LogEntry]) -> None:
        room = self.capacity - len(self._buffer)
        if room <= 0:
            self.dropped += len(entries)
            return
        if len(entries) > room:
            self.dropped += len(entries) - room
            entries = entries[:room]
        self._buffer.extend(Seen(labels, e) for e in entries)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def take(self, limit: int) -> list[Seen]:
        """Up to ``limit`` entries, oldest first."""
        n = min(limit, len(self._buffer))
        return [self._buffer.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self._buffer)

    async def wait(self, timeout_s: float) -> None:
        """Return when entries are waiting, the watch closed, or after ``timeout_s``."""
        if self._buffer or self.closed:
            return
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            pass


class ComponentTap:
    """What a watched component's fanouts call for every batch they forward."""

    __slots__ = ("viewers",)

    def __init__(self) -> None:
        self.viewers: list[Viewer] = []

    def publish(self, batch: StreamBatch) -> None:
        # Copies: the batch goes on downstream, where a stage may edit it.
        labels = dict(batch.labels)
        entries = list(batch.entries)
        for viewer in self.viewers:
            viewer.offer(labels, entries)


#: Sets (or clears, with None) the tap of one component; False if it cannot be
#: tapped (no such component, or it forwards no entries).
Attach = Callable[[str, ComponentTap | None], bool]


class LiveDebugging:
    """The agent's live debugging service: which components are watched, by whom."""

    def __init__(self) -> None:
        self.enabled = False
        self._taps: dict[str, ComponentTap] = {}
        self._attach: Attach = lambda cid, tap: False

    def bind(self, attach: Attach) -> None:
        """The runtime's way to put a tap on a component's fanouts."""
        self._attach = attach

    def set_enabled(self, enabled: bool) -> None:
        """The ``livedebugging`` block's ``enabled``; turning it off ends every
        watch."""
        self.enabled = enabled
        if not enabled:
            for cid, tap in list(self._taps.items()):
                for viewer in tap.viewers:
                    viewer.close()
                self._attach(cid, None)
            self._taps.clear()

    def tap_for(self, component_id: str) -> ComponentTap | None:
        """The tap a (re)built component must carry (None when nobody watches it)."""
        return self._taps.get(component_id)

    def watching(self, component_id: str) -> int:
        tap = self._taps.get(component_id)
        return 0 if tap is None else len(tap.viewers)

    def subscribe(
        self, component_id: str, capacity: int = DEFAULT_VIEWER_CAPACITY
    ) -> Viewer:
        """Start watching ``component_id``.

        Raises:
            LiveDebuggingError: disabled, or the component cannot be watched.
        """
        if not self.enabled:
            raise LiveDebuggingError(DISABLED_MESSAGE)
        tap = self._taps.get(component_id) or ComponentTap()
        if not self._attach(component_id, tap):
            raise LiveDebuggingError(
                f"the component {component_id!r} does not exist or does not support "
                "live debugging (only components that forward log entries do)"
            )
        self._taps[component_id] = tap
        viewer = Viewer(component_id, max(1, min(capacity, MAX_VIEWER_CAPACITY)))
        tap.viewers.append(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        tap = self._taps.get(viewer.component_id)
        if tap is None or viewer not in tap.viewers:
            return
        tap.viewers.remove(viewer)
        if not tap.viewers:
            del self._taps[viewer.component_id]
            self._attach(viewer.component_id, None)
