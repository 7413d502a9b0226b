"""Tests for ``minilog.process``: the stages that rewrite the line or its time
(``stage.timestamp``, ``output``, ``replace``, ``template``, ``pack``, ``docker``,
``decolorize``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from process_helpers import (
    NOW,
    S,
    Stages,
    batch,
    lines_of,
    ns,
    only,
    run,
)

from minilog.errors import StageError
from minilog.model import LogEntry
from minilog.process import build_pipeline

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


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ .a ", "unclosed action"),
        ("{{ Nope .Value }}", 'function "Nope" not defined'),
        ("{{ now }}", "date functions are not implemented"),
        ("{{ if .a }}x", "unexpected EOF"),
    ],
)
def test_template_refuses_what_go_refuses(template: str, message: str) -> None:
    """Go's parse errors, and sprig functions minilog does not implement, are config
    errors located at the ``template`` argument."""
    with pytest.raises(StageError, match=message) as info:
        build_pipeline([("stage.template", {"source": "a", "template": template})])
    assert info.value.path == ("template",)


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


def test_replace_refuses_a_template_go_refuses() -> None:
    with pytest.raises(StageError, match="failed to compile template") as info:
        build_pipeline([("stage.replace", {"expression": "(a)", "replace": "{{"})])
    assert info.value.path == ("replace",)


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
