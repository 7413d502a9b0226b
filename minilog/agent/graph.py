"""Config -> validated component graph: what ``minilog validate`` checks, alone.

Reads a config (a file, a directory of ``*.alloy`` files, or text), checks its
top-level blocks, resolves which component references which (the DAG, in dependency
order), and evaluates and parses every component's arguments against placeholder
exports of its dependencies: all problems of a config are reported at once, before
anything starts. The runtime (``runtime.Agent``) builds and runs what this returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minilog import config as cfg
from minilog.agent.logsetup import FORMATS, LEVELS
from minilog.components import COMPONENT_TYPES, Component
from minilog.components.base import STABLE
from minilog.config import Reference, Scope, references, toposort
from minilog.config.ast import Attribute, Block, File
from minilog.config.schema import args_from, attr, decode_block, schema_for
from minilog.config.stdlib import EXPERIMENTAL
from minilog.errors import ConfigError, Diagnostic

__all__ = [
    "CONFIG_BLOCKS",
    "Graph",
    "LiveDebuggingConfig",
    "LoggingConfig",
    "Node",
    "build_graph",
    "decode_args",
    "load_graph",
    "read_config",
]

#: Top-level blocks that configure the agent rather than declare a component.
CONFIG_BLOCKS = ("logging", "livedebugging")


@dataclass(frozen=True)
class LoggingConfig:
    """The top-level ``logging`` block."""

    level: str = attr("string", "info")
    format: str = attr("string", "logfmt")


@dataclass(frozen=True)
class LiveDebuggingConfig:
    """The top-level ``livedebugging`` block (Alloy's, off by default)."""

    enabled: bool = attr("bool", False)


@dataclass(slots=True)
class Node:
    """One component declaration in a loaded config."""

    id: str
    block: Block
    cls: type[Component[Any]]
    deps: set[str]


@dataclass(slots=True)
class Graph:
    """A validated config: nodes in dependency order plus the agent-level blocks."""

    nodes: dict[str, Node]
    order: list[str]
    logging: LoggingConfig
    livedebugging: LiveDebuggingConfig = LiveDebuggingConfig()
    #: Data flow edges, as Alloy draws them: a reference to a receiver export
    #: (``forward_to``) flows from the referencing component to the referenced
    #: one, any other reference the other way.
    flows: dict[str, list[str]] = field(default_factory=dict)


def read_config(path: str | Path | None = None, text: str | None = None) -> File:
    """Parse a config file or directory (``path``), or config ``text``.

    Raises:
        ConfigError: the config cannot be read or parsed.
    """
    if text is not None:
        return cfg.parse(text, "<embedded>")
    assert path is not None
    return cfg.load(path)


def load_graph(path: str | Path, *, stability_level: str = STABLE) -> Graph:
    """``read_config`` then ``build_graph``: ``minilog validate``."""
    return build_graph(read_config(path), stability_level=stability_level)


def decode_args(node: Node, exports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Evaluate a component block's arguments with ``exports`` in scope."""
    return node.cls.decode(node.block, Scope(components=exports))


def build_graph(
    file: File,
    *,
    stability_level: str = STABLE,
    learn: Callable[[Mapping[str, Any]], None] | None = None,
) -> Graph:
    """Check a parsed config and return its component graph; nothing is started.

    Every component's arguments are evaluated against placeholder exports of its
    dependencies and parsed, so that type errors anywhere are reported at once.
    ``learn`` sees each component's evaluated arguments (the agent's redactor learns
    the secrets of a config that may yet fail).

    Raises:
        ConfigError: with every diagnostic found, sorted by position.
    """
    diagnostics: list[Diagnostic] = []
    nodes: dict[str, Node] = {}
    logging_cfg = LoggingConfig()
    live_cfg = LiveDebuggingConfig()
    seen_config: set[str] = set()
    for stmt in file.body:
        if isinstance(stmt, Attribute):
            diagnostics.append(
                _diag(stmt, f"unexpected attribute {stmt.name!r} at the top level")
            )
            continue
        name = stmt.full_name
        if name in CONFIG_BLOCKS:
            if stmt.label is not None:
                diagnostics.append(_diag(stmt, f"block {name!r} does not take a label"))
            elif name in seen_config:
                diagnostics.append(
                    _diag(stmt, f"block {name!r} declared more than once")
                )
            else:
                seen_config.add(name)
                try:
                    if name == "logging":
                        logging_cfg = _decode_logging(stmt)
                    else:
                        values = decode_block(
                            stmt, schema_for(LiveDebuggingConfig), Scope()
                        )
                        live_cfg = args_from(LiveDebuggingConfig, values)
                except ConfigError as exc:
                    diagnostics.extend(exc.diagnostics)
            continue
        cls = COMPONENT_TYPES.get(name)
        if cls is None:
            diagnostics.append(
                _diag(
                    stmt,
                    f"unsupported component or block {name!r}; minilog supports: "
                    f"{', '.join(CONFIG_BLOCKS)}, {_supported()}",
                )
            )
            continue
        if not stmt.label:
            diagnostics.append(_diag(stmt, f'component "{name}" must have a label'))
            continue
        if stmt.id in nodes:
            first = nodes[stmt.id].block.pos
            diagnostics.append(
                _diag(stmt, f"component {stmt.id!r} already declared at {first}")
            )
            continue
        nodes[stmt.id] = Node(stmt.id, stmt, cls, set())

    # References -> edges: a reference depends on the component whose ID prefixes
    # its path; unknown names are reported by the evaluator below, with positions.
    refs = {cid: references(node.block) for cid, node in nodes.items()}
    order: list[str] = list(nodes)
    try:
        order = toposort(refs)
    except ConfigError as exc:
        diagnostics.extend(exc.diagnostics)
    exports_used: dict[str, list[tuple[str, str]]] = {}
    for cid, node in nodes.items():
        for ref in refs[cid]:
            target = _component_of(ref.path, nodes)
            if target is not None and target != cid:
                node.deps.add(target)
                rest = ref.path[len(target.split(".")) :]
                exports_used.setdefault(cid, []).append(
                    (target, rest[0] if rest else "")
                )
            elif target is None:
                diagnostics.extend(_experimental_call(ref, stability_level))

    # Evaluate every component against placeholder exports of its dependencies, so
    # that type errors anywhere are reported at once, before anything starts.
    scope: dict[str, Mapping[str, Any]] = {}
    for cid in order:
        node = nodes[cid]
        exports = node.cls.placeholder_exports(cid)
        try:
            args = decode_args(node, scope)
            if learn is not None:
                learn(args)
            parsed = node.cls.parse_args(
                args, node.block, stability_level=stability_level
            )
            exports = node.cls.validation_exports(cid, parsed)
        except ConfigError as exc:
            diagnostics.extend(exc.diagnostics)
        scope[cid] = exports
    if diagnostics:
        diagnostics.sort(key=lambda d: (d.path, d.line, d.column))
        raise ConfigError(diagnostics)
    flows: dict[str, list[str]] = {cid: [] for cid in nodes}
    for cid, used in exports_used.items():
        for target, export in used:
            value = scope.get(target, {}).get(export)
            src, dst = (cid, target) if _is_receiver(value) else (target, cid)
            if dst not in flows[src]:
                flows[src].append(dst)
    return Graph(nodes, order, logging_cfg, live_cfg, flows)


def _is_receiver(value: Any) -> bool:
    # A LogsReceiver export (what forward_to takes), alone or in a list.
    if isinstance(value, list | tuple):
        return any(_is_receiver(v) for v in value)
    return callable(getattr(value, "send", None))


def _diag(block: Block | Attribute, message: str) -> Diagnostic:
    return Diagnostic(block.pos.file, block.pos.line, block.pos.col, message)


def _supported() -> str:
    return ", ".join(sorted(COMPONENT_TYPES))


def _experimental_call(ref: Reference, stability_level: str) -> list[Diagnostic]:
    """Alloy refuses an experimental stdlib function below ``--stability.level=
    experimental``, in featuregate's words, at the reference."""
    name = ref.dotted
    if name not in EXPERIMENTAL or stability_level == "experimental":
        return []
    message = (
        f"{name} is at stability level experimental, which is below the minimum "
        f"allowed stability level {stability_level}. Use --stability.level "
        "command-line flag to enable experimental features"
    )
    pos = ref.pos
    return [Diagnostic(pos.file, pos.line, pos.col, message)]


def _component_of(path: tuple[str, ...], nodes: Mapping[str, Node]) -> str | None:
    for k in range(len(path), 1, -1):
        cid = ".".join(path[:k])
        if cid in nodes:
            return cid
    return None


def _decode_logging(block: Block) -> LoggingConfig:
    values = decode_block(block, schema_for(LoggingConfig), Scope())
    logging = args_from(LoggingConfig, values)
    problems = []
    if logging.level not in LEVELS:
        problems.append(
            _diag(
                block,
                f"logging: unknown level {logging.level!r}; supported: "
                f"{', '.join(LEVELS)}",
            )
        )
    if logging.format not in FORMATS:
        problems.append(
            _diag(
                block,
                f"logging: unknown format {logging.format!r}; supported: "
                f"{', '.join(FORMATS)}",
            )
        )
    if problems:
        raise ConfigError(problems)
    return logging
