"""The one table of stage arguments: the config schemas and the builder read it."""

from __future__ import annotations

import pytest

from minilog.config.schema import MISSING
from minilog.errors import StageError
from minilog.process import STAGE_NAMES, STAGE_SCHEMAS
from minilog.process.arguments import (
    METRIC_ARGS,
    NO_DEFAULT,
    STAGE_ARGS,
    StageArg,
    StageArgs,
)


def test_every_stage_has_its_arguments_and_schema() -> None:
    assert set(STAGE_ARGS) == STAGE_NAMES == set(STAGE_SCHEMAS)


@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
def test_schema_defaults_are_the_table_defaults(stage: str) -> None:
    attrs = {attr.name: attr for attr in STAGE_SCHEMAS[stage].attrs}
    assert list(attrs) == [arg.name for arg in STAGE_ARGS[stage]]
    for arg in STAGE_ARGS[stage]:
        attr = attrs[arg.name]
        assert attr.type == arg.type
        assert attr.required == arg.required
        expected = MISSING if arg.default is NO_DEFAULT else arg.default
        assert attr.default == expected


def test_metric_blocks_come_from_the_table() -> None:
    blocks = {block.name: block for block in STAGE_SCHEMAS["stage.metrics"].blocks}
    assert set(blocks) == set(METRIC_ARGS)
    for name, args in METRIC_ARGS.items():
        assert [a.name for a in blocks[name].schema.attrs] == [a.name for a in args]


def test_an_absent_argument_reads_as_its_default() -> None:
    spec = (
        StageArg("reason", "string", "drop_stage"),
        StageArg("max", "int", 128),
        StageArg("wait", "duration", 3.0),
        StageArg("source", "string"),
    )
    args = StageArgs("stage.x", {}, spec)
    assert args.string("reason") == "drop_stage"
    assert args.integer("max") == 128
    assert args.duration_ns("wait") == 3_000_000_000
    assert args.string("source") == ""


def test_blank_reads_an_empty_string_as_the_default() -> None:
    spec = (StageArg("reason", "string", "drop_stage"),)
    args = StageArgs("stage.x", {"reason": ""}, spec)
    assert args.string("reason") == ""
    assert args.string("reason", blank=True) == "drop_stage"


def test_unknown_arguments_are_refused_blocks_are_not() -> None:
    spec = (StageArg("selector", "string", required=True),)
    with pytest.raises(StageError, match="unsupported argument"):
        StageArgs("stage.match", {"selector": "{}", "extra": 1}, spec)
    StageArgs("stage.match", {"stages": []}, spec, blocks=frozenset({"stages"}))
