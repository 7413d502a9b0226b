"""Tests for ``minilog.process``: ``Pipeline`` (deliveries through stages), building
from stage blocks, decoding them from config, robustness."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from process_helpers import (
    LABELS,
    NOW,
    TRACE,
    S,
    Settled,
    Stages,
    batch,
    dropped,
    lines_of,
    multiline,
    only,
    run,
    sample,
)
from prometheus_client import CollectorRegistry

from minilog.errors import MinilogError, StageError
from minilog.model import Delivery, StreamBatch
from minilog.process import STAGE_NAMES, build_pipeline

# ---------------------------------------------------------------------------- delivery


def test_delivery_settles_once_when_everything_is_dropped() -> None:
    settled = Settled()
    pipeline = build_pipeline([("stage.drop", {"expression": "."})])
    assert pipeline.process(batch("a", "b", delivery=Delivery(settled)), NOW) == []
    assert settled.calls == [True]


def test_delivery_of_a_split_batch_settles_after_every_part() -> None:
    settled = Settled()
    pipeline = build_pipeline(
        [
            ("stage.regex", {"expression": "(?P<level>\\w+)"}),
            ("stage.labels", {"values": {"level": ""}}),
        ]
    )
    out = pipeline.process(
        batch("info a", "warn b", "error c", "info d", delivery=Delivery(settled)), NOW
    )
    assert len(out) == 3
    assert {id(b.delivery) for b in out} == {id(out[0].delivery)}
    for b in out[:-1]:
        b.settle()
        assert settled.calls == []
    out[-1].settle()
    assert settled.calls == [True]


def test_delivery_abandoned_part_reports_false() -> None:
    settled = Settled()
    pipeline = build_pipeline(
        [
            (
                "stage.match",
                {
                    "selector": '{job="docker"} |= "x"',
                    "stages": [("stage.static_labels", {"values": {"x": "1"}})],
                },
            )
        ]
    )
    out = pipeline.process(batch("x1", "y", delivery=Delivery(settled)), NOW)
    assert len(out) == 2
    out[0].settle(abandoned=True)
    out[1].settle()
    assert settled.calls == [False]


def test_delivery_waits_for_held_multiline_lines() -> None:
    first, second = Settled(), Settled()
    pipeline = multiline()
    # batch 1: a complete block and the start of the next one
    out1 = pipeline.process(batch(*TRACE[:3], TRACE[0], delivery=Delivery(first)), NOW)
    assert len(out1) == 1
    out1[0].settle()
    assert first.calls == []  # the held block still has lines from batch 1
    # batch 2 continues the held block and starts another
    out2 = pipeline.process(batch(TRACE[3], TRACE[4], delivery=Delivery(second)), NOW)
    merged = only(out2)
    assert merged.entries[0].line == "\n".join([TRACE[0], TRACE[3]])
    merged.settle()
    assert first.calls == [True]
    assert second.calls == []  # TRACE[4] is still held
    only(pipeline.flush_all(NOW)).settle()
    assert second.calls == [True]


def test_delivery_of_blocks_from_two_batches_merged_into_one_output() -> None:
    first, second = Settled(), Settled()
    pipeline = multiline()
    assert pipeline.process(batch(TRACE[0], delivery=Delivery(first)), NOW) == []
    out = only(
        pipeline.process(
            batch(TRACE[4], "2026-11-27 10:00:02 x", delivery=Delivery(second)), NOW
        )
    )
    assert lines_of([out]) == [TRACE[0], TRACE[4]]
    out.settle()
    assert first.calls == [True]
    assert second.calls == []
    only(pipeline.flush_all(NOW)).settle()
    assert second.calls == [True]


def test_empty_batch_is_settled_and_no_stages_pass_batches_through() -> None:
    settled = Settled()
    pipeline = build_pipeline([("stage.static_labels", {"values": {"a": "b"}})])
    assert pipeline.process(StreamBatch({}, [], Delivery(settled)), NOW) == []
    assert settled.calls == [True]
    source = batch("x")
    assert build_pipeline([]).process(source, NOW) == [source]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["info", "warn", "error", "debug", "2026-11-27 10:00:00 x"]),
        min_size=1,
        max_size=30,
    ),
    st.lists(st.booleans(), min_size=1, max_size=30),
)
def test_delivery_settles_exactly_once_for_any_mix(
    levels: list[str], abandon: list[bool]
) -> None:
    settled = Settled()
    pipeline = build_pipeline(
        [
            ("stage.drop", {"expression": "^debug"}),
            ("stage.regex", {"expression": "^(?P<level>\\w+)"}),
            ("stage.labels", {"values": {"level": ""}}),
            ("stage.match", {"selector": '{level="warn"}', "action": "drop"}),
            ("stage.multiline", {"firstline": "^2026"}),
        ]
    )
    out = pipeline.process(batch(*levels, delivery=Delivery(settled)), NOW)
    out += pipeline.flush_all(NOW)
    expect_abandoned = False
    for i, b in enumerate(out):
        gone = abandon[i % len(abandon)]
        expect_abandoned |= gone
        b.settle(abandoned=gone)
    assert settled.calls == [not expect_abandoned]


# ---------------------------------------------------------------------------- building


def test_stage_names_cover_the_supported_stages() -> None:
    """The stages of the assignment are all there (docker, pack, ... are extras)."""
    required = {
        "stage.json", "stage.logfmt", "stage.regex", "stage.labels",
        "stage.static_labels", "stage.label_drop", "stage.label_keep",
        "stage.structured_metadata", "stage.timestamp", "stage.output", "stage.drop",
        "stage.match", "stage.multiline",
    }  # fmt: skip
    assert required <= STAGE_NAMES


def test_unknown_stage_and_argument_are_stage_errors() -> None:
    with pytest.raises(StageError) as info:
        build_pipeline([("stage.geoip", {"db": "x"})])
    assert info.value.stage_name == "stage.geoip"
    assert isinstance(info.value, MinilogError)
    with pytest.raises(StageError, match=r"unsupported argument.*sourc") as info:
        build_pipeline([("stage.output", {"sourc": "x"})])
    assert info.value.stage_name == "stage.output"


@pytest.mark.parametrize(
    ("stage", "args"),
    [
        ("stage.json", {"expressions": "level"}),
        ("stage.json", {"expressions": {"a": ""}, "drop_malformed": "yes"}),
        ("stage.label_drop", {"values": "container"}),
        ("stage.multiline", {"firstline": "x", "max_lines": 2.5}),
        ("stage.output", {"source": True}),
        ("stage.static_labels", {"values": {"a": ["x"]}}),
        ("stage.label_keep", {"values": [1, False]}),
        ("stage.multiline", {"firstline": "x", "max_lines": float("inf")}),
    ],
)
def test_argument_types_are_checked(stage: str, args: dict[str, Any]) -> None:
    with pytest.raises(StageError):
        build_pipeline([(stage, args)])


def test_pipelines_can_share_one_registry() -> None:
    registry = CollectorRegistry()
    drop_a = build_pipeline([("stage.drop", {"expression": "a"})], registry=registry)
    drop_b = build_pipeline(
        [("stage.match", {"selector": '{job="docker"} |= "b"', "action": "drop"})],
        registry=registry,
    )
    drop_a.process(batch("a"), NOW)
    drop_b.process(batch("b", "b"), NOW)
    assert dropped(registry, "drop_stage") == 1
    assert dropped(registry, "match_stage") == 2


# ------------------------------------------------------------------------------ config


PROCESS_CONFIG = r"""
loki.process "shop" {
  forward_to = []

  stage.json {
    expressions = { level = "", msg = "message", ts = "time" }
  }
  stage.labels {
    values = { level = "" }
  }
  stage.match {
    selector = "{level=\"debug\"} |= \"cache\""
    action   = "drop"
    drop_counter_reason = "noisy"
  }
  stage.match {
    selector = "{level=\"error\"}"
    stage.static_labels {
      values = { severity = "high" }
    }
    stage.label_drop {
      values = ["container"]
    }
  }
  stage.timestamp {
    source = "ts"
    format = "RFC3339"
  }
  stage.drop {
    older_than = "24h"
  }
  stage.drop {
    longer_than         = "8KB"
    drop_counter_reason = "too long"
  }
  stage.output {
    source = "msg"
  }
}
"""


def _parse_process_block(text: str) -> Any:
    config = pytest.importorskip("minilog.config")
    return config.parse(text, "test.alloy").body[0]


def test_decode_stages_keeps_source_order_and_nesting_and_builds() -> None:
    from minilog.config import Scope
    from minilog.process import decode_stages

    block = _parse_process_block(PROCESS_CONFIG)
    specs = decode_stages(block.body, Scope())
    assert [name for name, _ in specs] == [
        "stage.json",
        "stage.labels",
        "stage.match",
        "stage.match",
        "stage.timestamp",
        "stage.drop",
        "stage.drop",
        "stage.output",
    ]
    nested = specs[3][1]["stages"]
    assert [name for name, _ in nested] == ["stage.static_labels", "stage.label_drop"]
    assert specs[5][1]["older_than"] == 86400.0
    assert specs[5][1]["separator"] == ";"  # Alloy's default applied by the schema
    assert specs[6][1]["longer_than"] == 8192

    registry = CollectorRegistry()
    pipeline = build_pipeline(specs, registry=registry)
    lines = [
        '{"level":"error","message":"payment failed","time":"2026-11-27T09:59:00Z"}',
        '{"level":"debug","message":"cache hit","time":"2026-11-27T09:59:01Z"}',
        '{"level":"info","message":"order processed","time":"2026-11-25T09:00:00Z"}',
        '{"level":"info","message":"' + "x" * 8192 + '","time":"2026-11-27T09:59:02Z"}',
    ]
    out = pipeline.process(batch(*lines), NOW)
    assert [(b.labels, lines_of([b])) for b in out] == [
        ({"job": "docker", "level": "error", "severity": "high"}, ["payment failed"])
    ]
    assert dropped(registry, "noisy") == 1
    assert dropped(registry, "drop_stage") == 1
    assert dropped(registry, "too long") == 1


def test_decode_stages_reports_every_bad_stage_at_its_block() -> None:
    from minilog.config import Scope
    from minilog.process import decode_stages

    block = _parse_process_block(
        "\n".join(
            [
                'loki.process "p" {',
                "  stage.json { }",
                '  stage.geoip { db = "x" }',
                '  stage.regex { expression = "(?=x)" }',
                "  stage.match {",
                '    selector = "{a=\\"b\\"}"',
                '    stage.timestamp { source = "t"',
                '      format = "RFC3339"',
                '      location = "Nowhere/Land" }',
                "  }",
                '  stage.drop { older_than = "soon" }',
                "}",
            ]
        )
    )
    with pytest.raises(MinilogError) as info:
        decode_stages(block.body, Scope())
    found = [(d.line, d.message) for d in info.value.diagnostics]  # type: ignore[attr-defined]
    # The bad location is reported at its attribute, the others at their blocks.
    assert [line for line, _ in found] == [2, 3, 4, 9, 11]
    assert "expressions" in found[0][1]
    assert "MaxMind" in found[1][1]  # out of scope, and why
    assert "lookahead" in found[2][1]
    assert "location" in found[3][1]
    assert "duration" in found[4][1]


def test_every_stage_has_a_schema_with_alloy_defaults() -> None:
    pytest.importorskip("minilog.config")
    from minilog.process import STAGE_SCHEMAS

    assert set(STAGE_SCHEMAS) == STAGE_NAMES
    defaults = {
        (stage, a.name): a.default
        for stage, schema in STAGE_SCHEMAS.items()
        for a in schema.attrs
    }
    assert defaults[("stage.multiline", "max_wait_time")] == 3.0
    assert defaults[("stage.multiline", "max_lines")] == 128
    assert defaults[("stage.drop", "drop_counter_reason")] == "drop_stage"
    assert defaults[("stage.match", "drop_counter_reason")] == "match_stage"
    assert defaults[("stage.timestamp", "action_on_failure")] == "fudge"


# -------------------------------------------------------------------------- robustness

EVERY_STAGE: Stages = [
    ("stage.decolorize", {}),
    ("stage.json", {"expressions": {"level": "", "ts": "", "msg": "", "o": "a[0].b"}}),
    ("stage.logfmt", {"mapping": {"user": "", "dur": ""}}),
    ("stage.regex", {"expression": r"(?P<word>\w+)"}),
    ("stage.timestamp", {"source": "ts", "format": "RFC3339Nano"}),
    ("stage.timestamp", {"source": "word", "format": "Unix"}),
    ("stage.labels", {"values": {"level": "", "u": "user"}}),
    ("stage.structured_metadata", {"values": {"o": "", "word": ""}}),
    (
        "stage.match",
        {
            "selector": '{job="docker"} |~ "[0-9]"',
            "stages": [("stage.multiline", {"firstline": "^[a-z]", "max_lines": 3})],
        },
    ),
    ("stage.drop", {"source": "level", "value": "debug"}),
    ("stage.drop", {"longer_than": 40}),
    ("stage.output", {"source": "msg"}),
    ("stage.replace", {"expression": r"(\d+)", "replace": "<{{ .Value | ToUpper }}>"}),
    (
        "stage.template",
        {"source": "word", "template": "{{ .Value | ToUpper }}-{{.ts}}"},
    ),
    (
        "stage.metrics",
        {
            "metric.counter": [{"name": "n", "match_all": True, "action": "inc"}],
            "metric.gauge": [{"name": "g", "source": "word", "action": "add"}],
            "metric.histogram": [{"name": "h", "source": "ts", "buckets": [1, 2]}],
        },
    ),
    ("stage.pack", {"labels": ["level", "word"]}),
    ("stage.docker", {}),
]

log_lines = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda level, ts, msg: orjson_line(level=level, ts=ts, msg=msg),
        st.sampled_from(["info", "debug", "", "error"]),
        st.one_of(st.text(max_size=30), st.just("2026-11-27T10:00:00.5Z")),
        st.text(max_size=20),
    ),
    st.builds(
        lambda user, dur: f'user={user} dur="{dur}"',
        st.text(max_size=10),
        st.text(max_size=10),
    ),
)


def orjson_line(**fields: Any) -> str:
    import orjson

    return orjson.dumps(fields).decode()


@settings(max_examples=150, deadline=None)
@given(st.lists(log_lines, min_size=1, max_size=20), st.integers(0, 10))
def test_any_line_goes_through_every_stage_without_raising(
    lines: list[str], wait_s: int
) -> None:
    settled = Settled()
    pipeline = build_pipeline(EVERY_STAGE)
    out = pipeline.process(batch(*lines, delivery=Delivery(settled)), NOW)
    out += pipeline.flush_expired(NOW + wait_s * S)
    out += pipeline.flush_all(NOW + wait_s * S)
    for b in out:
        assert b.entries
        assert all(isinstance(e.line, str) for e in b.entries)
        b.settle()
    assert settled.calls == [True]


def test_stage_blocks_let_the_config_decoder_build_the_stage_list() -> None:
    config = pytest.importorskip("minilog.config")
    from minilog.process import STAGE_BLOCKS

    schema = config.Schema(
        attrs=[config.Attr("forward_to", "list(capsule)", required=True)],
        blocks=STAGE_BLOCKS,
    )
    block = _parse_process_block(PROCESS_CONFIG)
    args = config.decode_block(block, schema, config.Scope())
    names = [name for name, _ in args["stages"]]
    assert names[:4] == ["stage.json", "stage.labels", "stage.match", "stage.match"]
    assert [name for name, _ in args["stages"][3][1]["stages"]] == [
        "stage.static_labels",
        "stage.label_drop",
    ]
    registry = CollectorRegistry()
    out = build_pipeline(args["stages"], registry=registry).process(
        batch('{"level":"error","message":"boom","time":"2026-11-27T09:59:00Z"}'), NOW
    )
    assert [(b.labels, lines_of([b])) for b in out] == [
        ({"job": "docker", "level": "error", "severity": "high"}, ["boom"])
    ]


def test_numbers_convert_to_string_arguments_as_in_alloy() -> None:
    stages: Stages = [("stage.static_labels", {"values": {"port": 8080, "ratio": 0.5}})]
    assert only(run(stages, "x")).labels == {**LABELS, "port": "8080", "ratio": "0.5"}


def test_decode_stages_reads_metric_blocks() -> None:
    from minilog.config import Scope
    from minilog.process import decode_stages

    block = _parse_process_block(
        "\n".join(
            [
                'loki.process "p" {',
                "  stage.metrics {",
                "    metric.counter {",
                '      name = "lines_total"',
                "      match_all = true",
                '      action = "inc"',
                '      max_idle_duration = "24h"',
                "    }",
                "    metric.histogram {",
                '      name = "size"',
                '      source = "n"',
                "      buckets = [1, 10]",
                "    }",
                "  }",
                "}",
            ]
        )
    )
    specs = decode_stages(block.body, Scope())
    assert specs[0][0] == "stage.metrics"
    args = specs[0][1]
    assert args["metric.counter"][0]["max_idle_duration"] == 86400.0
    assert args["metric.histogram"][0]["buckets"] == [1, 10]
    registry = CollectorRegistry()
    build_pipeline(specs, registry=registry).process(batch("a", "b"), NOW)
    assert sample(registry, "loki_process_custom_lines_total", **LABELS) == 2
