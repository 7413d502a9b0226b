"""``local.file_match``: ``__path__`` globs to one target per file; exports ``targets``.

Matches at start, on every update and every ``sync_period`` (``files.match``), and
tells the graph only when the list changed. Healthy unless its arguments are invalid,
as in Alloy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from minilog.components.arguments import positioned
from minilog.components.base import Component, ComponentOptions, register
from minilog.config.ast import Block
from minilog.config.schema import attr
from minilog.files.match import match_targets

__all__ = ["DEFAULT_SYNC_PERIOD_S", "LocalFileMatch", "LocalFileMatchArgs"]

#: Alloy's ``sync_period`` default.
DEFAULT_SYNC_PERIOD_S: Final = 10.0


@dataclass(frozen=True, kw_only=True)
class LocalFileMatchArgs:
    """``local.file_match``'s arguments, Alloy's names and defaults."""

    path_targets: tuple[Mapping[str, str], ...] = attr(
        "list(map(string))", required=True
    )
    sync_period: float = attr("duration", DEFAULT_SYNC_PERIOD_S)
    ignore_older_than: float = attr("duration", 0.0)


@register
class LocalFileMatch(Component[LocalFileMatchArgs]):
    """Exports ``targets``: each ``path_targets`` entry once per file it matches."""

    name = "local.file_match"
    args_class = LocalFileMatchArgs
    phase = "discovery"

    @classmethod
    def check_args(cls, args: LocalFileMatchArgs, block: Block) -> None:
        if args.sync_period <= 0:
            raise positioned(block, "sync_period must be greater than 0")

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"targets": []}

    def __init__(self, opts: ComponentOptions, args: LocalFileMatchArgs) -> None:
        super().__init__(opts, args)
        self._targets = self._match(args)
        self._exports: dict[str, Any] = {"targets": self._targets}
        self._resync = asyncio.Event()

    @staticmethod
    def _match(args: LocalFileMatchArgs) -> list[dict[str, str]]:
        return match_targets(
            args.path_targets, ignore_older_than_s=args.ignore_older_than
        )

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    def _publish(self, targets: list[dict[str, str]]) -> None:
        if targets != self._targets:
            self._targets = targets
            self._exports = {"targets": targets}
            self.opts.on_exports()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.args.sync_period):
                    await self._resync.wait()
            except TimeoutError:
                pass
            else:
                # An update matched just now: the period starts again from it.
                self._resync.clear()
                continue
            # The walk may be long (a ** over a large tree): off the event loop.
            self._publish(await asyncio.to_thread(self._match, self.args))

    async def update(self, args: LocalFileMatchArgs) -> None:
        self.args = args
        self._publish(self._match(args))
        self._resync.set()  # Alloy resets its ticker on update

    def debug_info(self) -> Any:
        return {"targets": len(self._targets)}
