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
from typing import Any, ClassVar, Final, Generic, Literal, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from minilog.config import Scope
from minilog.config.ast import Block
from minilog.config.schema import Schema, args_from, decode_block, schema_for
from minilog.errors import ClosedError
from minilog.model import LogsReceiver, StreamBatch

__all__ = [
    "COMPONENT_TYPES",
    "STABLE",
    "BatchTap",
    "Component",
    "ComponentOptions",
    "Fanout",
    "Health",
    "HealthState",
    "Phase",
    "StableReceiver",
    "component_type",
    "register",
]

HealthState = Literal["healthy", "unhealthy", "unknown", "exited"]

#: A component type's arguments class.
ArgsT = TypeVar("ArgsT")

#: The default ``--stability.level``: only generally available features.
STABLE: Final = "generally-available"

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
    stability_level: str = STABLE
    drain_timeout: float | None = None


class Component(abc.ABC, Generic[ArgsT]):
    """Base of every component type; subclasses set ``name``, ``schema`` and ``phase``.

    ``run()`` blocks until cancelled and cleans up in ``finally`` (the agent cancels run
    tasks phase by phase to get Alloy's shutdown order); ``update(args)`` applies new
    arguments without dropping entries in flight. Arguments are ``ArgsT``: a frozen,
    typed class decoded from ``schema`` by :meth:`parse_args`.
    """

    name: ClassVar[str]
    schema: ClassVar[Schema]
    phase: ClassVar[Phase]
    #: The arguments class (``config.schema.attr``/``block`` fields): ``schema`` is
    #: derived from it, ``parse_args`` builds it and ``check_args`` checks it. Types
    #: whose arguments need more (rule blocks, endpoint blocks) set ``schema`` and
    #: override ``parse_args`` instead.
    args_class: ClassVar[type[Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.args_class is not None and "schema" not in cls.__dict__:
            cls.schema = schema_for(cls.args_class)

    @classmethod
    def decode(cls, block: Block, scope: Scope) -> dict[str, Any]:
        """Evaluate the block's arguments against ``schema`` (positioned errors): the
        values as Alloy shows them (the UI's arguments)."""
        return decode_block(block, cls.schema, scope)

    @classmethod
    def parse_args(
        cls, values: Mapping[str, Any], block: Block, *, stability_level: str = STABLE
    ) -> Any:
        """The typed, checked arguments of decoded ``values``: an ``args_class``
        instance checked by ``check_args`` (a dict without one). Pure; runs before
        the constructor and before every ``update``.

        Raises:
            ConfigError: with diagnostics positioned in ``block``.
        """
        if cls.args_class is None:
            return dict(values)
        args = args_from(cls.args_class, values)
        cls.check_args(args, block)
        return args

    @classmethod
    def check_args(cls, args: Any, block: Block) -> None:
        """Checks across arguments; ``ConfigError`` positioned at ``block``."""

    def __init__(self, opts: ComponentOptions, args: ArgsT) -> None:
        self.opts = opts
        self.args: ArgsT = args
        self._health = Health("healthy", "started")
        self._problems: dict[str, str] = {}
        self._problem_health: Health | None = None
        self._fanouts: list[Fanout] = []
        self._tap: BatchTap | None = None

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

    @classmethod
    def validation_exports(cls, component_id: str, args: Any) -> Mapping[str, Any]:
        """``placeholder_exports`` knowing the component's parsed arguments (a
        ``local.file`` with ``is_secret`` exports a secret), to validate dependents."""
        return cls.placeholder_exports(component_id)

    def exports(self) -> Mapping[str, Any]:
        """Values other components may reference as ``<id>.<export>``."""
        return {}

    async def wait_first_exports(self) -> None:
        """Return once the exports describe the outside world (a discovery component:
        its first target list). The default returns at once."""

    async def start(self) -> None:
        """Acquire what ``send`` needs; awaited in dependency order before ``run``."""

    async def run(self) -> None:
        """Run until cancelled, cleaning up in ``finally``. The default has no work."""
        await asyncio.Event().wait()

    async def stop_unstarted(self) -> None:
        """Release resources of a component whose ``run`` never started."""

    async def finalize(self) -> None:
        """Last step of a stop, after every component of the same stop has stopped.

        Sources persist positions here (writers have settled what they could by now) and
        close their clients.
        """

    @abc.abstractmethod
    async def update(self, args: ArgsT) -> None:
        """Apply new, already parsed arguments."""

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

    def output_fanout(self, receivers: Sequence[LogsReceiver] = ()) -> Fanout:
        """The ``Fanout`` this component forwards its entries through: live
        debugging watches what leaves through it."""
        fanout = Fanout(receivers)
        fanout.tap = self._tap
        self._fanouts.append(fanout)
        return fanout

    @property
    def supports_live_debugging(self) -> bool:
        """Whether it forwards entries (through ``output_fanout``)."""
        return bool(self._fanouts)

    def set_live_tap(self, tap: BatchTap | None) -> None:
        """Watch (or stop watching) what leaves this component."""
        self._tap = tap
        for fanout in self._fanouts:
            fanout.tap = tap

    def metrics_registry(self) -> CollectorRegistry:
        """The registry currently holding this component's metrics."""
        return self.opts.registry


class ComponentRegistry(MutableMapping[str, "type[Component[Any]]"]):
    """Component types by Alloy name; some are imported on first use.

    A type registered lazily costs nothing until a config names it: ``loki.process``
    brings a whole stage library, which an agent running the seed config never loads.
    """

    def __init__(self) -> None:
        self._types: dict[str, type[Component[Any]]] = {}
        self._lazy: dict[str, str] = {}

    def loaded(self, name: str) -> bool:
        """Whether ``name``'s type is imported (not only registered lazily)."""
        return name in self._types

    def register_lazy(self, name: str, module: str) -> None:
        """``name`` is defined (with ``@register``) by importing ``module``."""
        self._lazy[name] = module

    def __getitem__(self, name: str) -> type[Component[Any]]:
        if name not in self._types and name in self._lazy:
            importlib.import_module(self._lazy.pop(name))
        return self._types[name]

    def __setitem__(self, name: str, cls: type[Component[Any]]) -> None:
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


_C = TypeVar("_C", bound=type[Component[Any]])


def register(cls: _C) -> _C:
    """Class decorator: make a component type known by its Alloy name."""
    if COMPONENT_TYPES.loaded(cls.name):
        raise ValueError(f"component type {cls.name!r} registered twice")
    COMPONENT_TYPES[cls.name] = cls
    return cls


def component_type(name: str) -> type[Component[Any]] | None:
    """The component type called ``name``, or None if minilog does not support it.

    The types register when ``minilog.components`` is imported (its ``__init__`` imports
    the component modules, or registers them to be imported on first use).
    """
    return COMPONENT_TYPES.get(name)


class BatchTap(Protocol):
    """Live debugging's view of a component's output (``agent.livedebug``): sees
    every batch a fanout forwards; must not block."""

    def publish(self, batch: StreamBatch) -> None: ...


class Fanout:
    """A stable ``forward_to`` list: sends each batch to every receiver, in order.

    The source keeps one ``Fanout``; updates swap the list it holds. The batch's
    delivery is retained once per extra receiver and released when there is no receiver
    at all. ``tap`` is set while someone live-debugs the component: it sees each batch
    as it leaves (``None`` otherwise, the only cost then).
    """

    __slots__ = ("receivers", "tap")

    def __init__(self, receivers: Sequence[LogsReceiver] = ()) -> None:
        self.receivers: tuple[LogsReceiver, ...] = tuple(receivers)
        self.tap: BatchTap | None = None

    def set(self, receivers: Sequence[LogsReceiver]) -> None:
        self.receivers = tuple(receivers)

    async def send(self, batch: StreamBatch) -> None:
        tap = self.tap
        if tap is not None:
            tap.publish(batch)
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
