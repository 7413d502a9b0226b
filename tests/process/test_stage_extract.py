"""Tests for ``minilog.process``: ``stage.json``, ``stage.logfmt``, ``stage.regex``
(values extracted from the line)."""

from __future__ import annotations

import pytest
from process_helpers import (
    ORDER,
    Stages,
    lines_of,
    output_of,
    run,
)

from minilog.errors import StageError
from minilog.process import build_pipeline

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


@pytest.mark.parametrize("expression", ["request-id", "a.", "a[", "length("])
def test_json_invalid_expression_is_a_stage_error(expression: str) -> None:
    """Alloy's jmespath refuses these (a dash outside quotes is arithmetic there)."""
    with pytest.raises(StageError) as info:
        build_pipeline([("stage.json", {"expressions": {"v": expression}})])
    assert info.value.stage_name == "stage.json"
    assert info.value.path == ("expressions", "v")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("a[*].b", '["x","y"]'),
        ("a | [0].b", "x"),
        ("length(a)", 2),
        ('"request-id"', "r1"),
        ("a[?b=='y'].b | [0]", "y"),
        ("to_number(n)", 5),
    ],
)
def test_json_full_jmespath_expressions(expression: str, expected: object) -> None:
    """stage.json runs any JMESPath expression (through the jmespath library)."""
    line = '{"a":[{"b":"x"},{"b":"y"}],"request-id":"r1","n":"5"}'
    stages: Stages = [
        ("stage.json", {"expressions": {"v": expression}}),
        ("stage.output", {"source": "v"}),
    ]
    assert lines_of(run(stages, line)) == [str(expected)]


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
