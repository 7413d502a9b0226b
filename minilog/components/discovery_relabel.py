"""``discovery.relabel``: ``rule`` blocks over targets; exports ``output``, ``rules``.

A pure function of its arguments, recomputed on every update (new targets or new rules),
with no background work, as in Alloy. The compiled ``rules`` object keeps its identity
while the rule blocks are unchanged, so consumers (``relabel_rules``) are not reset
needlessly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minilog.components.arguments import RULE_BLOCK, compile_rule_args
from minilog.components.base import STABLE, Component, ComponentOptions, register
from minilog.config.ast import Block
from minilog.config.schema import Attr, Schema
from minilog.relabel import RelabelRules, Rule, compile_rules

__all__ = ["DiscoveryRelabel", "DiscoveryRelabelArgs"]


@dataclass(frozen=True, slots=True)
class DiscoveryRelabelArgs:
    """``targets`` and the ``rule`` blocks, decoded into ``relabel.Rule``s."""

    targets: tuple[Mapping[str, str], ...]
    rules: tuple[Rule, ...]


@register
class DiscoveryRelabel(Component[DiscoveryRelabelArgs]):
    """``targets`` + ``rule`` blocks -> ``output`` (kept targets, rewritten)."""

    name = "discovery.relabel"
    schema = Schema(
        attrs=[Attr("targets", "list(map(string))", required=True)], blocks=[RULE_BLOCK]
    )
    phase = "discovery"

    @classmethod
    def parse_args(
        cls, values: Mapping[str, Any], block: Block, *, stability_level: str = STABLE
    ) -> DiscoveryRelabelArgs:
        rules = compile_rule_args(values["rule"], block)
        return DiscoveryRelabelArgs(tuple(values["targets"]), rules.rules)

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"output": [], "rules": compile_rules([])}

    def __init__(self, opts: ComponentOptions, args: DiscoveryRelabelArgs) -> None:
        super().__init__(opts, args)
        self._rules: RelabelRules = compile_rules(args.rules)
        self._output = self._relabel(args.targets)
        self._exports: dict[str, Any] = {"output": self._output, "rules": self._rules}

    def _relabel(self, targets: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
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

    async def update(self, args: DiscoveryRelabelArgs) -> None:
        # Unchanged rule blocks keep the compiled rules object: consumers holding it
        # (relabel_rules) see no change.
        rules = (
            self._rules if args.rules == self.args.rules else compile_rules(args.rules)
        )
        self.args = args
        self._rules = rules
        output = self._relabel(args.targets)
        if output == self._output and rules is self._exports["rules"]:
            return
        self._output = output
        self._exports = {"output": output, "rules": rules}
        self.opts.on_exports()

    def debug_info(self) -> Any:
        return {
            "targets_in": len(self.args.targets),
            "targets_out": len(self._output),
        }
