"""Tests for ``minilog.process``: the label stages (``stage.labels``,
``static_labels``, ``label_drop``, ``label_keep``, ``tenant``) and
``stage.structured_metadata``."""

from __future__ import annotations

from typing import Any

import pytest
from process_helpers import (
    LABELS,
    NOW,
    Stages,
    batch,
    lines_of,
    only,
    run,
)

from minilog.errors import StageError
from minilog.model import LogEntry, StreamBatch
from minilog.process import build_pipeline

# ------------------------------------------------------------------------------ labels


def test_labels_from_extracted_values() -> None:
    stages: Stages = [
        (
            "stage.json",
            {"expressions": {"level": "", "user": "ctx.user", "n": "", "nil": ""}},
        ),
        (
            "stage.labels",
            {"values": {"level": "", "who": "user", "n": "", "nil": "", "x": ""}},
        ),
    ]
    line = '{"level":"warn","ctx":{"user":"ann"},"n":3,"nil":null}'
    out = only(run(stages, line))
    assert out.labels == {**LABELS, "level": "warn", "who": "ann", "n": "3"}


def test_labels_split_a_batch_by_value_and_keep_order() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"level": ""}}),
        ("stage.labels", {"values": {"level": ""}}),
    ]
    lines = [
        '{"level":"info","i":0}',
        '{"level":"error","i":1}',
        '{"level":"info","i":2}',
    ]
    out = run(stages, *lines)
    by_level = {b.labels["level"]: lines_of([b]) for b in out}
    assert by_level == {"info": [lines[0], lines[2]], "error": [lines[1]]}


def test_labels_empty_value_removes_the_label() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"container": ""}}),
        ("stage.labels", {"values": {"container": ""}}),
    ]
    assert only(run(stages, '{"container":""}')).labels == {"job": "docker"}


def test_labels_see_the_initial_labels_in_the_extracted_map() -> None:
    out = only(run([("stage.labels", {"values": {"app": "container"}})], "x"))
    assert out.labels == {**LABELS, "app": "shop"}


def test_labels_from_structured_metadata() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"trace_id": ""}}),
        ("stage.structured_metadata", {"values": {"trace_id": ""}}),
        (
            "stage.labels",
            {"values": {"trace": "trace_id"}, "source_type": "structured_metadata"},
        ),
    ]
    out = only(run(stages, '{"trace_id":"abc"}'))
    assert out.labels["trace"] == "abc"


@pytest.mark.parametrize(
    "stage", ["stage.labels", "stage.static_labels", "stage.structured_metadata"]
)
def test_invalid_label_names_are_refused(stage: str) -> None:
    """Alloy v1.18 validates label names as UTF-8 (prometheus/common's default):
    only an empty (or invalid UTF-8) name is refused; ``bad-name`` is accepted."""
    with pytest.raises(StageError, match="invalid label name") as info:
        build_pipeline([(stage, {"values": {"": "x"}})])
    assert info.value.path == ("values", "")
    build_pipeline([(stage, {"values": {"app.kubernetes.io/name": "x"}})])


def test_labels_source_type_must_be_known() -> None:
    with pytest.raises(StageError, match="source_type"):
        build_pipeline([("stage.labels", {"values": {"a": ""}, "source_type": "line"})])


@pytest.mark.parametrize(
    ("stage", "args", "expected"),
    [
        pytest.param(
            "stage.static_labels",
            {"values": {"env": "prod", "job": "api", "skip": ""}},
            {"job": "api", "container": "shop", "env": "prod"},
            id="static",
        ),
        pytest.param(
            "stage.label_drop",
            {"values": ["container", "absent"]},
            {"job": "docker"},
            id="drop",
        ),
        pytest.param(
            "stage.label_keep",
            {"values": ["container", "absent"]},
            {"container": "shop"},
            id="keep",
        ),
        pytest.param(
            "stage.tenant",
            {"value": "team-a"},
            {**LABELS, "__tenant_id__": "team-a"},
            id="tenant-value",
        ),
        pytest.param(
            "stage.tenant",
            {"label": "container"},
            {**LABELS, "__tenant_id__": "shop"},
            id="tenant-label",
        ),
    ],
)
def test_label_stages(
    stage: str, args: dict[str, Any], expected: dict[str, str]
) -> None:
    assert only(run([(stage, args)], "line")).labels == expected


def test_tenant_from_extracted_source() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"customer_id": ""}}),
        ("stage.tenant", {"source": "customer_id"}),
    ]
    assert only(run(stages, '{"customer_id":"c7"}')).labels["__tenant_id__"] == "c7"


def test_tenant_needs_exactly_one_way() -> None:
    with pytest.raises(StageError, match="mutually exclusive"):
        build_pipeline([("stage.tenant", {"value": "a", "label": "b"})])
    with pytest.raises(StageError, match="are required"):
        build_pipeline([("stage.tenant", {})])


@pytest.mark.parametrize(
    "stage", ["stage.label_keep", "stage.label_drop", "stage.structured_metadata_drop"]
)
def test_label_lists_must_not_be_empty(stage: str) -> None:
    """Alloy refuses an empty (or missing) ``values`` list for these."""
    with pytest.raises(StageError, match="cannot be empty"):
        build_pipeline([(stage, {"values": []})])


def test_label_only_stages_do_no_per_line_work() -> None:
    """Stages that touch only labels hand the very same entry list on."""
    pipeline = build_pipeline(
        [
            ("stage.static_labels", {"values": {"env": "prod"}}),
            ("stage.label_drop", {"values": ["container"]}),
            (
                "stage.match",
                {
                    "selector": '{env="prod"}',
                    "stages": [("stage.label_keep", {"values": ["env", "job"]})],
                },
            ),
        ]
    )
    source = batch(*(f"line {i}" for i in range(100)))
    out = only(pipeline.process(source, NOW))
    assert out.entries is source.entries
    assert out.labels == {"env": "prod", "job": "docker"}
    assert source.labels == LABELS  # the caller's labels were not modified


# ---------------------------------------------------------------------------- metadata


def test_structured_metadata_from_extracted_values() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"app": "", "component": "", "n": ""}}),
        (
            "stage.structured_metadata",
            {"values": {"app": "", "num": "n", "absent": ""}},
        ),
        ("stage.labels", {"values": {"component": ""}}),
    ]
    out = only(run(stages, '{"app":"loki","component":"ingester","n":2}', labels={}))
    assert out.entries[0].structured_metadata == (("app", "loki"), ("num", "2"))
    assert out.labels == {"component": "ingester"}


@pytest.mark.parametrize(
    ("values", "expected_metadata"),
    [
        ({"pod": ""}, (("pod", "loki-querier-664f97db8d-qhnwg"),)),
        ({"pod_name": "pod"}, (("pod_name", "loki-querier-664f97db8d-qhnwg"),)),
    ],
)
def test_structured_metadata_moves_labels_out_of_the_label_set(
    values: dict[str, str], expected_metadata: tuple[tuple[str, str], ...]
) -> None:
    stages: Stages = [
        (
            "stage.static_labels",
            {
                "values": {
                    "component": "querier",
                    "pod": "loki-querier-664f97db8d-qhnwg",
                }
            },
        ),
        ("stage.structured_metadata", {"values": values}),
    ]
    out = only(run(stages, "sample log line", labels={}))
    assert out.entries[0].structured_metadata == expected_metadata
    assert out.labels == {"component": "querier"}


def test_structured_metadata_from_an_initial_label_is_added_once() -> None:
    out = only(run([("stage.structured_metadata", {"values": {"container": ""}})], "x"))
    assert out.entries[0].structured_metadata == (("container", "shop"),)
    assert out.labels == {"job": "docker"}


def test_structured_metadata_appends_to_existing_metadata() -> None:
    pipeline = build_pipeline(
        [
            ("stage.regex", {"expression": "(?P<user>ann)"}),
            ("stage.structured_metadata", {"values": {"user": ""}}),
        ]
    )
    source = StreamBatch({"job": "a"}, [LogEntry(1, "ann", (("trace_id", "t1"),))])
    out = only(pipeline.process(source, NOW))
    assert out.entries[0].structured_metadata == (("trace_id", "t1"), ("user", "ann"))
