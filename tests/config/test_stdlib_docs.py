"""Every example of Alloy v1.18's stdlib reference (docs/sources/reference/stdlib/*.md),
evaluated as documented, plus the behaviour of Alloy's source where the docs say less
(yaml.v3 decoding, argument conversion, error wording).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from minilog.config import Scope, Secret, evaluate, parse
from minilog.config.ast import Attribute
from minilog.errors import ConfigError


def ev(expr: str, scope: Scope | None = None) -> Any:
    stmt = parse(f"x = {expr}").body[0]
    assert isinstance(stmt, Attribute)
    return evaluate(stmt.value, scope or Scope())


def err(expr: str, scope: Scope | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        ev(expr, scope)
    (diag,) = info.value.diagnostics
    return f"{diag.line}:{diag.column}: {diag.message}"


FRUIT = (
    '[{"type" = "fruit", "name" = "apple"}, {"type" = "fruit", "name" = "banana"}, '
    '{"type" = "vegetable", "name" = "carrot"}, {"name" = "rock"}]'
)
APPLE = {"type": "fruit", "name": "apple"}
BANANA = {"type": "fruit", "name": "banana"}
CARROT = {"type": "vegetable", "name": "carrot"}

#: (expression, documented result), in the order of the reference pages.
DOC_EXAMPLES: list[tuple[str, Any]] = [
    # array.md
    ("array.concat([])", []),
    ("array.concat([1, 2], [3, 4])", [1, 2, 3, 4]),
    ("array.concat([[1, 2], [3, 4]], [[5, 6]])", [[1, 2], [3, 4], [5, 6]]),
    (
        'array.combine_maps([{"instance"="1.1.1.1", "team"="A"}], '
        '[{"instance"="1.1.1.1", "cluster"="prod"}], ["instance"])',
        [{"instance": "1.1.1.1", "team": "A", "cluster": "prod"}],
    ),
    (
        'array.combine_maps([{"instance"="1.1.1.1", "team"="A"}], '
        '[{"instance"="1.1.1.1", "team"="B"}], ["instance"])',
        [{"instance": "1.1.1.1", "team": "B"}],
    ),
    (
        'array.combine_maps([{"instance"="1.1.1.1", "team"="A"}, '
        '{"instance"="1.1.1.1", "team"="B"}], [{"instance"="1.1.1.1", '
        '"cluster"="prod"}, {"instance"="1.1.1.1", "cluster"="ops"}], ["instance"])',
        [
            {"instance": "1.1.1.1", "team": "A", "cluster": "prod"},
            {"instance": "1.1.1.1", "team": "A", "cluster": "ops"},
            {"instance": "1.1.1.1", "team": "B", "cluster": "prod"},
            {"instance": "1.1.1.1", "team": "B", "cluster": "ops"},
        ],
    ),
    (
        f'array.group_by({FRUIT}, "type", false)',
        [
            {"type": "fruit", "items": [APPLE, BANANA]},
            {"type": "vegetable", "items": [CARROT]},
            {"type": "", "items": [{"name": "rock"}]},
        ],
    ),
    (
        f'array.group_by({FRUIT}, "type", true)',
        [
            {"type": "fruit", "items": [APPLE, BANANA]},
            {"type": "vegetable", "items": [CARROT]},
        ],
    ),
    # coalesce.md
    ('coalesce("a", "b")', "a"),
    ('coalesce("", "b")', "b"),
    ('coalesce(sys.env("DOES_NOT_EXIST"), "c")', "c"),
    # encoding.md
    ('encoding.from_base64("dGFuZ2VyaW5l")', "tangerine"),
    (
        'encoding.from_URLbase64("c3RyaW5nMTIzIT8kKiYoKSctPUB-")',
        "string123!?$*&()'-=@~",
    ),
    ('encoding.to_base64("string123!?$*&()\'-=@~")', "c3RyaW5nMTIzIT8kKiYoKSctPUB+"),
    ('encoding.to_URLbase64("string123!?$*&()\'-=@~")', "c3RyaW5nMTIzIT8kKiYoKSctPUB-"),
    (
        'encoding.url_encode("string123!?$*&()\'-=@~")',
        "string123%21%3F%24%2A%26%28%29%27-%3D%40~",
    ),
    (
        'encoding.url_decode("string123%21%3F%24%2A%26%28%29%27-%3D%40~")',
        "string123!?$*&()'-=@~",
    ),
    (
        'encoding.to_json({"modules"={"http_2xx"={"prober"="http","timeout"="5s",'
        '"http"={"headers"={"Authorization"=sys.env("TEST_VAR")}}}}})',
        '{"modules":{"http_2xx":{"http":{"headers":{"Authorization":"Hello!"}},'
        '"prober":"http","timeout":"5s"}}}',
    ),
    ('encoding.from_json("15")', 15),
    ('encoding.from_json("[1, 2, 3]")', [1, 2, 3]),
    ('encoding.from_json("null")', None),
    ('encoding.from_json("{\\"key\\": \\"value\\"}")', {"key": "value"}),
    ('encoding.from_yaml("15")', 15),
    ('encoding.from_yaml("[1, 2, 3]")', [1, 2, 3]),
    ('encoding.from_yaml("null")', None),
    ('encoding.from_yaml("key: value")', {"key": "value"}),
    # file.md
    ("file.path_join()", ""),
    ('file.path_join("this/is", "a/path")', "this/is/a/path"),
    # json_path.md
    ('json_path("{\\"key\\": \\"value\\"}", ".key")', ["value"]),
    (
        'json_path("[{\\"name\\": \\"Department\\",\\"value\\": \\"IT\\"},'
        '{\\"name\\":\\"TestStatus\\",\\"value\\":\\"Pending\\"}]", '
        '"[?(@.name == \\"Department\\")].value")',
        ["IT"],
    ),
    ('json_path("{\\"key\\": \\"value\\"}", ".nonexists")', []),
    ('json_path("{\\"key\\": \\"value\\"}", ".key")[0]', "value"),
    # string.md
    ('string.format("Hello, %s!", "Ander")', "Hello, Ander!"),
    ('string.format("There are %d lights", 4)', "There are 4 lights"),
    ('string.join(["foo", "bar", "baz"], "-")', "foo-bar-baz"),
    ('string.join(["foo", "bar", "baz"], ", ")', "foo, bar, baz"),
    ('string.join(["foo"], ", ")', "foo"),
    ('string.replace("1 + 2 + 3", "+", "-")', "1 - 2 - 3"),
    ('string.split("foo,bar,baz", "," )', ["foo", "bar", "baz"]),
    ('string.split("foo", ",")', ["foo"]),
    ('string.split("", ",")', [""]),
    ('string.to_lower("HELLO")', "hello"),
    ('string.to_upper("hello")', "HELLO"),
    ('string.trim("?!hello?!", "!?")', "hello"),
    ('string.trim("foobar", "far")', "oob"),
    ('string.trim("   hello! world.!  ", "! ")', "hello! world."),
    ('string.trim_prefix("helloworld", "hello")', "world"),
    ('string.trim_suffix("helloworld", "world")', "hello"),
    ('string.trim_space("  hello\\n\\n")', "hello"),
    # sys.md
    ('sys.env("DOES_NOT_EXIST")', ""),
]


@pytest.mark.parametrize(("expr", "want"), DOC_EXAMPLES)
def test_documented_examples(
    expr: str, want: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VAR", "Hello!")
    monkeypatch.delenv("DOES_NOT_EXIST", raising=False)
    assert ev(expr) == want


def test_documented_secret_examples() -> None:
    scope = Scope({"sensitive_value": Secret("Hello, world!")})
    assert isinstance(ev("sensitive_value", scope), Secret)
    plain = ev("convert.nonsensitive(sensitive_value)", scope)
    assert plain == "Hello, world!" and type(plain) is str


def test_constants_are_the_documented_names() -> None:
    consts = ev("constants")
    assert consts["os"] == "linux"
    assert consts["arch"] in ("amd64", "arm64", "386")
    assert consts["version"].startswith("v")


#: Alloy converts each argument to the Go parameter's type: a number becomes its
#: text where a string is wanted (strconv.FormatFloat(f, 'f', -1, 64) for floats).
CONVERSIONS: list[tuple[str, Any]] = [
    ('join([0, 0, 1], ", ")', "0, 0, 1"),
    ('string.join([1.5, 1e21, -3], "|")', "1.5|1000000000000000000000|-3"),
    ("string.to_upper(12)", "12"),
    ('string.replace(1000, 0, "x")', "1xxx"),
    ('string.format("%d-%x-%X-%o-%b", 10, 255, 255, 8, 5)', "10-ff-FF-10-101"),
    ('string.format("%[2]s %[1]s", "a", "b")', "b a"),
    (
        'string.format("%q %t %5.2f|%-4d|", "a\\"b", true, 3.14159, 7)',
        '"a\\"b" true  3.14|7   |',
    ),
    ('string.format("%s")', "%!s(MISSING)"),
    ('string.format("%[3]s", "a")', "%!s(BADINDEX)"),
    ('string.to_upper("straße")', "STRAßE"),  # Go maps character by character
    ('string.trim_space("\\u001c x \\u00a0")', "\u001c x"),  # Go's unicode.IsSpace
    (
        'encoding.to_json({a = 1.0, b = 1e21, c = 1e-7, d = "<&>", e = null})',
        ('{"a":1,"b":1e+21,"c":1e-7,"d":"\\u003c\\u0026\\u003e","e":null}'),
    ),
    ('encoding.from_json("12345678901234567890")', 12345678901234567890.0),
    (
        "array.combine_maps([{a = 1, x = 1}, {a = 3}], [{a = 1, y = 2}, {a = 2}], "
        '["a"], true)',
        # Alloy appends a left object once per right object it does not match.
        [{"a": 1, "x": 1, "y": 2}, {"a": 1, "x": 1}, {"a": 3}, {"a": 3}],
    ),
    ('array.combine_maps([{a = 1}], [], ["a"], true)', []),
]


@pytest.mark.parametrize(("expr", "want"), CONVERSIONS)
def test_arguments_convert_as_in_alloy(expr: str, want: Any) -> None:
    assert ev(expr) == want


#: yaml.v3 into ``any``: YAML 1.2 booleans only, Go's integer syntax (1.1 octals
#: included), timestamps as text, ``<<`` merges, duplicate keys refused.
YAML_CASES: list[tuple[str, Any]] = [
    (
        "a: yes\nb: on\nc: No\nd: True\ne: FALSE",
        {
            "a": "yes",
            "b": "on",
            "c": "No",
            "d": True,
            "e": False,
        },
    ),
    (
        "a: 0o17\nb: 017\nc: 0x1F\nd: -0b11\ne: 1_000\nf: +5",
        {
            "a": 15,
            "b": 15,
            "c": 31,
            "d": -3,
            "e": 1000,
            "f": 5,
        },
    ),
    (
        "a: 08\nb: 1e3\nc: .5\nd: 1.\ne: 1:20",
        {
            "a": 8.0,
            "b": 1000.0,
            "c": 0.5,
            "d": 1.0,
            "e": "1:20",
        },
    ),
    (
        "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00",
        {
            "a": "2001-12-14",
            "b": "2001-12-14t21:59:43.10-05:00",
        },
    ),
    (
        'a: ~\nb: null\nc: ""\nd: "12"\ne: !!str 12\nf: !!float 3\ng: |\n  x\n',
        {
            "a": None,
            "b": None,
            "c": "",
            "d": "12",
            "e": "12",
            "f": 3.0,
            "g": "x\n",
        },
    ),
    (
        "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3",
        {
            "base": {"x": 1, "y": 2},
            "c": {"x": 1, "y": 3},
        },
    ),
    ("first: 1\n---\nsecond: 2", {"first": 1}),
    ("", None),
]


@pytest.mark.parametrize(("text", "want"), YAML_CASES)
def test_from_yaml_decodes_as_yaml_v3(text: str, want: Any) -> None:
    scope = Scope({"text": text})
    assert ev("encoding.from_yaml(text)", scope) == want


def test_from_yaml_special_floats_and_non_string_keys() -> None:
    got = ev('encoding.from_yaml("[.inf, -.Inf, .nan]")')
    assert got[0] == math.inf and got[1] == -math.inf and math.isnan(got[2])
    # A mapping with a key that is not a string is Go's map[any]any: a capsule.
    scope = Scope({"text": "1: a\nb: 2"})
    assert err("encoding.from_yaml(text).b", scope) == (
        '1:30: cannot access field "b" on a value of type capsule'
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2", 'line 2: mapping key "a" already defined at line 1'),
        ("- !!int abc", "line 1: cannot decode !!str `abc` as a !!int"),
        ("a: [1, 2", "yaml: line 1:"),
    ],
)
def test_from_yaml_errors(text: str, message: str) -> None:
    assert message in err("encoding.from_yaml(text)", Scope({"text": text}))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        # Alloy refuses anything but a map, in jsonEncode's own words.
        ("encoding.to_json(12)", "1:5: encoding.to_json jsonEncode only supports map"),
        (
            'encoding.to_json(["a"])',
            "1:5: encoding.to_json jsonEncode only supports map",
        ),
        ('string.join([0, true], ", ")', "1:21: true should be string, got bool"),
        ("array.concat([1], 2)", "1:23: 2 should be array, got number"),
        (
            "array.combine_maps([], [])",
            "1:5: combine_maps: expected 3 or 4 arguments, got 2",
        ),
        (
            "array.combine_maps([], [], [])",
            "1:32: [] combine_maps: merge conditions must not be empty",
        ),
        (
            'array.combine_maps([], [], ["a"], "yes")',
            '1:39: "yes" should be bool, got string',
        ),
        (
            'array.group_by([{a = 1}], "a", false)',
            "1:20: [{a = 1}] should be string, got number",
        ),
        ("array.group_by([], 1, false)", "1:24: 1 should be string, got number"),
        (
            'encoding.from_json("{\\"a\\" 1}")',
            ("1:5: encoding.from_json invalid character '1' after object key"),
        ),
        (
            'encoding.from_json("[1 2]")',
            ("1:5: encoding.from_json invalid character '2' after array element"),
        ),
        (
            'encoding.from_json("NaN")',
            (
                "1:5: encoding.from_json invalid character 'N' looking for "
                "beginning of value"
            ),
        ),
        (
            'encoding.to_json({a = encoding.from_json("1e400")})',
            ("1:5: encoding.to_json json: unsupported value: +Inf"),
        ),
        ("convert.nonsensitive(1)", "1:26: 1 should be capsule, got number"),
        ("sys.env()", "1:5: sys.env expected 1 args, got 0"),
        ("string.format()", "1:5: string.format expected at least 1 args, got 0"),
    ],
)
def test_errors_are_worded_and_placed_as_alloy_does(expr: str, message: str) -> None:
    assert err(expr) == message
