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
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.components.base import (
    Component,
    ComponentOptions,
    Fanout,
    StableReceiver,
    register,
)
from minilog.config import Scope, evaluate
from minilog.config.ast import Attribute, Block, Stmt
from minilog.config.schema import Attr, Schema, decode_block
from minilog.errors import ConfigError, Diagnostic, MinilogError
from minilog.model import StreamBatch
from minilog.process import Pipeline, build_pipeline

__all__ = ["LokiProcess", "decode_stages"]

#: How often held-back entries (multiline) are checked for expiry.
FLUSH_INTERVAL_S = 0.25

_SCHEMA = Schema(attrs=[Attr("forward_to", "list(capsule)", required=True)])
_STAGE_PREFIX = "stage."


def _is_stage(stmt: Stmt) -> bool:
    return isinstance(stmt, Block) and stmt.full_name.startswith(_STAGE_PREFIX)


def decode_stages(
    body: Sequence[Stmt], scope: Scope
) -> list[tuple[str, dict[str, Any]]]:
    """``stage.*`` blocks -> ``(block name, arguments)`` in source order.

    Arguments are evaluated but not typed here: the stage builders in ``process`` check
    names and types (and parse durations and sizes) themselves. A ``stage.match``
    carries its nested stages under ``"stages"``.

    Raises:
        ConfigError: an expression failed to evaluate, or a block is not a stage.
    """
    diagnostics: list[Diagnostic] = []
    out: list[tuple[str, dict[str, Any]]] = []
    for stmt in body:
        if not isinstance(stmt, Block):
            continue
        args: dict[str, Any] = {}
        for inner in stmt.body:
            if isinstance(inner, Attribute):
                try:
                    args[inner.name] = evaluate(inner.value, scope)
                except ConfigError as exc:
                    diagnostics.extend(exc.diagnostics)
            elif not _is_stage(inner):
                pos = inner.pos
                diagnostics.append(
                    Diagnostic(
                        pos.file,
                        pos.line,
                        pos.col,
                        f'unsupported block "{inner.full_name}" in {stmt.full_name}',
                    )
                )
        nested = [inner for inner in stmt.body if _is_stage(inner)]
        if nested:
            try:
                args["stages"] = decode_stages(nested, scope)
            except ConfigError as exc:
                diagnostics.extend(exc.diagnostics)
        out.append((stmt.full_name, args))
    if diagnostics:
        raise ConfigError(diagnostics)
    return out


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
            args["stages"] = decode_stages(stages, scope)
        except ConfigError as exc:
            diagnostics.extend(exc.diagnostics)
        if diagnostics:
            raise ConfigError(diagnostics)
        return args

    @classmethod
    def prepare(
        cls,
        args: Mapping[str, Any],
        block: Block,
        *,
        stability_level: str = "generally-available",
    ) -> dict[str, Any]:
        try:
            build_pipeline(
                args["stages"], registry=CollectorRegistry(auto_describe=True)
            )
        except (ConfigError, MinilogError, ValueError) as exc:
            raise _stage_error(exc, block) from exc
        return dict(args)

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
                async with asyncio.timeout(self.opts.drain_timeout):
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


def _stage_error(exc: BaseException, block: Block) -> ConfigError:
    if isinstance(exc, ConfigError) and any(d.line for d in exc.diagnostics):
        return exc
    where: Block = block
    stage_name = getattr(exc, "stage_name", None)
    if stage_name:
        for b in block.body:
            if isinstance(b, Block) and b.full_name in (
                stage_name,
                f"stage.{stage_name}",
            ):
                where = b
                break
    message = exc.diagnostics[0].message if isinstance(exc, ConfigError) else str(exc)
    pos = where.pos
    return ConfigError(Diagnostic(pos.file, pos.line, pos.col, message))
