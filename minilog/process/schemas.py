"""``stage.*`` argument schemas for the config decoder, and the ordered stage decoder.

Owns ``STAGE_SCHEMAS`` (Alloy's names, types and defaults per stage) and
``decode_stages``: the stage blocks of a ``loki.process`` body, in source order with
nested ``stage.match`` blocks, as ``build_pipeline`` input, every bad stage reported at
its block. Kept apart so that ``minilog.process`` does not depend on the config package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry

from minilog.config import Block, Scope
from minilog.config.ast import Stmt
from minilog.config.schema import Attr, BlockSpec, Schema, decode_block
from minilog.errors import ConfigError, Diagnostic, StageError
from minilog.process.build import STAGE_NAMES, StageSpec, build_pipeline

__all__ = ["STAGE_BLOCKS", "STAGE_GROUP", "STAGE_SCHEMAS", "decode_stages"]

_MATCH: Final = "stage.match"

#: The key under which the decoder gathers ``stage.*`` blocks, in order, as
#: ``[(name, args), ...]``: ``build_pipeline`` input, nested the same way in a match.
STAGE_GROUP: Final = "stages"


def _metric_schema(kind: str) -> Schema:
    attrs = [
        Attr("name", "string", required=True),
        Attr("description", "string", default=""),
        Attr("source", "string", default=""),
        Attr("prefix", "string", default="loki_process_custom_"),
        Attr("value", "string", default=""),
        Attr("max_idle_duration", "duration", default=300.0),
    ]
    if kind != "histogram":
        attrs.append(Attr("action", "string", required=True))
    if kind == "counter":
        attrs.append(Attr("match_all", "bool", default=False))
        attrs.append(Attr("count_entry_bytes", "bool", default=False))
    if kind == "histogram":
        attrs.append(Attr("buckets", "list(number)", required=True))
    return Schema(attrs=attrs)


# Filled below: stage.match nests every stage, itself included.
_BLOCKS: list[BlockSpec] = []

#: Each supported stage's arguments; ``stage.match`` also takes the stage blocks.
STAGE_SCHEMAS: Final[dict[str, Schema]] = {
    "stage.decolorize": Schema(attrs=[]),
    "stage.docker": Schema(attrs=[]),
    "stage.drop": Schema(
        attrs=[
            Attr("source", "string", default=""),
            Attr("value", "string", default=""),
            Attr("separator", "string", default=";"),
            Attr("expression", "string", default=""),
            Attr("older_than", "duration"),
            Attr("longer_than", "bytes"),
            Attr("drop_counter_reason", "string", default="drop_stage"),
        ]
    ),
    "stage.json": Schema(
        attrs=[
            Attr("expressions", "map(string)", required=True),
            Attr("source", "string"),
            Attr("drop_malformed", "bool", default=False),
        ]
    ),
    "stage.label_drop": Schema(attrs=[Attr("values", "list(string)", default=[])]),
    "stage.label_keep": Schema(attrs=[Attr("values", "list(string)", default=[])]),
    "stage.labels": Schema(
        attrs=[
            Attr("values", "map(string)", default={}),
            Attr("source_type", "string", default="extracted"),
        ]
    ),
    "stage.limit": Schema(
        attrs=[
            Attr("rate", "number", required=True),
            Attr("burst", "int", required=True),
            Attr("drop", "bool", default=False),
            Attr("by_label_name", "string", default=""),
            Attr("max_distinct_labels", "int", default=10_000),
        ]
    ),
    "stage.logfmt": Schema(
        attrs=[
            Attr("mapping", "map(string)", default={}),
            Attr("source", "string", default=""),
            Attr("regex", "string", default=""),
        ]
    ),
    _MATCH: Schema(
        attrs=[
            Attr("selector", "string", required=True),
            Attr("action", "string", default="keep"),
            Attr("pipeline_name", "string", default=""),
            Attr("drop_counter_reason", "string", default="match_stage"),
        ],
        blocks=_BLOCKS,
    ),
    "stage.metrics": Schema(
        attrs=[],
        blocks=[
            BlockSpec("metric.counter", _metric_schema("counter"), repeated=True),
            BlockSpec("metric.gauge", _metric_schema("gauge"), repeated=True),
            BlockSpec("metric.histogram", _metric_schema("histogram"), repeated=True),
        ],
    ),
    "stage.multiline": Schema(
        attrs=[
            Attr("firstline", "string", required=True),
            Attr("max_lines", "int", default=128),
            Attr("max_wait_time", "duration", default=3.0),
        ]
    ),
    "stage.output": Schema(attrs=[Attr("source", "string", required=True)]),
    "stage.pack": Schema(
        attrs=[
            Attr("labels", "list(string)", required=True),
            Attr("ingest_timestamp", "bool", default=True),
        ]
    ),
    "stage.regex": Schema(
        attrs=[
            Attr("expression", "string", required=True),
            Attr("source", "string"),
            Attr("labels_from_groups", "bool", default=False),
        ]
    ),
    "stage.replace": Schema(
        attrs=[
            Attr("expression", "string", required=True),
            Attr("source", "string", default=""),
            Attr("replace", "string", default=""),
        ]
    ),
    "stage.sampling": Schema(
        attrs=[
            Attr("rate", "number", required=True),
            Attr("drop_counter_reason", "string", default="sampling_stage"),
        ]
    ),
    "stage.static_labels": Schema(attrs=[Attr("values", "map(string)", default={})]),
    "stage.structured_metadata": Schema(
        attrs=[
            Attr("values", "map(string)", default={}),
            Attr("regex", "string", default=""),
        ]
    ),
    "stage.template": Schema(
        attrs=[
            Attr("source", "string", required=True),
            Attr("template", "string", required=True),
        ]
    ),
    "stage.tenant": Schema(
        attrs=[
            Attr("label", "string", default=""),
            Attr("source", "string", default=""),
            Attr("value", "string", default=""),
        ]
    ),
    "stage.timestamp": Schema(
        attrs=[
            Attr("source", "string", required=True),
            Attr("format", "string", required=True),
            Attr("fallback_formats", "list(string)", default=[]),
            Attr("location", "string"),
            Attr("action_on_failure", "string", default="fudge"),
        ]
    ),
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
