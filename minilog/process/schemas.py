"""``stage.*`` argument schemas for the config decoder, and the ordered stage decoder.

Owns ``STAGE_SCHEMAS`` (the config decoder's view of ``process.arguments.STAGE_ARGS``,
the one table of stage arguments) and ``decode_stages``: the stage blocks of a
``loki.process`` body, in source order with nested ``stage.match`` blocks, as
``build_pipeline`` input, every bad stage reported at its block. Kept apart so that
``minilog.process`` does not depend on the config package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry

from minilog.config import Block, Scope
from minilog.config.ast import (
    ArrayExpr,
    Attribute,
    Expr,
    ObjectExpr,
    Pos,
    Stmt,
    start_pos,
)
from minilog.config.schema import Attr, BlockSpec, Schema, decode_block
from minilog.errors import ConfigError, Diagnostic, StageError
from minilog.process.arguments import (
    NESTED_ARGS,
    NO_DEFAULT,
    OUT_OF_SCOPE,
    STAGE_ARGS,
    StageArg,
)
from minilog.process.build import STAGE_NAMES, StageSpec, build_pipeline

__all__ = [
    "STAGE_BLOCKS",
    "STAGE_GROUP",
    "STAGE_SCHEMAS",
    "decode_stages",
    "error_pos",
]

_MATCH: Final = "stage.match"

#: The key under which the decoder gathers ``stage.*`` blocks, in order, as
#: ``[(name, args), ...]``: ``build_pipeline`` input, nested the same way in a match.
STAGE_GROUP: Final = "stages"


def _schema(args: Sequence[StageArg], blocks: Sequence[BlockSpec] = ()) -> Schema:
    return Schema(
        attrs=[
            Attr(arg.name, arg.type, required=arg.required)
            if arg.default is NO_DEFAULT
            else Attr(arg.name, arg.type, default=arg.default)
            for arg in args
        ],
        blocks=blocks,
    )


# Filled below: stage.match nests every stage, itself included.
_BLOCKS: list[BlockSpec] = []

_NESTED: Final[Mapping[str, Sequence[BlockSpec]]] = {
    _MATCH: _BLOCKS,
    **{
        stage: [
            BlockSpec(name, _schema(args), repeated=True, required=required)
            for name, (args, required) in blocks.items()
        ]
        for stage, blocks in NESTED_ARGS.items()
    },
}

#: Each supported stage's arguments (from ``STAGE_ARGS``, the one table of names, types
#: and defaults); ``stage.match`` also takes the stage blocks.
STAGE_SCHEMAS: Final[dict[str, Schema]] = {
    name: _schema(args, _NESTED.get(name, ())) for name, args in STAGE_ARGS.items()
}

assert set(STAGE_SCHEMAS) == STAGE_NAMES, "every stage needs a schema"

_BLOCKS.extend(
    BlockSpec(name, schema, repeated=True, group=STAGE_GROUP)
    for name, schema in sorted(STAGE_SCHEMAS.items())
)

#: Every stage as a block of the ``STAGE_GROUP`` group: put them in a component schema
#: and ``decode_block`` returns ``args["stages"]`` ready for ``build_pipeline``. Errors
#: only building finds (a bad regex) then have no position; ``decode_stages`` has one.
STAGE_BLOCKS: Final[tuple[BlockSpec, ...]] = tuple(_BLOCKS)


def decode_stages(body: Sequence[Stmt], scope: Scope) -> list[StageSpec]:
    """Decode the ``stage.*`` blocks of ``body`` in order, for ``build_pipeline``.

    Other statements (``forward_to``, ...) are left to the component. Each stage is also
    checked by building it, so an invalid regex or selector is reported at its block.

    Raises:
        ConfigError: every problem found, positioned (unknown stages, bad arguments).
    """
    diagnostics: list[Diagnostic] = []
    specs = _decode(body, scope, diagnostics)
    if diagnostics:
        diagnostics.sort(key=lambda d: (d.path, d.line, d.column))
        raise ConfigError(diagnostics)
    return specs


def _decode(
    body: Sequence[Stmt], scope: Scope, diagnostics: list[Diagnostic]
) -> list[StageSpec]:
    specs: list[StageSpec] = []
    for stmt in body:
        if not isinstance(stmt, Block) or not stmt.full_name.startswith("stage."):
            continue
        name = stmt.full_name
        pos = stmt.pos
        schema = STAGE_SCHEMAS.get(name)
        if schema is None:
            reason = OUT_OF_SCOPE.get(name)
            if reason is None:
                supported = ", ".join(sorted(STAGE_NAMES))
                reason = f'unsupported stage "{name}" (supported: {supported})'
            diagnostics.append(Diagnostic(pos.file, pos.line, pos.col, reason))
            continue
        attrs = stmt.body
        nested: list[StageSpec] = []
        before = len(diagnostics)
        if name == _MATCH:
            attrs = tuple(
                s
                for s in stmt.body
                if not (isinstance(s, Block) and s.full_name.startswith("stage."))
            )
            nested = _decode(stmt.body, scope, diagnostics)
        try:
            args = decode_block(attrs, schema, scope, pos=pos)
        except ConfigError as exc:
            diagnostics.extend(exc.diagnostics)
            continue
        if len(diagnostics) > before:
            continue  # a nested stage failed: building the match would only add noise
        if name == _MATCH:
            args[STAGE_GROUP] = nested
        try:
            # Build it alone so that an invalid argument is reported at its block.
            build_pipeline([(name, args)], registry=CollectorRegistry())
        except StageError as exc:
            at = error_pos(stmt, exc)
            diagnostics.append(Diagnostic(at.file, at.line, at.col, str(exc)))
            continue
        specs.append((name, args))
    return specs


def error_pos(block: Block, exc: StageError) -> Pos:
    """Where in ``block`` the argument ``exc.path`` names is written: the attribute's
    value, the map entry or list element inside it, in nested blocks by name and
    index; the block itself when the path is empty or not found."""
    path = exc.path
    body: Sequence[Stmt] = block.body
    pos = block.pos
    expr: Expr | None = None
    i = 0
    while i < len(path):
        step = path[i]
        if expr is None:
            nested = [s for s in body if isinstance(s, Block) and s.full_name == step]
            if nested and i + 1 < len(path) and isinstance(path[i + 1], int):
                index = int(path[i + 1])
                if index >= len(nested):
                    break
                body, pos = nested[index].body, nested[index].pos
                i += 2
                continue
            found = [s for s in body if isinstance(s, Attribute) and s.name == step]
            if not found:
                break
            expr = found[0].value
            pos = start_pos(expr)
        elif isinstance(expr, ObjectExpr):
            field = next((f for f in expr.fields if f.key == step), None)
            if field is None:
                break
            expr, pos = field.value, field.pos
        elif isinstance(expr, ArrayExpr) and isinstance(step, int):
            if step >= len(expr.elements):
                break
            expr = expr.elements[step]
            pos = start_pos(expr)
        else:
            break
        i += 1
    return pos
