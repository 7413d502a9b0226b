"""``loki.relabel``: rewrites each batch's label set with ``rule`` blocks, forwards it.

Rules run once per batch (one label set), through an LRU cache keyed by the label set as
Alloy's does; a batch whose labels are dropped or become empty is discarded (its
delivery settled). Owns the exported receiver and the ``loki_relabel_*`` metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from minilog.components.arguments import RULE_BLOCK, compile_rule_args, positioned
from minilog.components.base import (
    STABLE,
    Component,
    ComponentOptions,
    StableReceiver,
    register,
)
from minilog.config.ast import Block
from minilog.config.schema import Attr, Schema
from minilog.model import LogsReceiver, StreamBatch
from minilog.relabel import RelabelRules, Rule, compile_rules

__all__ = ["LokiRelabel", "LokiRelabelArgs"]

_Key = frozenset[tuple[str, str]]
_DEFAULT_MAX_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class LokiRelabelArgs:
    """``forward_to``, ``max_cache_size`` and the ``rule`` blocks."""

    forward_to: tuple[LogsReceiver, ...]
    max_cache_size: int
    rules: tuple[Rule, ...]


@register
class LokiRelabel(Component[LokiRelabelArgs]):
    """Exports ``receiver`` (stable across updates) and ``rules``."""

    name = "loki.relabel"
    schema = Schema(
        attrs=[
            Attr("forward_to", "list(capsule)", required=True),
            Attr("max_cache_size", "int", default=_DEFAULT_MAX_CACHE_SIZE),
        ],
        blocks=[RULE_BLOCK],
    )
    phase = "process"

    @classmethod
    def parse_args(
        cls, values: Mapping[str, Any], block: Block, *, stability_level: str = STABLE
    ) -> LokiRelabelArgs:
        if values["max_cache_size"] <= 0:
            # Alloy's LRU cache refuses a size that is not positive, in these words.
            raise positioned(block, "must provide a positive size")
        rules = compile_rule_args(values["rule"], block)
        return LokiRelabelArgs(
            tuple(values["forward_to"]), values["max_cache_size"], rules.rules
        )

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id), "rules": compile_rules([])}

    def __init__(self, opts: ComponentOptions, args: LokiRelabelArgs) -> None:
        super().__init__(opts, args)
        reg = opts.registry
        self._processed = Counter(
            "loki_relabel_entries_processed",
            "Total number of log entries processed",
            registry=reg,
        )
        self._written = Counter(
            "loki_relabel_entries_written",
            "Total number of log entries forwarded",
            registry=reg,
        )
        self._hits = Counter(
            "loki_relabel_cache_hits", "Total number of cache hits", registry=reg
        )
        self._misses = Counter(
            "loki_relabel_cache_misses", "Total number of cache misses", registry=reg
        )
        self._size = Gauge(
            "loki_relabel_cache_size", "Total size of relabel cache", registry=reg
        )
        self._fanout = self.output_fanout()
        self._cache: OrderedDict[_Key, dict[str, str] | None] = OrderedDict()
        self._rules = compile_rules(args.rules)
        self._max_cache = args.max_cache_size
        self._exports: dict[str, Any] = {}
        self._apply(args, self._rules)

    def _apply(self, args: LokiRelabelArgs, rules: RelabelRules) -> None:
        self.args = args
        self._fanout.set(args.forward_to)
        self._rules = rules
        self._max_cache = args.max_cache_size
        # New rules invalidate every cached result.
        self._cache.clear()
        self._size.set(0)
        self._exports = {"receiver": self, "rules": self._rules}

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def update(self, args: LokiRelabelArgs) -> None:
        rules_changed = args.rules != self.args.rules
        # Unchanged rules keep the compiled object: dependents that hold ``rules``
        # see no change.
        self._apply(args, compile_rules(args.rules) if rules_changed else self._rules)
        if rules_changed:
            self.opts.on_exports()

    def relabel(self, labels: dict[str, str]) -> dict[str, str] | None:
        """The relabelled label set (cached), or None when the batch is dropped."""
        key: _Key = frozenset(labels.items())
        cache = self._cache
        if key in cache:
            self._hits.inc()
            cache.move_to_end(key)
            return cache[key]
        self._misses.inc()
        result = self._rules.process(dict(labels))
        if not result:
            result = None
        if self._max_cache > 0:
            cache[key] = result
            if len(cache) > self._max_cache:
                cache.popitem(last=False)
            self._size.set(len(cache))
        return result

    async def send(self, batch: StreamBatch) -> None:
        n = len(batch.entries)
        self._processed.inc(n)
        labels = self.relabel(batch.labels)
        if labels is None:
            batch.settle()
            return
        self._written.inc(n)
        # A copy: the cached dict is shared by every batch with the same input labels.
        await self._fanout.send(
            StreamBatch(dict(labels), batch.entries, batch.delivery)
        )

    def debug_info(self) -> Any:
        return {"cache_size": len(self._cache), "max_cache_size": self._max_cache}
