"""Tests for ``minilog.process``: Alloy's ``loki.process`` stages over batches."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from minilog.errors import MinilogError, StageError
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.process import STAGE_NAMES, Pipeline, build_pipeline

S = 1_000_000_000
NOW = int(datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC).timestamp()) * S
LABELS = {"job": "docker", "container": "shop"}

Stages = Sequence[tuple[str, Mapping[str, Any]]]


def ns(dt: datetime) -> int:
    """Unix nanoseconds of an aware datetime, computed independently of minilog."""
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * S + delta.microseconds * 1000


def batch(
    *lines: str,
    labels: Mapping[str, str] | None = None,
    ts: int = NOW,
    delivery: Delivery | None = None,
) -> StreamBatch:
    return StreamBatch(
        dict(LABELS if labels is None else labels),
        [LogEntry(ts + i, line) for i, line in enumerate(lines)],
        delivery,
    )


def run(
    stages: Stages,
    *lines: str,
    labels: Mapping[str, str] | None = None,
    now: int = NOW,
    registry: CollectorRegistry | None = None,
) -> list[StreamBatch]:
    return build_pipeline(stages, registry=registry).process(
        batch(*lines, labels=labels), now
    )


def only(out: list[StreamBatch]) -> StreamBatch:
    assert len(out) == 1, out
    return out[0]


def lines_of(out: list[StreamBatch]) -> list[str]:
    return [e.line for b in out for e in b.entries]


def output_of(stages: Stages, line: str, key: str = "v") -> str:
    """The line after ``stages`` plus ``stage.output`` of extracted ``key``."""
    return only(run([*stages, ("stage.output", {"source": key})], line)).entries[0].line


class Settled:
    """A delivery callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, ok: bool) -> None:
        self.calls.append(ok)


def dropped(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "loki_process_dropped_lines_total", {"reason": reason}
    )
    return 0.0 if value is None else value


ORDER = '{"level":"info","msg":"order processed","ts":"2026-11-27T10:00:00.123Z"}'


# -------------------------------------------------------------------------------- json


@pytest.mark.parametrize(
    ("expression", "line", "expected"),
    [
        pytest.param("msg", ORDER, "order processed", id="plain-key"),
        pytest.param("", '{"v":"same name"}', "same name", id="empty-means-key"),
        pytest.param(
            "ctx.user.id", '{"ctx":{"user":{"id":"u-1"}}}', "u-1", id="dotted"
        ),
        pytest.param(
            '"a.b"', '{"a.b":"dotted key","a":{"b":"no"}}', "dotted key", id="quoted"
        ),
        pytest.param('"request-id"', '{"request-id":"r-9"}', "r-9", id="quoted-hyphen"),
        pytest.param("tags[1]", '{"tags":["a","b","c"]}', "b", id="index"),
        pytest.param("tags[-1]", '{"tags":["a","b","c"]}', "c", id="negative-index"),
        pytest.param(
            "items[0].sku", '{"items":[{"sku":"X1"}]}', "X1", id="index-then-key"
        ),
        pytest.param("n", '{"n":125}', "125", id="int"),
        pytest.param("n", '{"n":0.25}', "0.25", id="float"),
        pytest.param("n", '{"n":1.0}', "1", id="float-integral-like-go"),
        pytest.param(
            "n", '{"n":1e21}', "1000000000000000000000", id="float-no-exponent"
        ),
        pytest.param("ok", '{"ok":true}', "true", id="bool"),
        pytest.param(
            "o",
            '{"o":{"b":2,"a":"<x>"}}',
            '{"a":"\\u003cx\\u003e","b":2}',
            id="object-as-go-json",
        ),
        pytest.param("l", '{"l":[1,"two"]}', '[1,"two"]', id="array-as-json"),
    ],
)
def test_json_expressions_extract_values(
    expression: str, line: str, expected: str
) -> None:
    stages: Stages = [("stage.json", {"expressions": {"v": expression}})]
    assert output_of(stages, line) == expected


@pytest.mark.parametrize(
    ("expression", "line"),
    [
        pytest.param("missing", ORDER, id="missing-key"),
        pytest.param("msg.deeper", ORDER, id="path-through-string"),
        pytest.param("tags[5]", '{"tags":["a"]}', id="index-out-of-range"),
        pytest.param("n", '{"n":null}', id="null"),
    ],
)
def test_json_expression_without_string_value_leaves_line(
    expression: str, line: str
) -> None:
    assert output_of([("stage.json", {"expressions": {"v": expression}})], line) == line


def test_json_reads_an_extracted_source() -> None:
    line = '{"log":"log message\\n","extra":"{\\"user\\":\\"alloy\\"}"}'
    stages: Stages = [
        ("stage.json", {"expressions": {"output": "log", "extra": ""}}),
        ("stage.json", {"source": "extra", "expressions": {"v": "user"}}),
    ]
    assert output_of(stages, line) == "alloy"


@pytest.mark.parametrize("drop_malformed", [True, False])
def test_json_drop_malformed(drop_malformed: bool) -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"level": ""}, "drop_malformed": drop_malformed})
    ]
    lines = [ORDER, "plain text", "[1, 2]", '"a string"', "null"]
    out = lines_of(run(stages, *lines))
    if drop_malformed:
        # null decodes into a Go map without error: it is not malformed.
        assert out == [ORDER, "null"]
    else:
        assert out == lines


@pytest.mark.parametrize(
    "expression", ["a[*]", "request-id", "a.", "a | b", "length(a)"]
)
def test_json_unsupported_expression_is_a_stage_error(expression: str) -> None:
    with pytest.raises(StageError) as info:
        build_pipeline([("stage.json", {"expressions": {"v": expression}})])
    assert info.value.stage_name == "stage.json"


def test_json_requires_expressions() -> None:
    with pytest.raises(StageError, match="expression"):
        build_pipeline([("stage.json", {"expressions": {}})])


# ------------------------------------------------------------------------------ logfmt

LOGFMT = (
    "time=2012-11-01T22:08:41+00:00 app=loki level=WARN duration=125 "
    'message="this is a log line" extra="user=example_name"'
)


@pytest.mark.parametrize(
    ("mapping", "line", "expected"),
    [
        pytest.param({"v": "app"}, LOGFMT, "loki", id="renamed"),
        pytest.param({"v": "message"}, LOGFMT, "this is a log line", id="quoted"),
        pytest.param(
            {"v": "q"}, 'q="say \\"hi\\"\\tnow"', 'say "hi"\tnow', id="escapes"
        ),
        pytest.param({"v": "flag"}, "a=1 flag b=2", "", id="key-without-value"),
        pytest.param({"v": "b"}, "a=1\nb=2", "2", id="several-records"),
        pytest.param(
            {"v": "caf\u00e9"}, "caf\u00e9=cr\u00e8me", "cr\u00e8me", id="utf8"
        ),
    ],
)
def test_logfmt_mapping(mapping: dict[str, str], line: str, expected: str) -> None:
    assert output_of([("stage.logfmt", {"mapping": mapping})], line) == expected


def test_logfmt_empty_mapping_value_uses_the_key_and_source_chains() -> None:
    stages: Stages = [
        ("stage.logfmt", {"mapping": {"extra": ""}}),
        ("stage.logfmt", {"mapping": {"v": "user"}, "source": "extra"}),
    ]
    assert output_of(stages, LOGFMT) == "example_name"


def test_logfmt_keeps_pairs_decoded_before_a_syntax_error() -> None:
    stages: Stages = [("stage.logfmt", {"mapping": {"v": "a", "w": "c"}})]
    line = 'a=1 b=x"y c=2'
    assert output_of(stages, line, "v") == "1"
    assert output_of(stages, line, "w") == line  # after the error: never extracted


def test_logfmt_regex_extracts_matching_keys() -> None:
    stages: Stages = [("stage.logfmt", {"regex": "^http_"})]
    line = "http_status=200 http_path=/cart user=ann"
    assert output_of(stages, line, "http_status") == "200"
    assert output_of(stages, line, "user") == line


def test_logfmt_requires_mapping_or_regex() -> None:
    with pytest.raises(StageError, match="mapping or regex"):
        build_pipeline([("stage.logfmt", {})])


# ------------------------------------------------------------------------------- regex

CRI = "2019-01-01T01:00:00.000000001Z stderr P i'm a log message!"
CRI_RE = (
    r"^(?s)(?P<time>\S+?) (?P<stream>stdout|stderr) (?P<flags>\S+?) (?P<content>.*)$"
)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("time", "2019-01-01T01:00:00.000000001Z"),
        ("stream", "stderr"),
        ("flags", "P"),
        ("content", "i'm a log message!"),
    ],
)
def test_regex_named_groups_are_extracted(key: str, expected: str) -> None:
    assert output_of([("stage.regex", {"expression": CRI_RE})], CRI, key) == expected


def test_regex_on_extracted_source() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"time": "timestamp"}}),
        ("stage.regex", {"expression": r"^(?P<v>\d+)", "source": "time"}),
    ]
    assert output_of(stages, '{"timestamp":"2022-01-01T01:00:00.000000001Z"}') == "2022"


def test_regex_unmatched_optional_group_is_empty_and_no_match_extracts_nothing() -> (
    None
):
    stages: Stages = [("stage.regex", {"expression": r"^(?P<a>x)(?P<v>y)?"})]
    assert output_of(stages, "x", "a") == "x"
    assert output_of(stages, "x", "v") == ""
    assert output_of(stages, "no match", "a") == "no match"


def test_regex_dot_does_not_match_newline_as_in_go() -> None:
    stages: Stages = [("stage.regex", {"expression": r"(?P<v>a.b)"})]
    assert output_of(stages, "a\nb") == "a\nb"
    assert output_of(stages, "xa-by") == "a-b"


def test_regex_group_names_that_are_not_python_identifiers() -> None:
    assert (
        output_of([("stage.regex", {"expression": r"(?P<1st>\w+)"})], "word", "1st")
        == "word"
    )


def test_regex_labels_from_groups() -> None:
    stages: Stages = [
        (
            "stage.regex",
            {
                "expression": r"^(?P<level>\w+) (?P<1bad>\d)?",
                "labels_from_groups": True,
            },
        )
    ]
    out = run(stages, "info 1 a", "error b", "-- no match")
    by_level = {b.labels.get("level"): lines_of([b]) for b in out}
    assert by_level == {
        "info": ["info 1 a"],
        "error": ["error b"],
        None: ["-- no match"],
    }
    assert all("1bad" not in b.labels for b in out)  # not a valid label name


@pytest.mark.parametrize("expression", ["(?<=a)b", "(a", r"(\w)\1", ""])
def test_regex_rejects_what_re2_rejects(expression: str) -> None:
    with pytest.raises(StageError) as info:
        build_pipeline([("stage.regex", {"expression": expression})])
    assert info.value.stage_name == "stage.regex"


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
    with pytest.raises(StageError, match="invalid label name"):
        build_pipeline([(stage, {"values": {"bad-name": "x"}})])


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
        pytest.param("stage.label_keep", {}, {}, id="keep-nothing"),
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
    with pytest.raises(StageError, match="exactly one"):
        build_pipeline([("stage.tenant", {"value": "a", "label": "b"})])


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


# --------------------------------------------------------------------------- timestamp

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("fmt", "value", "expected", "location"),
    [
        pytest.param(
            "RFC3339",
            "2026-11-27T10:00:00.123Z",
            datetime(2026, 11, 27, 10, 0, 0, 123000, UTC),
            None,
            id="rfc3339-fraction",
        ),
        pytest.param(
            "RFC3339",
            "2026-11-27T10:00:00+02:00",
            datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC),
            None,
            id="rfc3339-offset",
        ),
        pytest.param(
            "RFC3339Nano",
            "2026-11-27T10:00:00.5-07:00",
            datetime(2026, 11, 27, 17, 0, 0, 500000, UTC),
            None,
            id="rfc3339nano",
        ),
        pytest.param(
            "2006-01-02 15:04:05.000",
            "2026-11-27 10:00:00.250",
            datetime(2026, 11, 27, 10, 0, 0, 250000, UTC),
            None,
            id="custom-ms",
        ),
        pytest.param(
            "2006-01-02 15:04:05.000",
            "2026-07-01 12:00:00.000",
            datetime(2026, 7, 1, 12, 0, tzinfo=BERLIN),
            "Europe/Berlin",
            id="custom-in-location-dst",
        ),
        pytest.param(
            "2006-01-02T15:04:05,000-07:00",
            "2024-12-20T09:14:58,381+02:00",
            datetime(2024, 12, 20, 7, 14, 58, 381000, UTC),
            None,
            id="comma-fraction",
        ),
        pytest.param(
            "02/Jan/2006:15:04:05 -0700",
            "27/Nov/2026:10:00:00 +0100",
            datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
            None,
            id="nginx",
        ),
        pytest.param(
            "Mon Jan _2 15:04:05 2006",
            "Fri Nov  6 10:00:00 2026",
            datetime(2026, 11, 6, 10, 0, tzinfo=UTC),
            None,
            id="ansic-layout",
        ),
        pytest.param(
            "RFC1123Z",
            "Fri, 27 Nov 2026 10:00:00 -0700",
            datetime(2026, 11, 27, 17, 0, tzinfo=UTC),
            None,
            id="rfc1123z",
        ),
        pytest.param(
            "RFC822",
            "27 Nov 26 10:00 UTC",
            datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
            None,
            id="rfc822-two-digit-year",
        ),
        pytest.param(
            "2006-01-02 3:04:05 PM",
            "2026-11-27 3:04:05 PM",
            datetime(2026, 11, 27, 15, 4, 5, tzinfo=UTC),
            None,
            id="twelve-hour",
        ),
        pytest.param(
            "Jan _2 15:04:05",
            "Nov  7 08:30:00",
            datetime(2026, 11, 7, 8, 30, tzinfo=UTC),
            None,
            id="yearless-takes-current-year",
        ),
        pytest.param(
            "Unix",
            "1562708916",
            datetime(2019, 7, 9, 21, 48, 36, tzinfo=UTC),
            None,
            id="unix",
        ),
        pytest.param(
            "UnixMs",
            "1562708916414",
            datetime(2019, 7, 9, 21, 48, 36, 414000, UTC),
            None,
            id="unix-ms",
        ),
        pytest.param(
            "UnixUs",
            "1562708916414123",
            datetime(2019, 7, 9, 21, 48, 36, 414123, UTC),
            None,
            id="unix-us",
        ),
    ],
)
def test_timestamp_formats(
    fmt: str, value: str, expected: datetime, location: str | None
) -> None:
    args: dict[str, Any] = {"source": "t", "format": fmt}
    if location:
        args["location"] = location
    stages: Stages = [
        ("stage.regex", {"expression": "^(?P<t>.*)$"}),
        ("stage.timestamp", args),
    ]
    assert only(run(stages, value)).entries[0].timestamp_ns == ns(expected)


@pytest.mark.parametrize(
    ("fmt", "value", "extra_ns"),
    [("Unix", "1562708916.000000123", 123), ("UnixNs", "1562708916000000123", 123)],
)
def test_timestamp_unix_nanoseconds(fmt: str, value: str, extra_ns: int) -> None:
    stages: Stages = [
        ("stage.regex", {"expression": "^(?P<t>.*)$"}),
        ("stage.timestamp", {"source": "t", "format": fmt}),
    ]
    expected = ns(datetime(2019, 7, 9, 21, 48, 36, tzinfo=UTC)) + extra_ns
    assert only(run(stages, value)).entries[0].timestamp_ns == expected


def test_timestamp_yearless_in_january_for_a_december_line_is_last_year() -> None:
    stages: Stages = [
        ("stage.regex", {"expression": "^(?P<t>.*)$"}),
        ("stage.timestamp", {"source": "t", "format": "Jan _2 15:04:05"}),
    ]
    now = ns(datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC))
    out = only(run(stages, "Dec 31 23:59:59", now=now))
    assert out.entries[0].timestamp_ns == ns(
        datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    )


def test_timestamp_fallback_formats() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"ts": ""}}),
        (
            "stage.timestamp",
            {
                "source": "ts",
                "format": "RFC3339",
                "fallback_formats": ["UnixMs", "2006-01-02"],
            },
        ),
    ]
    out = only(
        run(
            stages,
            '{"ts":"2026-11-27T10:00:00Z"}',
            '{"ts":1562708916414}',
            '{"ts":"2026-01-05"}',
        )
    )
    assert [e.timestamp_ns for e in out.entries] == [
        ns(datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ns(datetime(2019, 7, 9, 21, 48, 36, 414000, UTC)),
        ns(datetime(2026, 1, 5, tzinfo=UTC)),
    ]


@pytest.mark.parametrize(
    ("action", "expected_offsets"),
    [
        # fudge: a failure gets the stream's last parsed time + 1 ns (if known)
        ("fudge", [None, 0, 1, 2, 10, 11]),
        ("skip", [None, 0, None, None, 10, None]),
    ],
)
def test_timestamp_action_on_failure(
    action: str, expected_offsets: list[int | None]
) -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"ts": ""}}),
        (
            "stage.timestamp",
            {"source": "ts", "format": "RFC3339Nano", "action_on_failure": action},
        ),
    ]
    base = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    lines = [
        '{"no":"ts"}',
        '{"ts":"2026-11-27T09:00:00Z"}',
        '{"ts":"garbage"}',
        '{"no":"ts"}',
        '{"ts":"2026-11-27T09:00:00.00000001Z"}',
        '{"ts":"2026-02-30T00:00:00Z"}',
    ]
    source = batch(*lines)
    out = only(build_pipeline(stages).process(source, NOW))
    got = [e.timestamp_ns for e in out.entries]
    expected = [
        source.entries[i].timestamp_ns if off is None else ns(base) + off
        for i, off in enumerate(expected_offsets)
    ]
    assert got == expected


def test_timestamp_fudge_remembers_the_last_time_across_batches_per_stream() -> None:
    pipeline = build_pipeline(
        [
            ("stage.regex", {"expression": "^(?P<ts>\\S+)"}),
            ("stage.timestamp", {"source": "ts", "format": "RFC3339"}),
        ]
    )
    first = pipeline.process(batch("2026-11-27T09:00:00Z ok"), NOW)
    assert only(first).entries[0].timestamp_ns == ns(
        datetime(2026, 11, 27, 9, tzinfo=UTC)
    )
    second = pipeline.process(batch("- no time"), NOW)
    assert (
        only(second).entries[0].timestamp_ns
        == ns(datetime(2026, 11, 27, 9, tzinfo=UTC)) + 1
    )
    other = pipeline.process(batch("- no time", labels={"job": "other"}), NOW)
    assert only(other).entries[0].timestamp_ns == NOW


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"format": "RFC3339"}, "source"),
        ({"source": "t"}, "format"),
        ({"source": "t", "format": "RFC3339", "location": "Mars/Olympus"}, "location"),
        (
            {"source": "t", "format": "RFC3339", "action_on_failure": "retry"},
            "action on failure",
        ),
    ],
)
def test_timestamp_validation(args: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.timestamp", args)])


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.booleans(),
)
def test_timestamp_rfc3339nano_round_trips(
    moment: datetime, offset_minutes: int, zulu: bool
) -> None:
    """Any wall time written with any offset parses back to the same instant."""
    utc = moment.replace(tzinfo=UTC)
    if zulu and offset_minutes == 0:
        zone = "Z"
    else:
        sign = "+" if offset_minutes >= 0 else "-"
        zone = "{}{:02d}:{:02d}".format(sign, *divmod(abs(offset_minutes), 60))
    wall = utc + timedelta(minutes=offset_minutes)
    text = wall.strftime("%Y-%m-%dT%H:%M:%S.%f") + zone
    stages: Stages = [
        ("stage.regex", {"expression": "^(?P<t>.*)$"}),
        ("stage.timestamp", {"source": "t", "format": "RFC3339Nano"}),
    ]
    assert only(run(stages, text)).entries[0].timestamp_ns == ns(utc)


# ------------------------------------------------------------------------------ output


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"user":"John Doe","message":"hello, world!"}', "hello, world!"),
        ('{"message":42}', "42"),
        ('{"message":null}', '{"message":null}'),
        ('{"other":"x"}', '{"other":"x"}'),
    ],
)
def test_output_replaces_the_line(line: str, expected: str) -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"message": ""}}),
        ("stage.output", {"source": "message"}),
    ]
    assert lines_of(run(stages, line)) == [expected]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("hello_world", "hello_world", id="literal-new-key"),
        pytest.param(
            "{{ ToLower .Value }}_some_suffix", "shop_some_suffix", id="value"
        ),
        pytest.param(
            "{{ .level }} for app {{ .app | ToUpper }}",
            "warn for app SHOP",
            id="fields",
        ),
        pytest.param(
            "{{ .app }}: {{ .Entry }}",
            "Shop: " + '{"level":"warn","app":"Shop"}',
            id="entry",
        ),
        pytest.param("{{ TrimSpace .pad }}|", "x|", id="trim"),
        pytest.param("{{ .nope }}", "<no value>", id="missing-prints-no-value"),
    ],
)
def test_template_sets_an_extracted_value(template: str, expected: str) -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"level": "", "app": "", "pad": ""}}),
        ("stage.template", {"source": "app", "template": template}),
        ("stage.output", {"source": "app"}),
    ]
    line = '{"level":"warn","app":"Shop"}'
    if "pad" in template:
        line = '{"level":"warn","app":"Shop","pad":"  x "}'
    assert lines_of(run(stages, line)) == [expected]


def test_template_empty_result_deletes_the_key_and_failures_change_nothing() -> None:
    deleted: Stages = [
        ("stage.template", {"source": "container", "template": ""}),
        ("stage.labels", {"values": {"copy": "container"}}),
    ]
    assert "copy" not in only(run(deleted, "x")).labels  # the seeded label is hidden
    failed: Stages = [
        ("stage.template", {"source": "container", "template": "{{ ToUpper .nope }}"}),
        ("stage.labels", {"values": {"copy": "container"}}),
    ]
    assert only(run(failed, "x")).labels["copy"] == "shop"


def test_template_rejects_what_minilog_cannot_run() -> None:
    with pytest.raises(StageError, match="unsupported template action"):
        build_pipeline(
            [
                (
                    "stage.template",
                    {"source": "a", "template": '{{ Hash .Value "salt" }}'},
                )
            ]
        )


def test_output_requires_source() -> None:
    with pytest.raises(StageError, match="source"):
        build_pipeline([("stage.output", {})])


def test_decolorize_strips_ansi_colours() -> None:
    line = "[2022-11-04 22:17:57.811] \x1b[0;32mhttp\x1b[0m: GET /_health (0 ms) 204"
    out = run([("stage.decolorize", {})], line, "plain")
    assert lines_of(out) == [
        "[2022-11-04 22:17:57.811] http: GET /_health (0 ms) 204",
        "plain",
    ]


@pytest.mark.parametrize(
    ("args", "line", "expected"),
    [
        pytest.param(
            {"expression": r"password (\S+)", "replace": "*****"},
            "login ok for ann with password xyz!",
            "login ok for ann with password *****",
            id="redact",
        ),
        pytest.param(
            {"expression": r"(\d{2}\.\d{2}\.\d{2}\.\d{2}) - (\S+)", "replace": "x"},
            "11.11.11.11 - frank 12.12.12.12 - ann",
            "x - x x - x",
            id="every-group-of-every-match",
        ),
        pytest.param(
            {
                "expression": r"^(?P<ip>\S+) (?P<user>\S+)",
                "replace": "{{ .Value | ToUpper }}",
            },
            "host-a frank rest",
            "HOST-A FRANK rest",
            id="template-value",
        ),
        pytest.param(
            {"expression": r"user=(\S+)", "replace": "{{ .level }}:{{ToLower .Value}}"},
            '{"level":"warn"} user=ANN',
            '{"level":"warn"} user=warn:ann',
            id="template-extracted-field",
        ),
        pytest.param(
            {"expression": r"token=(\w+)"},
            "a token=abc b token=def",
            "a token= b token=",
            id="empty-replace-removes",
        ),
        pytest.param(
            {"expression": r"token=\w+", "replace": "x"},
            "a token=abc",
            "a token=abc",
            id="no-group-no-change",
        ),
        pytest.param(
            {"expression": r"((a)b)", "replace": "X"},
            "ab ab",
            "X X",
            id="nested-group-replaced-once",
        ),
    ],
)
def test_replace(args: dict[str, Any], line: str, expected: str) -> None:
    stages: Stages = [("stage.regex", {"expression": '"level":"(?P<level>\\w+)"'})]
    stages.append(("stage.replace", args))
    assert lines_of(run(stages, line)) == [expected]


def test_replace_on_source_and_named_groups() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"msg": ""}}),
        (
            "stage.replace",
            {
                "expression": r"POST (?P<url>\S+) ",
                "source": "msg",
                "replace": "redacted",
            },
        ),
        ("stage.output", {"source": "msg"}),
    ]
    line = '{"msg":"1.1.1.1 - \\"POST /loki/api/push HTTP/1.1\\" 200"}'
    assert lines_of(run(stages, line)) == ['1.1.1.1 - "POST redacted HTTP/1.1" 200']
    url_stages: Stages = [*stages[:2], ("stage.output", {"source": "url"})]
    assert lines_of(run(url_stages, line)) == ["redacted"]


@pytest.mark.parametrize(
    "replace",
    ['{{ if eq .Value "200" }}ok{{ end }}', '{{ .Value | Hash "salt" }}', "{{"],
)
def test_replace_rejects_unsupported_templates(replace: str) -> None:
    with pytest.raises(StageError, match="replace"):
        build_pipeline([("stage.replace", {"expression": "(a)", "replace": replace})])


def test_pack_embeds_values_and_removes_packed_labels() -> None:
    stages: Stages = [
        ("stage.json", {"expressions": {"user_id": "user.id"}}),
        ("stage.pack", {"labels": ["user_id", "container", "absent"]}),
    ]
    line = '{"user":{"id":"f8<fas0r"},"msg":"something went wrong"}'
    out = only(run(stages, line, now=NOW + 5 * S))
    assert out.labels == {"job": "docker"}
    entry = out.entries[0]
    assert entry.timestamp_ns == NOW + 5 * S  # ingest_timestamp defaults to true
    assert entry.line == (
        '{"container":"shop","user_id":"f8\\u003cfas0r",'
        '"_entry":"{\\"user\\":{\\"id\\":\\"f8\\u003cfas0r\\"},'
        '\\"msg\\":\\"something went wrong\\"}"}'
    )
    unpacked = json.loads(entry.line)
    assert unpacked["_entry"] == line
    assert unpacked["user_id"] == "f8<fas0r"


def test_pack_can_keep_the_entry_timestamp() -> None:
    stages: Stages = [("stage.pack", {"labels": ["job"], "ingest_timestamp": False})]
    out = only(run(stages, "plain"))
    assert out.entries[0] == LogEntry(NOW, '{"job":"docker","_entry":"plain"}')
    assert out.labels == {"container": "shop"}


def test_docker_stage_unwraps_json_file_records() -> None:
    lines = [
        '{"log":"log message\\n","stream":"stderr",'
        '"time":"2019-04-30T02:12:41.8443515Z"}',
        '{"log":"out","stream":"stdout","time":"not a time"}',
        "not json",
    ]
    source = batch(*lines)
    out = build_pipeline([("stage.docker", {})]).process(source, NOW)
    by_stream = {b.labels.get("stream"): b.entries for b in out}
    expected_ts = ns(datetime(2019, 4, 30, 2, 12, 41, 844351, UTC)) + 500
    assert by_stream == {
        "stderr": [LogEntry(expected_ts, "log message\n")],
        "stdout": [LogEntry(source.entries[1].timestamp_ns, "out")],
        None: [source.entries[2]],
    }


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
        ({"rate": 5, "burst": 10}, "drop = true"),
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


# ---------------------------------------------------------------------------- metrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_metrics_counters_per_label_set() -> None:
    registry = CollectorRegistry()
    pipeline = build_pipeline(
        [
            (
                "stage.metrics",
                {
                    "metric.counter": [
                        {"name": "log_lines_total", "match_all": True, "action": "inc"},
                        {
                            "name": "log_bytes_total",
                            "prefix": "my_",
                            "match_all": True,
                            "count_entry_bytes": True,
                            "action": "add",
                        },
                    ]
                },
            )
        ],
        registry=registry,
    )
    out = pipeline.process(batch("ab", "\u00e9"), NOW)
    pipeline.process(batch("xyz", labels={"job": "other", "__tenant_id__": "t"}), NOW)
    assert lines_of(out) == ["ab", "\u00e9"]  # entries pass unchanged
    name = "loki_process_custom_log_lines_total"
    assert sample(registry, name, **LABELS) == 2
    assert sample(registry, name, job="other") == 1  # internal labels left out
    assert sample(registry, "my_log_bytes_total", **LABELS) == 4  # bytes, not chars


def test_metrics_from_extracted_values() -> None:
    registry = CollectorRegistry()
    stages: Stages = [
        ("stage.regex", {"expression": r"order_status=(?P<order_status>\w+)"}),
        ("stage.regex", {"expression": r"retries=(?P<retries>\S+)"}),
        ("stage.regex", {"expression": r"took=(?P<response_time>\S+)"}),
        (
            "stage.metrics",
            {
                "metric.counter": [
                    {
                        "name": "successful_orders_total",
                        "source": "order_status",
                        "value": "success",
                        "action": "inc",
                    }
                ],
                "metric.gauge": [{"name": "retries", "action": "add"}],
                "metric.histogram": [
                    {
                        "name": "response_time_seconds",
                        "source": "response_time",
                        "buckets": [0.01, 0.001, 1],
                    },
                ],
            },
        ),
    ]
    lines = [
        "order_status=success retries=2 took=0.5ms",
        "order_status=fail retries=1.5 took=0.2",
        "order_status=success took=2s",
        "retries=x took=nonsense",
    ]
    run(stages, *lines, registry=registry)
    p = "loki_process_custom_"
    assert sample(registry, p + "successful_orders_total", **LABELS) == 2
    assert sample(registry, p + "retries", **LABELS) == 3.5
    hist = p + "response_time_seconds"
    assert sample(registry, hist + "_count", **LABELS) == 3
    assert sample(registry, hist + "_sum", **LABELS) == pytest.approx(2.2005)
    assert sample(registry, hist + "_bucket", le="0.001", **LABELS) == 1
    assert sample(registry, hist + "_bucket", le="1.0", **LABELS) == 2
    assert sample(registry, hist + "_bucket", le="+Inf", **LABELS) == 3


def test_metrics_gauge_actions_and_idle_series_expire() -> None:
    registry = CollectorRegistry()
    pipeline = build_pipeline(
        [
            ("stage.regex", {"expression": r"(?P<v>\d+)"}),
            (
                "stage.metrics",
                {
                    "metric.gauge": [
                        {"name": "last", "source": "v", "action": "set"},
                        {"name": "up_down", "source": "v", "action": "dec"},
                    ]
                },
            ),
        ],
        registry=registry,
    )
    pipeline.process(batch("7", "9"), NOW)
    assert sample(registry, "loki_process_custom_last", **LABELS) == 9
    assert sample(registry, "loki_process_custom_up_down", **LABELS) == -2
    pipeline.process(batch("1", labels={"job": "b"}), NOW + 299 * S)
    assert sample(registry, "loki_process_custom_last", **LABELS) == 9
    pipeline.process(batch("1", labels={"job": "b"}), NOW + 301 * S)
    assert sample(registry, "loki_process_custom_last", **LABELS) is None  # 5m idle
    assert sample(registry, "loki_process_custom_last", job="b") == 1


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ({"metric.counter": [{"name": "x", "action": "set"}]}, "action"),
        (
            {
                "metric.counter": [
                    {"name": "x", "action": "inc", "match_all": True, "value": "a"}
                ]
            },
            "match_all and value",
        ),
        (
            {
                "metric.counter": [
                    {"name": "x", "action": "inc", "count_entry_bytes": True}
                ]
            },
            "count_entry_bytes",
        ),
        ({"metric.histogram": [{"name": "x"}]}, "buckets"),
        (
            {
                "metric.gauge": [
                    {"name": "x", "action": "inc", "max_idle_duration": "500ms"}
                ]
            },
            "less than 1s",
        ),
        (
            {"metric.gauge": [{"name": "bad-name", "action": "inc"}]},
            "invalid metric name",
        ),
        (
            {
                "metric.gauge": [
                    {"name": "x", "action": "inc"},
                    {"name": "x", "action": "inc"},
                ]
            },
            "Duplicated",
        ),
        ({"metric.summary": [{"name": "x"}]}, "unsupported argument"),
    ],
)
def test_metrics_validation(blocks: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.metrics", blocks)])


# --------------------------------------------------------------------------- multiline

FIRSTLINE = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"
TRACE = [
    "2026-11-27 10:00:00 ERROR order failed",
    "java.lang.IllegalStateException: no stock",
    "\tat shop.Cart.checkout(Cart.java:42)",
    "\tat shop.Api.handle(Api.java:7)",
    "2026-11-27 10:00:01 INFO retrying",
]


def multiline(**args: Any) -> Pipeline:
    return build_pipeline([("stage.multiline", {"firstline": FIRSTLINE, **args})])


def test_multiline_merges_a_stack_trace_and_holds_the_last_block() -> None:
    pipeline = multiline()
    source = batch(*TRACE)
    out = only(pipeline.process(source, NOW))
    assert out.entries == [
        LogEntry(source.entries[0].timestamp_ns, "\n".join(TRACE[:4]))
    ]
    assert pipeline.next_deadline_ns() == NOW + 3 * S
    assert pipeline.flush_expired(NOW + 2 * S) == []
    held = only(pipeline.flush_expired(NOW + 3 * S))
    assert held.entries == [LogEntry(source.entries[4].timestamp_ns, TRACE[4])]
    assert held.labels == LABELS
    assert pipeline.next_deadline_ns() is None
    assert pipeline.flush_expired(NOW + 10 * S) == []


def test_multiline_block_spans_batches_and_the_wait_restarts_with_each_line() -> None:
    pipeline = multiline(max_wait_time=5.0)
    assert pipeline.process(batch(*TRACE[:2]), NOW) == []
    assert pipeline.process(batch(*TRACE[2:4], ts=NOW + S), NOW + 4 * S) == []
    assert pipeline.flush_expired(NOW + 8 * S) == []  # only 4 s since the last line
    out = only(pipeline.flush_expired(NOW + 9 * S))
    assert lines_of([out]) == ["\n".join(TRACE[:4])]
    assert out.entries[0].timestamp_ns == NOW


def test_multiline_stale_block_is_sent_before_a_late_continuation_line() -> None:
    pipeline = multiline()
    assert pipeline.process(batch(TRACE[0]), NOW) == []
    out = pipeline.process(batch("late continuation", ts=NOW + 10 * S), NOW + 10 * S)
    assert lines_of(out) == [TRACE[0]]
    # Alloy keeps the stream's start line: the continuation becomes a block of its own
    held = only(pipeline.flush_all(NOW + 10 * S))
    assert held.entries[0].line == "late continuation"


def test_multiline_passes_lines_through_until_the_first_start_line() -> None:
    pipeline = multiline()
    out = pipeline.process(batch("preamble 1", "preamble 2", *TRACE[:2]), NOW)
    assert lines_of(out) == ["preamble 1", "preamble 2"]
    assert lines_of(pipeline.flush_all(NOW)) == ["\n".join(TRACE[:2])]


def test_multiline_max_lines_starts_a_new_block() -> None:
    pipeline = multiline(max_lines=2)
    out = pipeline.process(batch(*TRACE[:4]), NOW)
    assert lines_of(out) == ["\n".join(TRACE[:2]), "\n".join(TRACE[2:4])]
    assert pipeline.flush_all(NOW) == []


def test_multiline_keeps_streams_apart() -> None:
    pipeline = multiline()
    assert pipeline.process(batch(TRACE[0], labels={"c": "a"}), NOW) == []
    assert pipeline.process(batch(TRACE[0], labels={"c": "b"}), NOW) == []
    assert pipeline.process(batch("  a detail", labels={"c": "a"}), NOW) == []
    out = pipeline.flush_all(NOW)
    assert {b.labels["c"]: lines_of([b]) for b in out} == {
        "a": [TRACE[0] + "\n  a detail"],
        "b": [TRACE[0]],
    }


def test_multiline_inside_match_flushes_through_later_stages() -> None:
    pipeline = build_pipeline(
        [
            (
                "stage.match",
                {
                    "selector": '{job="docker"}',
                    "stages": [("stage.multiline", {"firstline": FIRSTLINE})],
                },
            ),
            ("stage.static_labels", {"values": {"merged": "yes"}}),
        ]
    )
    assert pipeline.holds_entries
    assert pipeline.next_deadline_ns() is None
    assert pipeline.process(batch(*TRACE[:2]), NOW) == []
    assert pipeline.next_deadline_ns() == NOW + 3 * S
    out = only(pipeline.flush_expired(NOW + 3 * S))
    assert out.labels == {**LABELS, "merged": "yes"}
    assert lines_of([out]) == ["\n".join(TRACE[:2])]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "firstline"),
        ({"firstline": "("}, "invalid firstline"),
        ({"firstline": "x", "max_wait_time": 0}, "max_wait_time"),
        ({"firstline": "x", "max_wait_time": "-1s"}, "max_wait_time"),
        ({"firstline": "x", "max_lines": 0}, "max_lines"),
    ],
)
def test_multiline_validation(args: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.multiline", args)])


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
    assert [line for line, _ in found] == [2, 3, 4, 7, 11]
    assert "expressions" in found[0][1]
    assert "unsupported stage" in found[1][1]
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
