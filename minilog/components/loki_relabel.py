"""``loki.relabel``: rewrites each batch's label set with ``rule`` blocks, forwards it.

Rules run once per batch (one label set), through an LRU cache keyed by the label set as
Alloy's does; a batch whose labels are dropped or become empty is discarded (its
delivery settled). Owns the exported receiver and the ``loki_relabel_*`` metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from minilog.components.base import (
    RULE_BLOCK,
    Component,
    ComponentOptions,
    Fanout,
    StableReceiver,
    compile_rule_args,
    positioned,
    register,
)
from minilog.config.ast import Block
from minilog.config.schema import Attr, Schema
from minilog.model import StreamBatch
from minilog.relabel import RelabelRules, compile_rules

__all__ = ["LokiRelabel"]

_Key = frozenset[tuple[str, str]]


@register
class LokiRelabel(Component):
    """Exports ``receiver`` (stable across updates) and ``rules``."""

    name = "loki.relabel"
    schema = Schema(
        attrs=[
            Attr("forward_to", "list(capsule)", required=True),
            Attr("max_cache_size", "int", default=10_000),
        ],
        blocks=[RULE_BLOCK],
    )
    phase = "process"

    @classmethod
    def prepare(
        cls,
        args: Mapping[str, Any],
        block: Block,
        *,
        stability_level: str = "generally-available",
    ) -> dict[str, Any]:
        out = dict(args)
        if int(out.get("max_cache_size", 10_000)) < 0:
            raise positioned(block, "max_cache_size must not be negative")
        out["compiled_rules"] = compile_rule_args(out.get("rule") or [], block)
        return out

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id), "rules": compile_rules([])}

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
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
        self._fanout = Fanout()
        self._cache: OrderedDict[_Key, dict[str, str] | None] = OrderedDict()
        self._rules: RelabelRules
        self._max_cache = 10_000
        self._exports: dict[str, Any] = {}
        self._apply(args)

    def _apply(self, args: Mapping[str, Any]) -> None:
        self.args = args
        self._fanout.set(args.get("forward_to") or [])
        self._rules = args["compiled_rules"]
        self._max_cache = int(args.get("max_cache_size", 10_000))
        # New rules invalidate every cached result.
        self._cache.clear()
        self._size.set(0)
        self._exports = {"receiver": self, "rules": self._rules}

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def update(self, args: Mapping[str, Any]) -> None:
        rules_changed = args.get("rule") != self.args.get("rule")
        if not rules_changed:
            # Keep the compiled rules object: dependents that hold ``rules`` see no
            # change.
            args = {**args, "compiled_rules": self._rules}
        self._apply(args)
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
