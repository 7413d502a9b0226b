"""What the tailing source components (``loki.source.docker``, ``loki.source.file``)
do alike: run the current source until an update replaces it, and report on their
positions file (health while it cannot be saved, the UI's debug info).

Not a component: components never import each other, so their shared pieces live here
(as ``arguments`` holds the argument pieces several share).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from minilog.components.base import Component
from minilog.positions import PositionStore

__all__ = [
    "ReplaceableSource",
    "positions_debug_info",
    "positions_health",
    "run_until_replaced",
]


class ReplaceableSource(Protocol):
    """A tailing source (``DockerSource``, ``FileSource``) as its component runs it."""

    async def run(self) -> None: ...

    async def aclose(self) -> None: ...


async def run_until_replaced(
    source: ReplaceableSource, replaced: asyncio.Event, *, name: str, what: str
) -> None:
    """Run ``source`` (a task called ``name``) until ``replaced`` is set, then stop it.

    Raises:
        the source's error (else ``RuntimeError`` naming ``what``) when it ends by
        itself: surfaced, so that the component does not go on tailing nothing.
    """
    replaced.clear()
    task = asyncio.create_task(source.run(), name=name)
    waiter = asyncio.create_task(replaced.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        # Stop this source first (on replacement as on shutdown): it records the
        # positions the next one resumes from.
        await source.aclose()
        await asyncio.gather(task, waiter, return_exceptions=True)
    if not replaced.is_set():
        exc = None if task.cancelled() else task.exception()
        raise exc or RuntimeError(f"{what} stopped unexpectedly")


def positions_health(
    component: Component[Any], path: Path
) -> Callable[[OSError | None], None]:
    """The positions store's ``on_save``: ``component`` is unhealthy while its
    positions file at ``path`` cannot be saved, healthy again once a save works."""

    def on_save(exc: OSError | None) -> None:
        if exc is None:
            component.clear_problem("positions", "positions saved again")
        else:
            component.report_problem(
                "positions", f"cannot save positions file {path}: {exc}"
            )

    return on_save


def positions_debug_info(positions: PositionStore[Any]) -> dict[str, str]:
    """The positions file's part of the component's debug info (the UI shows it)."""
    return {
        "positions_file": str(positions.path),
        "positions_recovery": positions.recovery,
        "positions_save_error": (
            "" if positions.save_error is None else str(positions.save_error)
        ),
    }
