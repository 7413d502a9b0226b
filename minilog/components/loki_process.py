"""``loki.process``: runs each batch through ``stage.*`` blocks in order, then forwards.

Owns the wiring from the component's ``stage.*`` blocks (decoded, in source order, by
``minilog.process.decode_stages``) to ``build_pipeline``, the exported receiver, the
component's metrics scope, and the flush timer of stages that hold entries back
(``stage.multiline``, ``stage.limit`` with ``drop = false``): it sleeps until
``Pipeline.next_deadline_ns()`` or new input. While ``stage.limit`` holds entries
waiting for tokens, ``send`` waits for them to go, so that sources slow down as
Alloy's blocked pipeline makes them; the timer task is what releases them, so a
waiting ``send`` never blocks the event loop or the multiline flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from minilog.components.base import (
    STABLE,
    Component,
    ComponentOptions,
    StableReceiver,
    register,
)
from minilog.config import Scope
from minilog.config.ast import Block, Stmt
from minilog.config.schema import Attr, Schema, decode_block
from minilog.errors import ConfigError, Diagnostic, StageError
from minilog.model import LogsReceiver, StreamBatch
from minilog.process import (
    STAGE_BLOCKS,
    Pipeline,
    StageSpec,
    build_pipeline,
    decode_stages,
)
from minilog.process.schemas import error_pos

__all__ = ["LokiProcess", "LokiProcessArgs", "MetricsScope"]

_STAGE_PREFIX = "stage."
_NS = 1_000_000_000
#: Shutdown drain budget when the runtime gives none.
_DEFAULT_DRAIN_S = 15.0


def _is_stage(stmt: Stmt) -> bool:
    return isinstance(stmt, Block) and stmt.full_name.startswith(_STAGE_PREFIX)


def _stage_blocks(body: Sequence[Stmt]) -> list[Block]:
    return [s for s in body if isinstance(s, Block) and _is_stage(s)]


@dataclass(frozen=True, slots=True)
class LokiProcessArgs:
    """``forward_to`` and the ``stage.*`` blocks in source order (``build_pipeline``
    input)."""

    forward_to: tuple[LogsReceiver, ...]
    stages: tuple[StageSpec, ...]


class MetricsScope(Collector):
    """The component's view of its pipeline's private registry.

    Each pipeline registers its ``stage.metrics`` collectors on a registry of its own,
    as Alloy gives each component its own registerer: two ``loki.process`` components
    (or an old and a new pipeline during an update) may then define the same metric
    names. This collector, registered on the component's registry, reports whatever
    the current pipeline registry holds; it describes no names, so it never clashes.
    """

    def __init__(self) -> None:
        self.current = CollectorRegistry(auto_describe=True)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.current.collect()


@register
class LokiProcess(Component[LokiProcessArgs]):
    """Exports ``receiver``; forwards what the stages emit to ``forward_to``.

    Args:
        opts: the runtime's options; metrics appear on ``opts.registry``.
        args: parsed arguments (``forward_to``, ``stages``).
        clock: the wall clock in Unix nanoseconds, for stages and multiline waits.
    """

    name = "loki.process"
    schema = Schema(
        attrs=[Attr("forward_to", "list(capsule)", required=True)],
        blocks=STAGE_BLOCKS,
    )
    phase = "process"

    @classmethod
    def decode(cls, block: Block, scope: Scope) -> dict[str, Any]:
        others = [s for s in block.body if not _is_stage(s)]
        diagnostics: list[Diagnostic] = []
        args: dict[str, Any] = {}
        try:
            args = decode_block(others, cls.schema, scope, pos=block.pos)
        except ConfigError as exc:
            diagnostics.extend(exc.diagnostics)
        try:
            # Typed by the stage schemas, each stage built alone: a bad argument is
            # reported at its own block, all of them at once.
            args["stages"] = decode_stages(_stage_blocks(block.body), scope)
        except ConfigError as exc:
            diagnostics.extend(exc.diagnostics)
        if diagnostics:
            diagnostics.sort(key=lambda d: (d.path, d.line, d.column))
            raise ConfigError(diagnostics)
        return args

    @classmethod
    def parse_args(
        cls, values: Mapping[str, Any], block: Block, *, stability_level: str = STABLE
    ) -> LokiProcessArgs:
        stages = tuple(values["stages"])
        # ``decode_stages`` builds each stage alone; only the whole list shows clashes
        # between stages (two ``stage.metrics`` defining one metric name).
        _check_together(stages, block)
        return LokiProcessArgs(tuple(values["forward_to"]), stages)

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id)}

    def __init__(
        self,
        opts: ComponentOptions,
        args: LokiProcessArgs,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(opts, args)
        self._clock = clock
        self._fanout = self.output_fanout(args.forward_to)
        self._scope = MetricsScope()
        opts.registry.register(self._scope)
        self._pipeline = build_pipeline(args.stages, registry=self._scope.current)
        self._holds = self._pipeline.holds_entries
        # Set when input arrived or the pipeline changed: the flush deadline may have
        # moved. Created lazily so that the component can be built outside a loop.
        self._wake: asyncio.Event | None = None
        # Set (and replaced) whenever held entries went on: senders waiting for
        # ``stage.limit``'s backlog look again.
        self._released: asyncio.Event | None = None
        self._exports = {"receiver": self}

    @property
    def pipeline(self) -> Pipeline:
        """The compiled stages currently in use (replaced by ``update``)."""
        return self._pipeline

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def send(self, batch: StreamBatch) -> None:
        outs = self._pipeline.process(batch, self._clock())
        if self._holds and self._wake is not None:
            self._wake.set()
        for out in outs:
            await self._fanout.send(out)
        # Backpressure: wait while entries wait for stage.limit's tokens. Only once the
        # timer task runs, which is what lets them go.
        while self._released is not None and self._pipeline.backlog() > 0:
            await self._released.wait()

    def _notify_released(self) -> None:
        if self._released is not None:
            self._released.set()
            self._released = asyncio.Event()

    async def run(self) -> None:
        wake = self._wake = asyncio.Event()
        self._released = asyncio.Event()
        try:
            while True:
                wake.clear()
                deadline = self._pipeline.next_deadline_ns()
                if deadline is None:
                    await wake.wait()
                    continue
                delay_s = (deadline - self._clock()) / _NS
                if delay_s > 0:
                    # Woken early by input or an update: the deadline is re-read.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay_s):
                            await wake.wait()
                    continue
                for out in self._pipeline.flush_expired(self._clock()):
                    await self._fanout.send(out)
                self._notify_released()
        finally:
            # Shutdown: whatever a stage still holds goes downstream before writers
            # stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.opts.drain_timeout or _DEFAULT_DRAIN_S):
                    for out in self._pipeline.flush_all(self._clock()):
                        await self._fanout.send(out)
            released, self._released = self._released, None
            if released is not None:
                released.set()

    async def update(self, args: LokiProcessArgs) -> None:
        old, self.args = self.args, args
        self._fanout.set(args.forward_to)
        if args.stages == old.stages:
            return
        registry = CollectorRegistry(auto_describe=True)
        pipeline = build_pipeline(args.stages, registry=registry)
        previous, self._pipeline = self._pipeline, pipeline
        self._holds = pipeline.holds_entries
        self._scope.current = registry
        if self._wake is not None:
            self._wake.set()
        # Entries the old stages held back are not lost with them.
        for out in previous.flush_all(self._clock()):
            await self._fanout.send(out)
        self._notify_released()

    def debug_info(self) -> Any:
        return {
            "stages": [name for name, _ in self.args.stages],
            "next_flush_ns": self._pipeline.next_deadline_ns(),
        }


def _check_together(stages: Sequence[StageSpec], block: Block) -> None:
    """Build ``stages`` one by one into one registry; a clash is put at its block."""
    registry = CollectorRegistry(auto_describe=True)
    blocks = _stage_blocks(block.body)
    for i, spec in enumerate(stages):
        try:
            build_pipeline([spec], registry=registry)
        except StageError as exc:
            pos = error_pos(blocks[i], exc) if i < len(blocks) else block.pos
            raise ConfigError(
                Diagnostic(pos.file, pos.line, pos.col, str(exc))
            ) from exc
