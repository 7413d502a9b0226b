"""``loki.process``: runs each batch through ``stage.*`` blocks in order, then forwards.

Owns the mapping from the component's nested ``stage.<name>`` blocks (kept in source
order, which matters) to ``process.build_pipeline``, the exported receiver, and the
flush clock of stages that hold entries back (``stage.multiline``): checked periodically
and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.components.base import (
    Component,
    ComponentOptions,
    Fanout,
    StableReceiver,
    register,
)
from minilog.config import Scope
from minilog.config.ast import Block, Stmt
from minilog.config.schema import Attr, Schema, decode_block
from minilog.errors import ConfigError, Diagnostic
from minilog.model import StreamBatch
from minilog.process import Pipeline, build_pipeline
from minilog.process.schemas import decode_stages

__all__ = ["LokiProcess"]

#: How often held-back entries (multiline) are checked for expiry.
FLUSH_INTERVAL_S = 0.25

_SCHEMA = Schema(attrs=[Attr("forward_to", "list(capsule)", required=True)])
_STAGE_PREFIX = "stage."


def _is_stage(stmt: Stmt) -> bool:
    return isinstance(stmt, Block) and stmt.full_name.startswith(_STAGE_PREFIX)


@register
class LokiProcess(Component):
    """Exports ``receiver``; forwards what the stages emit to ``forward_to``."""

    name = "loki.process"
    schema = _SCHEMA
    phase = "process"

    @classmethod
    def decode(cls, block: Block, scope: Scope) -> dict[str, Any]:
        stages = [s for s in block.body if _is_stage(s)]
        others = [s for s in block.body if not _is_stage(s)]
        diagnostics: list[Diagnostic] = []
        args: dict[str, Any] = {}
        try:
            args = decode_block(others, cls.schema, scope, pos=block.pos)
        except ConfigError as exc:
            diagnostics.extend(exc.diagnostics)
        try:
            # Typed by the stage schemas, every bad stage positioned at its block.
            args["stages"] = decode_stages(stages, scope)
        except ConfigError as exc:
            diagnostics.extend(exc.diagnostics)
        if diagnostics:
            raise ConfigError(diagnostics)
        return args

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id)}

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
        super().__init__(opts, args)
        self._fanout = Fanout(args.get("forward_to") or [])
        self._registry = opts.registry
        self._pipeline: Pipeline = build_pipeline(
            args["stages"], registry=self._registry
        )
        self._exports = {"receiver": self}

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    def metrics_registry(self) -> CollectorRegistry:
        return self._registry

    async def send(self, batch: StreamBatch) -> None:
        for out in self._pipeline.process(batch, time.time_ns()):
            await self._fanout.send(out)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL_S)
                for out in self._pipeline.flush_expired(time.time_ns()):
                    await self._fanout.send(out)
        finally:
            # Shutdown: whatever a stage still holds goes downstream before writers
            # stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.opts.drain_timeout or 15.0):
                    for out in self._pipeline.flush_all(time.time_ns()):
                        await self._fanout.send(out)

    async def update(self, args: Mapping[str, Any]) -> None:
        old, self.args = self.args, args
        self._fanout.set(args.get("forward_to") or [])
        if args["stages"] == old["stages"]:
            return
        registry = CollectorRegistry(auto_describe=True)
        pipeline = build_pipeline(args["stages"], registry=registry)
        previous, self._pipeline = self._pipeline, pipeline
        self._registry = registry
        # Entries the old stages held back are not lost with them.
        for out in previous.flush_all(time.time_ns()):
            await self._fanout.send(out)

    def debug_info(self) -> Any:
        return {"stages": [name for name, _ in self.args["stages"]]}
