"""``discovery.relabel``: ``rule`` blocks over targets; exports ``output``, ``rules``.

A pure function of its arguments, recomputed on every update (new targets or new rules),
with no background work, as in Alloy. The compiled ``rules`` object keeps its identity
while the rule blocks are unchanged, so consumers (``relabel_rules``) are not reset
needlessly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from minilog.components.base import (
    RULE_BLOCK,
    Component,
    ComponentOptions,
    compile_rule_args,
    register,
)
from minilog.config.ast import Block
from minilog.config.schema import Attr, Schema
from minilog.relabel import RelabelRules, compile_rules

__all__ = ["DiscoveryRelabel"]


@register
class DiscoveryRelabel(Component):
    """``targets`` + ``rule`` blocks -> ``output`` (kept targets, rewritten)."""

    name = "discovery.relabel"
    schema = Schema(
        attrs=[Attr("targets", "list(map(string))", required=True)], blocks=[RULE_BLOCK]
    )
    phase = "discovery"

    @classmethod
    def prepare(
        cls,
        args: Mapping[str, Any],
        block: Block,
        *,
        stability_level: str = "generally-available",
    ) -> dict[str, Any]:
        out = dict(args)
        out["compiled_rules"] = compile_rule_args(out.get("rule") or [], block)
        return out

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"output": [], "rules": compile_rules([])}

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
        super().__init__(opts, args)
        self._rules: RelabelRules = args["compiled_rules"]
        self._output = self._relabel(args.get("targets") or [])
        self._exports: dict[str, Any] = {"output": self._output, "rules": self._rules}

    def _relabel(self, targets: list[dict[str, str]]) -> list[dict[str, str]]:
        out = []
        for target in targets:
            # Empty values count as absent, on input as on output (Alloy's target
            # builder).
            labels = self._rules.process({k: v for k, v in target.items() if v != ""})
            if labels:
                out.append({k: v for k, v in labels.items() if v != ""})
        return out

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def update(self, args: Mapping[str, Any]) -> None:
        if args.get("rule") == self.args.get("rule"):
            rules = self._rules
        else:
            rules = args["compiled_rules"]
        self.args = args
        self._rules = rules
        output = self._relabel(args.get("targets") or [])
        if output == self._output and rules is self._exports["rules"]:
            return
        self._output = output
        self._exports = {"output": output, "rules": rules}
        self.opts.on_exports()

    def debug_info(self) -> Any:
        return {
            "targets_in": len(self.args.get("targets") or []),
            "targets_out": len(self._output),
        }
