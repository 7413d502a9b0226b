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
from minilog.config.ast import Stmt
from minilog.config.schema import Attr, BlockSpec, Schema, decode_block
from minilog.errors import ConfigError, Diagnostic, StageError
from minilog.process.arguments import METRIC_ARGS, NO_DEFAULT, STAGE_ARGS, StageArg
from minilog.process.build import STAGE_NAMES, StageSpec, build_pipeline

__all__ = ["STAGE_BLOCKS", "STAGE_GROUP", "STAGE_SCHEMAS", "decode_stages"]

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
    "stage.metrics": [
        BlockSpec(name, _schema(args), repeated=True)
        for name, args in METRIC_ARGS.items()
    ],
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
            supported = ", ".join(sorted(STAGE_NAMES))
            diagnostics.append(
                Diagnostic(
                    pos.file,
                    pos.line,
                    pos.col,
                    f'unsupported stage "{name}" (supported: {supported})',
                )
            )
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
            diagnostics.append(Diagnostic(pos.file, pos.line, pos.col, str(exc)))
            continue
        specs.append((name, args))
    return specs
