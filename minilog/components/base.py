"""The component contract (modelled on Alloy's) and the registry of component types.

A component type has an Alloy name (``loki.write``), an argument schema, a constructor
taking ``(ComponentOptions, args)``, exports, ``run()``, ``update(args)``, ``health()``
and ``debug_info()``. This module also owns the stable receiver indirections
(``Fanout``, ``StableReceiver``) so that upstream components never hold a receiver that
was replaced.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from prometheus_client import CollectorRegistry

from minilog.config import Scope
from minilog.config.ast import Attribute, Block, Pos
from minilog.config.ast import Literal as LiteralNode
from minilog.config.schema import Attr, BlockSpec, Schema, decode_block
from minilog.errors import ClosedError, ConfigError, Diagnostic, MinilogError
from minilog.model import LogsReceiver, StreamBatch
from minilog.relabel import RelabelRules, Rule, RuleError, compile_rules

__all__ = [
    "BASIC_AUTH_SCHEMA",
    "COMPONENT_TYPES",
    "RULE_BLOCK",
    "RULE_SCHEMA",
    "TLS_CONFIG_SCHEMA",
    "Component",
    "ComponentOptions",
    "Fanout",
    "Health",
    "HealthState",
    "Phase",
    "StableReceiver",
    "compile_rule_args",
    "component_type",
    "positioned",
    "register",
    "rule_blocks",
]

#: Alloy's ``rule`` block (relabel.Rule fields and defaults).
RULE_SCHEMA = Schema(
    attrs=[
        Attr("source_labels", "list(string)", default=[]),
        Attr("separator", "string", default=";"),
        Attr("regex", "string", default="(.*)"),
        Attr("modulus", "uint", default=0),
        Attr("target_label", "string", default=""),
        Attr("replacement", "string", default="$1"),
        Attr("action", "string", default="replace"),
    ]
)

BASIC_AUTH_SCHEMA = Schema(
    attrs=[
        Attr("username", "string", default=""),
        Attr("password", "secret", default=""),
        Attr("password_file", "string", default=""),
    ]
)

TLS_CONFIG_SCHEMA = Schema(
    attrs=[
        Attr("ca_file", "string", default=""),
        Attr("cert_file", "string", default=""),
        Attr("key_file", "string", default=""),
        Attr("server_name", "string", default=""),
        Attr("insecure_skip_verify", "bool", default=False),
    ]
)

RULE_BLOCK = BlockSpec("rule", RULE_SCHEMA, repeated=True)

HealthState = Literal["healthy", "unhealthy", "unknown", "exited"]

#: Shutdown phases, in the order the agent stops them: discovery stops first, so sources
#: see no new targets; sources stop next and record positions; processing drains;
#: writers flush last, within the drain timeout.
Phase = Literal["discovery", "source", "process", "write"]


@dataclass(frozen=True, slots=True)
class Health:
    """A component's health as Alloy reports it in ``/-/healthy`` and the UI."""

    state: HealthState
    message: str = ""
    updated: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class ComponentOptions:
    """What the runtime hands every component.

    Args:
        id: the component ID, ``<name>.<label>`` (``loki.write.default``).
        data_path: ``<storage.path>/<id>/``; created by the component if it needs it.
        registry: this component's own metrics registry; the agent exposes it with
            ``component_id`` added.
        logger: a logger whose records carry ``component_id``.
        on_exports: call after ``exports()`` changed; the runtime re-evaluates
            dependents.
        stability_level: the ``--stability.level`` in force.
        drain_timeout: the most a writer may take to flush when it stops; below it,
            the writer's own ``drain_timeout`` applies (``None``: that alone).
    """

    id: str
    data_path: Path
    registry: CollectorRegistry
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    on_exports: Callable[[], None] = lambda: None
    stability_level: str = "generally-available"
    drain_timeout: float | None = None


class Component(abc.ABC):
    """Base of every component type; subclasses set ``name``, ``schema`` and ``phase``.

    ``run()`` blocks until cancelled and cleans up in ``finally`` (the agent cancels run
    tasks phase by phase to get Alloy's shutdown order); ``update(args)`` applies new
    arguments without dropping entries in flight.
    """

    name: ClassVar[str]
    schema: ClassVar[Schema]
    phase: ClassVar[Phase]

    @classmethod
    def decode(cls, block: Block, scope: Scope) -> dict[str, Any]:
        """Evaluate the block's arguments against ``schema`` (positioned errors)."""
        return decode_block(block, cls.schema, scope)

    @classmethod
    def prepare(
        cls,
        args: Mapping[str, Any],
        block: Block,
        *,
        stability_level: str = "generally-available",
    ) -> dict[str, Any]:
        """Check and convert decoded arguments (compile rules, cross-field checks).

        Runs before the constructor and before every ``update``; pure. Raises
        ``ConfigError`` with diagnostics positioned in ``block``.
        """
        return dict(args)

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
        self.opts = opts
        self.args: Mapping[str, Any] = args
        self._health = Health("healthy", "started")
        self._problems: dict[str, str] = {}
        self._problem_health: Health | None = None

    @property
    def id(self) -> str:
        return self.opts.id

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        return self.opts.logger

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        """Exports of the right types, to validate dependents before anything starts."""
        return {}

    def exports(self) -> Mapping[str, Any]:
        """Values other components may reference as ``<id>.<export>``."""
        return {}

    async def wait_first_exports(self) -> None:  # noqa: B027 - optional hook
        """Return once the exports describe the outside world (a discovery component:
        its first target list). The default returns at once."""

    async def start(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Acquire what ``send`` needs; awaited in dependency order before ``run``."""

    async def run(self) -> None:
        """Run until cancelled, cleaning up in ``finally``. The default has no work."""
        await asyncio.Event().wait()

    async def stop_unstarted(self) -> None:  # noqa: B027 - optional hook
        """Release resources of a component whose ``run`` never started."""

    async def finalize(self) -> None:  # noqa: B027 - optional hook
        """Last step of a stop, after every component of the same stop has stopped.

        Sources persist positions here (writers have settled what they could by now) and
        close their clients.
        """

    @abc.abstractmethod
    async def update(self, args: Mapping[str, Any]) -> None:
        """Apply new, already validated arguments."""

    def health(self) -> Health:
        """What the runtime set (config errors, exit) wins; else the component's own
        problems make it unhealthy; else the last state set."""
        if self._health.state != "healthy" or self._problem_health is None:
            return self._health
        return self._problem_health

    def set_health(self, state: HealthState, message: str) -> None:
        """The runtime's view: a failed update, an exit. See ``report_problem``."""
        self._health = Health(state, message)

    def report_problem(self, key: str, message: str) -> None:
        """The component found something wrong (Docker unreachable, positions not
        saved): it turns unhealthy with ``message`` until ``clear_problem(key)``.

        Problems are kept by ``key`` so independent causes clear independently; the
        message lists them all, oldest first.
        """
        if self._problems.get(key) == message:
            return
        self._problems[key] = message
        self._problem_health = Health("unhealthy", "; ".join(self._problems.values()))

    def clear_problem(self, key: str, message: str = "") -> None:
        """The cause reported as ``key`` went away; with no problem left the component
        is healthy again (``message`` says why, when given)."""
        if self._problems.pop(key, None) is None:
            return
        if self._problems:
            self._problem_health = Health(
                "unhealthy", "; ".join(self._problems.values())
            )
            return
        self._problem_health = None
        if self._health.state == "healthy":
            self._health = Health("healthy", message or "recovered")

    def has_problem(self, key: str) -> bool:
        return key in self._problems

    def debug_info(self) -> Any:
        """A JSON-able view of internal state for the UI; ``None`` if there is none."""
        return None

    def metrics_registry(self) -> CollectorRegistry:
        """The registry currently holding this component's metrics."""
        return self.opts.registry


class ComponentRegistry(MutableMapping[str, "type[Component]"]):
    """Component types by Alloy name; some are imported on first use.

    A type registered lazily costs nothing until a config names it: ``loki.process``
    brings a whole stage library, which an agent running the seed config never loads.
    """

    def __init__(self) -> None:
        self._types: dict[str, type[Component]] = {}
        self._lazy: dict[str, str] = {}

    def register_lazy(self, name: str, module: str) -> None:
        """``name`` is defined (with ``@register``) by importing ``module``."""
        self._lazy[name] = module

    def __getitem__(self, name: str) -> type[Component]:
        if name not in self._types and name in self._lazy:
            importlib.import_module(self._lazy.pop(name))
        return self._types[name]

    def __setitem__(self, name: str, cls: type[Component]) -> None:
        self._lazy.pop(name, None)
        self._types[name] = cls

    def __delitem__(self, name: str) -> None:
        if self._lazy.pop(name, None) is None:
            del self._types[name]

    def __contains__(self, name: object) -> bool:
        return name in self._types or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter([*self._types, *self._lazy])

    def __len__(self) -> int:
        return len(self._types) + len(self._lazy)


COMPONENT_TYPES = ComponentRegistry()


def register(cls: type[Component]) -> type[Component]:
    """Class decorator: make a component type known by its Alloy name."""
    if cls.name in COMPONENT_TYPES._types:
        raise ValueError(f"component type {cls.name!r} registered twice")
    COMPONENT_TYPES[cls.name] = cls
    return cls


def component_type(name: str) -> type[Component] | None:
    """The component type called ``name``, or None if minilog does not support it.

    The types register when ``minilog.components`` is imported (its ``__init__`` imports
    the component modules, or registers them to be imported on first use).
    """
    return COMPONENT_TYPES.get(name)


class Fanout:
    """A stable ``forward_to`` list: sends each batch to every receiver, in order.

    The source keeps one ``Fanout``; updates swap the list it holds. The batch's
    delivery is retained once per extra receiver and released when there is no receiver
    at all.
    """

    __slots__ = ("receivers",)

    def __init__(self, receivers: Sequence[LogsReceiver] = ()) -> None:
        self.receivers: tuple[LogsReceiver, ...] = tuple(receivers)

    def set(self, receivers: Sequence[LogsReceiver]) -> None:
        self.receivers = tuple(receivers)

    async def send(self, batch: StreamBatch) -> None:
        receivers = self.receivers
        if not receivers:
            batch.settle()
            return
        if len(receivers) == 1:
            await receivers[0].send(batch)
            return
        if batch.delivery is not None:
            batch.delivery.retain(len(receivers) - 1)
        last = len(receivers) - 1
        handed = 0
        try:
            for i, receiver in enumerate(receivers):
                # Each receiver gets its own label dict and entry list: a stage
                # downstream may change them, and that must not leak into the copy
                # another receiver holds.
                copy = (
                    batch
                    if i == last
                    else StreamBatch(
                        dict(batch.labels), list(batch.entries), batch.delivery
                    )
                )
                handed += 1  # send() owns the reference, even if it raises
                await receiver.send(copy)
        except BaseException:
            # The references of the receivers never reached are released, so the
            # delivery can settle (abandoned: the source must read them again).
            if batch.delivery is not None:
                for _ in range(len(receivers) - handed):
                    batch.delivery.release(abandoned=True)
            raise


class StableReceiver:
    """The receiver a component exports: stays the same object while its target changes.

    ``target`` is the component's current implementation; once the component stopped,
    sends raise ``ClosedError`` (and settle the batch, so no source is left waiting).
    """

    __slots__ = ("_name", "target")

    def __init__(self, name: str, target: LogsReceiver | None = None) -> None:
        self._name = name
        self.target = target

    async def send(self, batch: StreamBatch) -> None:
        target = self.target
        if target is None:
            batch.settle(abandoned=True)
            raise ClosedError(f"{self._name} is stopped")
        await target.send(batch)

    def __repr__(self) -> str:
        return f"<receiver of {self._name}>"


def rule_blocks(block: Block) -> list[Block]:
    """The ``rule`` sub-blocks of a component block, in source order."""
    return [s for s in block.body if isinstance(s, Block) and s.full_name == "rule"]


def compile_rule_args(
    rules: Sequence[Mapping[str, Any]],
    block: Block,
    *,
    legacy_names: bool = False,
) -> RelabelRules:
    """Decoded ``rule`` blocks -> compiled rules; each bad rule is a positioned error.

    Raises:
        ConfigError: one diagnostic per invalid rule, at that rule block.
    """
    blocks = rule_blocks(block)
    diagnostics: list[Diagnostic] = []
    compiled: list[Rule] = []
    for i, args in enumerate(rules):
        where = blocks[i] if i < len(blocks) else block
        pos = where.pos
        try:
            rule = Rule(**args)
            rule.validate()
        except RuleError as exc:
            # At the offending attribute when the rule names it (regex, action, ...).
            for stmt in where.body:
                if isinstance(stmt, Attribute) and stmt.name == exc.field:
                    pos = _inside_literal(stmt.value, exc.offset) or stmt.value.pos
            diagnostics.append(
                Diagnostic(pos.file, pos.line, pos.col, f"rule: {exc.message}")
            )
            continue
        except ConfigError as exc:
            diagnostics.extend(
                Diagnostic(pos.file, pos.line, pos.col, d.message)
                for d in exc.diagnostics
            )
            continue
        except (ValueError, TypeError, MinilogError) as exc:
            diagnostics.append(Diagnostic(pos.file, pos.line, pos.col, str(exc)))
            continue
        compiled.append(rule)
    if diagnostics:
        raise ConfigError(diagnostics)
    try:
        return compile_rules(compiled, legacy_names=legacy_names)
    except (ValueError, MinilogError) as exc:
        raise ConfigError(
            Diagnostic(block.pos.file, block.pos.line, block.pos.col, str(exc))
        ) from exc


def _inside_literal(value: object, offset: int | None) -> Pos | None:
    """The position of character ``offset`` of a string literal's value, when its
    source spells it character for character (one line, no escapes before it)."""
    if offset is None or not isinstance(value, LiteralNode):
        return None
    body = value.raw[1 : offset + 2]
    escapes = not value.raw.startswith("`") and "\\" in body
    if escapes or "\n" in value.raw or not isinstance(value.value, str):
        return None
    pos = value.pos
    return Pos(pos.line, pos.col + 1 + offset, pos.offset + 1 + offset, pos.file)


def positioned(block: Block, message: str) -> ConfigError:
    """A ``ConfigError`` with one diagnostic at ``block``."""
    pos = block.pos
    return ConfigError(Diagnostic(pos.file, pos.line, pos.col, message))
