"""Label text: Go strconv.Quote, canonical form, name validation, label-set parser."""

from __future__ import annotations

import json
import string
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loki_helpers import tenant_headers

from minilog._go import go_quote
from minilog.errors import LabelError
from minilog.labels import (
    format_labels,
    format_pairs,
    is_valid_label_name,
    parse_label_pairs,
    parse_label_set,
    parse_labels,
    validate_label_name,
)

DATA = Path(__file__).parent / "data" / "loki-push"


def test_format_labels_sorts_quotes_and_drops_empty_values() -> None:
    labels = {"stream": "stdout", "app": 'we"b', "empty": "", "nl": "a\nb"}
    assert format_labels(labels) == r'{app="we\"b", nl="a\nb", stream="stdout"}'


def test_format_labels_of_nothing_is_braces() -> None:
    assert format_labels({}) == "{}"
    assert format_labels({"a": ""}) == "{}"


def test_format_pairs_keeps_order_and_empty_values() -> None:
    assert format_pairs([("b", "1"), ("a", "")]) == '{b="1", a=""}'


VALID_NAMES = ["a", "_", "job", "__tenant_id__", "A_1", "x9"]
INVALID_NAMES = ["", "1a", "service.name", "a-b", "é", "a b", "a:b"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_legacy_names_are_valid(name: str) -> None:
    assert is_valid_label_name(name)
    validate_label_name(name)


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_non_legacy_names_are_refused_with_the_name_in_the_message(name: str) -> None:
    assert not is_valid_label_name(name)
    with pytest.raises(LabelError, match="invalid label name") as info:
        validate_label_name(name)
    assert go_quote(name) in str(info.value)


@pytest.mark.parametrize("name", VALID_NAMES + INVALID_NAMES)
async def test_a_real_loki_accepts_exactly_the_names_minilog_accepts(
    loki_base: str, name: str
) -> None:
    # JSON keys go into Loki's label text unquoted, as a client's label names would.
    body = orjson.dumps(
        {
            "streams": [
                {
                    "stream": {name: "v", "minilog_test": "label-names"},
                    "values": [[str(time.time_ns()), "x"]],
                }
            ]
        }
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            loki_base + "/loki/api/v1/push",
            data=body,
            headers={"Content-Type": "application/json", **tenant_headers()},
        ) as response,
    ):
        text = await response.text()
    if is_valid_label_name(name):
        assert (response.status, text) == (204, "")
    else:
        assert response.status == 400
        assert text.startswith("couldn't parse labels: "), text


def test_parses_the_golden_vector_label_strings() -> None:
    vectors = json.loads((DATA / "vectors.json").read_text())
    escaped = next(v for v in vectors if v["name"] == "escaped_labels")
    text = escaped["request"]["streams"][0]["labels"]
    assert parse_labels(text) == {
        "path": "C:\\temp\\x",
        "quote": 'say "hi"',
        "nl": "a\nb",
    }
    assert format_labels(parse_labels(text)) == (
        r'{nl="a\nb", path="C:\\temp\\x", quote="say \"hi\""}'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ("  { }  ", {}),
        ('{a="1",}', {"a": "1"}),
        ("{a='1', b=`raw\\n`}", {"a": "1", "b": "raw\\n"}),
        ('{a = "1" ,\n b="2"}', {"a": "1", "b": "2"}),
        ('{a="", b="2"}', {"b": "2"}),
        ('{a="\\x41\\101\\u00e9\\U0001F600"}', {"a": "AAé😀"}),
        ('{a="\\xc3\\xa9"}', {"a": "é"}),
        ("{a='it\\'s'}", {"a": "it's"}),
        ('{"service.name"="x"}', {"service.name": "x"}),
        ('up{job="x"}', {"__name__": "up", "job": "x"}),
        ('{a="1"} # a comment', {"a": "1"}),
    ],
)
def test_parse_labels_accepts_the_label_set_grammar(
    text: str, expected: dict[str, str]
) -> None:
    assert parse_labels(text) == expected


def test_parse_label_pairs_keeps_duplicates_in_order() -> None:
    assert parse_label_pairs('{b="1", a="2", b="3"}') == [
        ("b", "1"),
        ("a", "2"),
        ("b", "3"),
    ]


def test_parse_labels_refuses_duplicate_names() -> None:
    with pytest.raises(LabelError, match="duplicate label name"):
        parse_labels('{a="1", a="2"}')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{foo.bar="x"}', "1:5: parse error: unexpected character inside braces: '.'"),
        ("{a}", '1:3: parse error: unexpected "}" in label set, expected "="'),
        (
            "{a=b}",
            '1:4: parse error: unexpected identifier "b" in label set, expected string',
        ),
        (
            '{a="1" b="2"}',
            "1:8: parse error: unexpected identifier "
            '"b" in label set, expected "," or "}"',
        ),
        ('{a="1"', "1:7: parse error: unexpected end of input inside braces"),
        ('{a="1\n"}', "1:4: parse error: unterminated quoted string"),
        ('{a="\\/"}', "1:4: parse error: unknown escape sequence U+002F '/'"),
        ('{a="\\q"}', "1:4: parse error: unknown escape sequence U+0071 'q'"),
        (
            '{a="\\xZZ"}',
            "1:4: parse error: illegal character U+005A 'Z' in escape sequence",
        ),
        (
            '{a="\\ud800"}',
            "1:4: parse error: escape sequence is an invalid Unicode code point",
        ),
        (
            '{a="\\777"}',
            "1:4: parse error: escape sequence is an invalid Unicode code point",
        ),
        ("{a='\\\"'}", "1:4: parse error: unknown escape sequence U+0022 '\"'"),
        ("{a=`x}", "1:4: parse error: unterminated raw string"),
        ('{a!="1"}', '1:3: parse error: unexpected <op:!=> in label set, expected "="'),
        (
            "{=}",
            '1:2: parse error: unexpected "=" in label set, expected identifier or "}"',
        ),
        ('{a="1"}}', "1:8: parse error: unexpected right brace '}'"),
        ('{{a="1"}', "1:2: parse error: unexpected left brace '{'"),
        (
            '{a="1",\nb.c="2"}',
            "2:2: parse error: unexpected character inside braces: '.'",
        ),
        ('{é="1"}', "1:2: parse error: unexpected character inside braces: 'é'"),
        (
            '{a="é",b.c="2"}',
            "1:10: parse error: unexpected character inside braces: '.'",
        ),
        ("", "1:1: parse error: unexpected end of input"),
    ],
)
def test_parse_errors_read_like_prometheus(text: str, message: str) -> None:
    with pytest.raises(LabelError) as info:
        parse_labels(text)
    assert str(info.value) == message


def test_invalid_utf8_inside_a_value_is_refused() -> None:
    text = b'{a="\xff"}'.decode("utf-8", "surrogateescape")
    with pytest.raises(LabelError, match="invalid UTF-8 rune"):
        parse_labels(text)


_names = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_letters + "_"),
    st.text(string.ascii_letters + string.digits + "_", max_size=12),
)
_values = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names, _values, max_size=6))
def test_format_then_parse_round_trips(labels: dict[str, str]) -> None:
    assert parse_labels(format_labels(labels)) == {k: v for k, v in labels.items() if v}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=30))
def test_quote_then_parse_round_trips_raw_bytes(raw: bytes) -> None:
    value = raw.decode("utf-8", "surrogateescape")
    parsed = parse_label_pairs("{a=" + go_quote(value) + "}")
    assert parsed[0][1].encode("utf-8", "surrogateescape") == raw


_pieces = st.sampled_from(
    [
        "{",
        "}",
        ",",
        "=",
        " ",
        "\n",
        "a",
        "b_1",
        '"x"',
        '""',
        '"y z"',
        "'q'",
        "`r`",
        '"\\n"',
        "#",
        ".",
        "!=",
        '"\udcff"',
        "é",
        "9",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_pieces, max_size=12).map("".join))
def test_fast_path_and_full_parser_agree(text: str) -> None:
    """The regex shortcut accepts exactly what the parser accepts, with equal pairs."""
    try:
        expected: object = parse_label_set(text)
    except LabelError as exc:
        expected = str(exc)
    try:
        got: object = parse_label_pairs(text)
    except LabelError as exc:
        got = str(exc)
    assert got == expected


@pytest.mark.parametrize(
    "text", ['{a="1", b="2"}', '{ a = "1" ,\n b="2", }', "{}", '{a=""}']
)
def test_common_label_sets_agree_with_the_parser(text: str) -> None:
    assert parse_label_pairs(text) == parse_label_set(text)
