"""Tests for ``minilog.process``: ``stage.drop``, ``sampling``, ``limit`` and
``match`` (what is dropped or routed)."""

from __future__ import annotations

from typing import Any

import pytest
from process_helpers import (
    LABELS,
    NOW,
    S,
    Stages,
    batch,
    dropped,
    lines_of,
    only,
    run,
)
from prometheus_client import CollectorRegistry

from minilog.errors import StageError
from minilog.model import LogEntry, StreamBatch
from minilog.process import build_pipeline

# -------------------------------------------------------------------------------- drop

DROP_LINES = [
    '{"level":"debug","app":"cart","msg":"cache hit"}',
    '{"level":"info","app":"cart","msg":"order processed"}',
    '{"level":"error","app":"example","msg":"payment failed"}',
    '{"level":null,"msg":"no app"}',
]


@pytest.mark.parametrize(
    ("args", "kept"),
    [
        pytest.param({"expression": ".*debug.*"}, [1, 2, 3], id="expression-on-line"),
        pytest.param(
            {"source": "level", "value": "debug"}, [1, 2, 3], id="source-value"
        ),
        pytest.param(
            {"source": "level", "expression": "^(info|error)$"},
            [0, 3],
            id="source-expression",
        ),
        pytest.param({"source": "app"}, [3], id="source-exists"),
        pytest.param({"source": "level"}, [], id="source-exists-even-null"),
        pytest.param(
            {"source": "level,app", "value": "error;example"},
            [0, 1, 3],
            id="sources-joined",
        ),
        pytest.param(
            {"source": "level,app", "separator": "/", "expression": "^info/cart$"},
            [0, 2, 3],
            id="separator",
        ),
        pytest.param(
            {"source": "level", "expression": "x"},
            [0, 1, 2, 3],
            id="null-value-never-drops",
        ),
        pytest.param({"longer_than": 48}, [0, 3], id="longer-than-is-strict"),
        pytest.param(
            {"expression": "cart", "longer_than": "48B"},
            [0, 2, 3],
            id="conditions-are-anded",
        ),
    ],
)
def test_drop(args: dict[str, Any], kept: list[int]) -> None:
    registry = CollectorRegistry()
    stages: Stages = [
        ("stage.json", {"expressions": {"level": ""}}),
        # a regex that does not match extracts nothing (json would set a null)
        ("stage.regex", {"expression": '"app":"(?P<app>\\w+)"'}),
        ("stage.drop", args),
    ]
    out = run(stages, *DROP_LINES, registry=registry)
    assert lines_of(out) == [DROP_LINES[i] for i in kept]
    assert dropped(registry, "drop_stage") == len(DROP_LINES) - len(kept)


def test_drop_longer_than_counts_utf8_bytes_like_go() -> None:
    stages: Stages = [
        ("stage.drop", {"longer_than": "1KB", "drop_counter_reason": "too long"})
    ]
    registry = CollectorRegistry()
    ascii_1024 = "a" * 1024
    utf8_over = "\u00e9" * 513  # 513 characters, 1026 bytes
    out = run(stages, ascii_1024, utf8_over, "a" * 1025, registry=registry)
    assert lines_of(out) == [ascii_1024]
    assert dropped(registry, "too long") == 2


def test_drop_older_than_uses_the_injected_clock() -> None:
    pipeline = build_pipeline([("stage.drop", {"older_than": "1h"})])
    entries = [LogEntry(NOW - 2 * 3600 * S, "old"), LogEntry(NOW - 60 * S, "fresh")]
    out = pipeline.process(StreamBatch(dict(LABELS), entries), NOW)
    assert lines_of(out) == ["fresh"]
    later = pipeline.process(StreamBatch(dict(LABELS), entries), NOW + 3600 * S)
    assert later == []


def test_drop_older_than_accepts_seconds_from_the_config_decoder() -> None:
    pipeline = build_pipeline([("stage.drop", {"older_than": 86400.0})])
    entries = [LogEntry(NOW - 86401 * S, "old"), LogEntry(NOW - 86399 * S, "new")]
    assert lines_of(pipeline.process(StreamBatch({}, entries), NOW)) == ["new"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "at least one"),
        ({"drop_counter_reason": "x"}, "at least one"),
        ({"source": "a", "value": "b", "expression": "c"}, "cannot both"),
        ({"value": "b", "expression": "c"}, "cannot both"),
        ({"value": "b", "longer_than": 5}, "must contain `source`"),
        ({"longer_than": "lots"}, "invalid size"),
        ({"older_than": "soon"}, "invalid duration"),
        ({"expression": "(?=x)"}, "invalid expression"),
        ({"source": "a", "colour": "red"}, "unsupported argument"),
    ],
)
def test_drop_validation(args: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.drop", args)])


@pytest.mark.parametrize(
    ("rate", "low", "high"), [(0.0, 0, 0), (1.0, 2000, 2000), (0.5, 800, 1200)]
)
def test_sampling_keeps_about_rate_of_the_lines(
    rate: float, low: int, high: int
) -> None:
    registry = CollectorRegistry()
    stages: Stages = [
        ("stage.sampling", {"rate": rate, "drop_counter_reason": "sampled"})
    ]
    kept = len(
        lines_of(run(stages, *(f"line {i}" for i in range(2000)), registry=registry))
    )
    # 0.5 of 2000 falls outside 800..1200 with a probability below 1e-18.
    assert low <= kept <= high
    assert dropped(registry, "sampled") == 2000 - kept


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_sampling_rate_must_be_a_probability(rate: float) -> None:
    with pytest.raises(StageError, match="rate"):
        build_pipeline([("stage.sampling", {"rate": rate})])


def test_limit_drops_beyond_the_token_bucket() -> None:
    registry = CollectorRegistry()
    pipeline = build_pipeline(
        [("stage.limit", {"rate": 5, "burst": 10, "drop": True})], registry=registry
    )
    first = pipeline.process(batch(*(f"a{i}" for i in range(15))), NOW)
    assert lines_of(first) == [f"a{i}" for i in range(10)]  # the bucket starts full
    again = pipeline.process(batch("b0", "b1"), NOW)
    assert again == []
    later = pipeline.process(batch(*(f"c{i}" for i in range(5))), NOW + S)
    assert lines_of(later) == [f"c{i}" for i in range(5)]  # 5 tokens a second
    full = pipeline.process(batch(*(f"d{i}" for i in range(20))), NOW + 100 * S)
    assert len(lines_of(full)) == 10  # refilled to the burst, not beyond
    assert dropped(registry, "ratelimit_drop_stage") == 5 + 2 + 10


def test_limit_by_label_has_one_bucket_per_value() -> None:
    registry = CollectorRegistry()
    pipeline = build_pipeline(
        [("stage.limit", {"rate": 1, "burst": 1, "drop": True, "by_label_name": "ns"})],
        registry=registry,
    )
    a = pipeline.process(batch("a1", "a2", labels={"ns": "a"}), NOW)
    b = pipeline.process(batch("b1", "b2", labels={"ns": "b"}), NOW)
    other = pipeline.process(batch("x1", "x2", labels={"job": "x"}), NOW)
    assert lines_of(a + b + other) == ["a1", "b1", "x1", "x2"]
    by_label = registry.get_sample_value(
        "loki_process_dropped_lines_by_label_total",
        {"label_name": "ns", "label_value": "a"},
    )
    assert by_label == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"rate": 5, "burst": 10, "by_label_name": "ns"}, "drop must be true"),
        ({"rate": 0, "burst": 10, "drop": True}, "rate or burst"),
        ({"rate": 5, "burst": 0, "drop": True}, "rate or burst"),
    ],
)
def test_limit_validation(args: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.limit", args)])


# ------------------------------------------------------------------------------- match

MATCH_LINES = [
    '{"time":"2023-01-18T17:08:41+00:00","app":"example1","level":"WARN",'
    '"message":"app1 log line"}',
    '{"time":"2023-01-18T17:08:42+00:00","app":"example2","level":"ERROR",'
    '"message":"example noisy error"}',
    '{"time":"2023-01-18T17:08:43+00:00","app":"example2","level":"INFO",'
    '"message":"all good"}',
]


def test_match_alloy_documentation_example() -> None:
    registry = CollectorRegistry()
    stages: Stages = [
        ("stage.json", {"expressions": {"appname": "app"}}),
        ("stage.labels", {"values": {"applbl": "appname"}}),
        (
            "stage.match",
            {
                "selector": '{applbl="example1"}',
                "stages": [("stage.json", {"expressions": {"msg": "message"}})],
            },
        ),
        (
            "stage.match",
            {
                "selector": '{applbl="qux"}',
                "stages": [("stage.json", {"expressions": {"msg": "msg"}})],
            },
        ),
        (
            "stage.match",
            {
                "selector": '{applbl="example2"} |~ ".*noisy error.*"',
                "action": "drop",
                "drop_counter_reason": "discard_noisy_errors",
            },
        ),
        ("stage.output", {"source": "msg"}),
    ]
    out = run(stages, *MATCH_LINES, registry=registry)
    by_app = {b.labels["applbl"]: lines_of([b]) for b in out}
    assert by_app == {"example1": ["app1 log line"], "example2": [MATCH_LINES[2]]}
    assert dropped(registry, "discard_noisy_errors") == 1


@pytest.mark.parametrize(
    ("selector", "dropped_lines"),
    [
        pytest.param(
            '{job="docker"}',
            ["GET /health 200", "POST /cart 500 error", "debug: x"],
            id="labels-only",
        ),
        pytest.param('{job="other"}', [], id="labels-mismatch"),
        pytest.param(
            '{job="docker", missing=""}',
            ["GET /health 200", "POST /cart 500 error", "debug: x"],
            id="absent-label-is-empty",
        ),
        pytest.param(
            '{job=~"dock.*"} |= "error"', ["POST /cart 500 error"], id="contains"
        ),
        pytest.param(
            '{job!="x"} != "error"', ["GET /health 200", "debug: x"], id="not-contains"
        ),
        pytest.param(
            '{job="docker"} |~ "(GET|POST) /\\\\w+ 2\\\\d\\\\d"',
            ["GET /health 200"],
            id="regex",
        ),
        pytest.param(
            '{job="docker"} !~ "^debug"',
            ["GET /health 200", "POST /cart 500 error"],
            id="not-regex",
        ),
        pytest.param(
            '{job="docker"} |= "health" or "cart"',
            ["GET /health 200", "POST /cart 500 error"],
            id="or",
        ),
        pytest.param(
            '{job="docker"} |= "/" != "500"', ["GET /health 200"], id="chained"
        ),
        pytest.param('{job=~"dock"}', [], id="label-regex-is-anchored"),
        pytest.param('{container!~"sh.*"}', [], id="negative-label-regex"),
        pytest.param(
            "{job=`docker`} |= `error`", ["POST /cart 500 error"], id="backticks"
        ),
    ],
)
def test_match_selectors_and_line_filters(
    selector: str, dropped_lines: list[str]
) -> None:
    lines = ["GET /health 200", "POST /cart 500 error", "debug: x"]
    out = run([("stage.match", {"selector": selector, "action": "drop"})], *lines)
    assert lines_of(out) == [line for line in lines if line not in dropped_lines]


def test_match_keep_runs_nested_stages_only_on_matching_lines_in_order() -> None:
    stages: Stages = [
        (
            "stage.match",
            {
                "selector": '{job="docker"} |= "error"',
                "pipeline_name": "errors",
                "stages": [("stage.static_labels", {"values": {"severity": "high"}})],
            },
        ),
        ("stage.label_drop", {"values": ["severity"]}),
    ]
    lines = ["ok 1", "error 2", "ok 3", "error 4"]
    out = only(run(stages, *lines))
    # both branches end in the same stream again: merged back in timestamp order
    assert lines_of([out]) == lines


def test_match_nested_pipeline_sees_current_labels_in_extracted_map() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"job": "j"}}),
        ("stage.static_labels", {"values": {"job": "relabelled"}}),
        (
            "stage.match",
            {
                "selector": '{job="relabelled"}',
                "stages": [("stage.output", {"source": "job"})],
            },
        ),
    ]
    assert lines_of(run(stages, '{"j":"from json"}')) == ["relabelled"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"stages": [("stage.output", {"source": "x"})]}, "selector"),
        ({"selector": '{a="b"}'}, "at least one additional stage"),
        (
            {
                "selector": '{a="b"}',
                "action": "drop",
                "stages": [("stage.output", {"source": "x"})],
            },
            "cannot contain",
        ),
        ({"selector": '{a="b"}', "action": "skip"}, "'keep' or 'drop'"),
        ({"selector": '{a="b"', "action": "drop"}, "invalid selector"),
        ({"selector": "{}", "action": "drop"}, "at least one label matcher"),
        ({"selector": '{a="b"} | json', "action": "drop"}, "line filters"),
        ({"selector": '{a=~"("}', "action": "drop"}, "invalid regex"),
        ({"selector": '{a="b"}', "stages": [("stage.nope", {})]}, "unsupported stage"),
    ],
)
def test_match_validation(args: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.match", args)])
