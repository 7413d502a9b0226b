"""Evaluation: values, operators, access, calls, the stdlib, references and toposort."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from minilog._go import go_quote
from minilog.config import (
    STDLIB_NAMES,
    ConfigError,
    Reference,
    Scope,
    Secret,
    evaluate,
    parse,
    references,
    toposort,
)
from minilog.config import ast as A
from minilog.config.stdlib import build_stdlib, go_format


def ev(src: str, scope: Scope | None = None) -> Any:
    stmt = parse(f"x = {src}\n", "e.alloy").body[0]
    assert isinstance(stmt, A.Attribute)
    return evaluate(stmt.value, scope or Scope())


def err(src: str, scope: Scope | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        ev(src, scope)
    (diag,) = info.value.diagnostics
    return f"{diag.line}:{diag.column}: {diag.message}"


def test_literals_become_python_values() -> None:
    assert ev('[1, 1.5, "s", true, null, { a = 1, "b c" = [] }]') == [
        1,
        1.5,
        "s",
        True,
        None,
        {"a": 1, "b c": []},
    ]


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3),
        ("-7 / 2", -3),
        ("7.0 / 2", 3.5),
        ("7 % 3", 1),
        ("-7 % 3", -1),
        ("7.5 % 2", 1.5),
        ("2 ^ 3 ^ 2", 512),
        ("2.0 ^ -1", 0.5),
        ("2 ^ -1", 2),  # Alloy's intPow quirk
        ("0 ^ 0", 1),
        ("1 + 0.5", 1.5),
        ("-(3)", -3),
        ('"a" + "b"', "ab"),
        ("1 == 1.0", True),
        ('[1, {a = "x"}] == [1, {a = "x"}]', True),
        ("[1] == [1, 2]", False),
        ('1 == "1"', False),
        ("true == 1", False),
        ("null == null", True),
        ('"a" < "b"', True),
        ("2 >= 2.5", False),
        ("!false && true", True),
        ("false || true", True),
        ("1 != 2", True),
    ],
)
def test_operators(src: str, expected: Any) -> None:
    got = ev(src)
    assert got == expected
    assert type(got) is type(expected)


def test_logical_operators_evaluate_both_sides_like_alloy() -> None:
    assert "does not exist" in err("false && missing.thing")
    assert err("true || 1") == "1:13: operator || needs bool operands, got number"


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ('1 + "a"', "1:7: operator + cannot be applied to number and string"),
        ('1 < "a"', "1:7: cannot compare number and string with <"),
        ("1 / 0", "1:7: division by zero"),
        ("!1", "1:5: operator ! needs a bool, got number"),
        ('-"a"', "1:5: operator - needs a number, got string"),
        ("1 && true", "1:5: operator && needs bool operands, got number"),
        ("2 ^ 5000", "1:7: operator ^: exponent too large"),
    ],
)
def test_operator_errors_are_positioned(src: str, message: str) -> None:
    assert err(src) == message


def test_field_access_and_indexing() -> None:
    scope = Scope({"obj": {"a": {"b": [10, 20]}}})
    assert ev("obj.a.b[1]", scope) == 20
    assert ev("obj.a.b[1.9]", scope) == 20  # Alloy truncates the index
    assert ev('obj["a"]["b"][0]', scope) == 10
    assert ev('obj["missing"]', scope) is None
    assert ev("{a = 1, a = 2}.a") == 2  # the last of repeated keys wins
    assert err("obj.missing", scope) == '1:9: field "missing" does not exist'
    assert err("obj.a.b[2]", scope) == (
        "1:13: index 2 is out of range of array with length 2"
    )
    assert err('obj.a.b["k"]', scope) == (
        "1:13: array index must be a number, got string"
    )
    assert err("obj.a[0]", scope) == "1:11: object key must be a string, got number"
    assert err("obj.a.b.c", scope) == (
        '1:13: cannot access field "c" on a value of type array'
    )
    assert err("1[0]", scope) == "1:6: cannot index a value of type number"


def test_component_exports_resolve_by_dotted_id() -> None:
    receiver = object()
    scope = Scope(
        components={
            "discovery.docker.c": {"targets": [{"__address__": "a"}]},
            "loki.write.default": {"receiver": receiver},
        }
    )
    assert ev('discovery.docker.c.targets[0]["__address__"]', scope) == "a"
    assert ev("[loki.write.default.receiver]", scope)[0] is receiver


def test_missing_component_names_the_whole_reference() -> None:
    scope = Scope(components={"discovery.docker.c": {"targets": []}})
    assert err("discovery.docker.x.targets", scope) == (
        '1:5: component "discovery.docker.x.targets" does not exist or is out of scope'
    )
    assert err("loki.write.w.receiver", scope) == (
        '1:5: component "loki.write.w.receiver" does not exist or is out of scope'
    )
    assert err("discovery.docker.c.nope", scope) == '1:24: field "nope" does not exist'
    assert (
        err("nothing", scope)
        == '1:5: identifier "nothing" does not exist or is out of scope'
    )
    assert err("string.nope(1)", scope) == (
        '1:5: "string.nope" does not exist in the standard library'
    )


def test_component_exports_can_be_replaced_in_place() -> None:
    scope = Scope(components={"loki.write.a": {"receiver": 1}})
    scope.set_component("loki.write.b", {"receiver": 2})
    assert ev("[loki.write.a.receiver, loki.write.b.receiver]", scope) == [1, 2]
    scope.set_component("loki.write.a", {"receiver": 3})
    assert ev("loki.write.a.receiver", scope) == 3


def test_components_do_not_leak_into_the_shared_stdlib() -> None:
    Scope(components={"string.custom.x": {"v": 1}})
    assert err("string.custom.x.v", Scope()) == (
        '1:5: "string.custom" does not exist in the standard library'
    )


def test_capsules_pass_through_untouched() -> None:
    class Receiver:
        pass

    r = Receiver()
    assert ev("[r, r][1]", Scope({"r": r})) is r
    assert ev("r == r", Scope({"r": r})) is True


def test_calls_and_their_errors() -> None:
    scope = Scope({"twice": lambda v: v * 2})
    assert ev("twice(21)", scope) == 42
    # Alloy's wording and places: a call's own errors after the function's text, at
    # its start; an argument's at the argument (the element inside it, if literal).
    assert err("twice(1, 2)", scope) == "1:5: twice expected 1 args, got 2"
    assert err("string.join(1)") == "1:5: string.join expected 2 args, got 1"
    assert err('string.join(1, ",")') == "1:17: 1 should be array, got number"
    assert err('string.join(["a", true], ",")') == (
        "1:23: true should be string, got bool"
    )
    assert err('encoding.from_json("{")') == (
        "1:5: encoding.from_json unexpected end of JSON input"
    )
    assert err('"s"(1)') == '1:5: "s" should be function, got string'


def test_stdlib_strings() -> None:
    assert ev('string.join(["a", "b"], "-")') == "a-b"
    assert ev('join(["a"], ",")') == "a"
    assert ev('string.split("a,b,,c", ",")') == ["a", "b", "", "c"]
    assert ev('split("ab", "")') == ["a", "b"]
    assert ev('string.replace("aXbX", "X", "-")') == "a-b-"
    assert ev('string.to_lower("AbC") + to_upper("x")') == "abcX"
    assert ev('string.trim("xxhixx", "x")') == "hi"
    assert ev('trim("  hi ", "")') == "  hi "
    assert ev('string.trim_prefix("prefix-x", "prefix-")') == "x"
    assert ev('string.trim_suffix("x.log", ".log")') == "x"
    assert ev('string.trim_space("\\t hi \\n")') == "hi"
    assert ev('trim_space(" a ")') == "a"


def test_stdlib_format_follows_go_verbs() -> None:
    assert ev('string.format("%s=%d %v %q %f %%", "k", 42, true, "a\\"b", 1.5)') == (
        'k=42 true "a\\"b" 1.500000 %'
    )
    assert ev('format("%5d|%-3s|%.2f", 7, "a", 3.14159)') == "    7|a  |3.14"
    assert go_format("%d") == "%!d(MISSING)"
    assert go_format("%d", "x") == "%!d(string=x)"
    # Alloy hands a number to Sprintf as a Go int.
    assert go_format("%s", 5) == "%!s(int=5)"
    assert go_format("x", 1) == "x%!(EXTRA int=1)"
    assert go_format("%v %v %v", [1, "a"], {"b": 2, "a": None}, 1e6) == (
        "[1 a] map[a:<nil> b:2] 1e+06"
    )
    assert go_quote("tab\there\x01é") == '"tab\\there\\x01é"'


def test_stdlib_encoding() -> None:
    assert ev('encoding.from_json("{\\"a\\": [1, 2.5, null]}")') == {
        "a": [1, 2.5, None]
    }
    assert ev('json_decode("[true]")') == [True]
    assert ev('encoding.to_json({b = 1, a = "<x>"})') == '{"a":"\\u003cx\\u003e","b":1}'
    encoded = base64.b64encode(b"hello").decode()
    assert ev(f'encoding.from_base64("{encoded}")') == "hello"
    assert ev(f'base64_decode("{encoded}")') == "hello"
    assert ev('encoding.to_base64("hello")') == encoded
    assert ev('encoding.to_URLbase64("hi>???")') == "aGk-Pz8_"
    assert ev('encoding.from_URLbase64("aGk-Pz8_")') == "hi>???"
    assert "illegal base64" in err('encoding.from_URLbase64("aGk+Pz8/")')
    assert ev('encoding.url_encode("a b&c/d~")') == "a+b%26c%2Fd~"
    assert ev('encoding.url_decode("a+b%26c")') == "a b&c"
    assert err('encoding.url_decode("%zz")') == (
        '1:5: encoding.url_decode invalid URL escape "%zz"'
    )
    assert err('encoding.from_base64("***")') == (
        "1:5: encoding.from_base64 illegal base64 data at input byte 0"
    )


def test_stdlib_yaml_when_installed() -> None:
    pytest.importorskip("yaml")
    assert ev('encoding.from_yaml("a: [1, x]")') == {"a": [1, "x"]}
    assert ev('yaml_decode("- 1")') == [1]


def test_stdlib_misc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINILOG_TEST_VAR", "v1")
    monkeypatch.delenv("MINILOG_UNSET_VAR", raising=False)
    assert ev('sys.env("MINILOG_TEST_VAR")') == "v1"
    assert ev('env("MINILOG_UNSET_VAR")') == ""
    assert ev("array.concat([1], [], [2, 3])") == [1, 2, 3]
    assert ev("concat([1], [2])") == [1, 2]
    assert ev('coalesce("", null, [], {}, 0, false, "x", "y")') == "x"
    assert ev('coalesce("", 0)') == 0
    assert ev('file.path_join("/a/", "b", "../c", "")') == "/a/c"
    assert ev('file.path_join("", "")') == ""
    consts = ev("constants")
    assert set(consts) == {"hostname", "os", "arch", "version"}
    assert isinstance(consts["hostname"], str) and consts["hostname"]


def test_stdlib_json_path_subset() -> None:
    doc = '{"store": {"book": [{"a": 1, "p": 5}, {"a": 2, "p": 15}], "bike": {"p": 7}}}'
    scope = Scope({"doc": doc})
    assert ev('json_path("{\\"key\\": \\"value\\"}", ".key")') == ["value"]
    assert ev('json_path(doc, ".missing")', scope) == []
    assert ev('json_path(doc, "$.store.book[*].a")', scope) == [1, 2]
    assert ev('json_path(doc, "$..p")', scope) == [5, 15, 7]
    assert ev('json_path(doc, "$.store.book[-1].a")', scope) == [2]
    assert ev('json_path(doc, "$.store.book[0:1].p")', scope) == [5]
    assert ev("json_path(doc, \"$['store']['bike']\")", scope) == [{"p": 7}]
    assert ev('json_path(doc, "$.store.book[?(@.p > 10)].a")', scope) == [2]
    assert ev('json_path(doc, "$.store.book[?(@.a == 1)].p")', scope) == [5]
    assert "unsupported JSONPath" in err(
        'json_path(doc, "$.store[?(@.a =~ 1)]")', scope
    )


def test_stdlib_combine_maps_joins_on_keys() -> None:
    scope = Scope({"left": [{"a": 1, "x": 1}, {"a": 3}]})
    got = ev('array.combine_maps(left, [{a = 1, y = 2}, {a = 2}], ["a"])', scope)
    assert got == [{"a": 1, "x": 1, "y": 2}]
    assert "must not be empty" in err("array.combine_maps([], [], [])")


def test_secrets_stay_hidden_and_unwrap_with_nonsensitive() -> None:
    scope = Scope({"token": Secret("hunter2")})
    combined = ev('token + "!"', scope)
    assert isinstance(combined, Secret)
    assert "hunter2" not in repr(combined)
    assert isinstance(ev('"Bearer " + token', scope), Secret)
    plain = ev("convert.nonsensitive(token)", scope)
    assert plain == "hunter2" and type(plain) is str
    assert type(ev("nonsensitive(token)", scope)) is str
    formatted = ev('string.format("Bearer %s", token)', scope)
    assert formatted == "Bearer hunter2" and isinstance(formatted, Secret)
    assert err('string.join([token], ",")', scope) == (
        "1:18: token secrets may not be converted into strings"
    )
    assert "secrets may not be converted" in err("string.to_upper(token)", scope)
    # Alloy would write the secret's text; minilog refuses, at the secret.
    assert err("encoding.to_json({a = [token]})", scope) == (
        "1:28: token secrets may not be converted into strings"
    )


def test_stdlib_names_constant_matches_the_stdlib() -> None:
    assert frozenset(build_stdlib()) == STDLIB_NAMES


def test_references_give_the_leading_dotted_chain() -> None:
    file = parse(
        'a "x" {\n'
        "\ttargets = discovery.docker.c.targets[0].labels\n"
        '\tf = string.format("%s", loki.write.w.receiver)\n'
        "\tl = [local.file.f.content[obj.k], { k = v }]\n"
        "}\n",
        "r.alloy",
    )
    refs = references(file)
    assert [r.path for r in refs] == [
        ("discovery", "docker", "c", "targets"),
        ("string", "format"),
        ("loki", "write", "w", "receiver"),
        ("local", "file", "f", "content"),
        ("obj", "k"),
        ("v",),
    ]
    assert refs[0].pos == A.Pos(2, 12, 19, "r.alloy")
    assert [r.dotted for r in refs if r.path[0] not in STDLIB_NAMES][
        1
    ] == "loki.write.w.receiver"


def _ref(dotted: str, line: int = 1) -> Reference:
    return Reference(tuple(dotted.split(".")), A.Pos(line, 1, 0, "t.alloy"))


def test_toposort_orders_dependencies_first_and_keeps_input_order_for_ties() -> None:
    nodes = {
        "loki.source.docker.s": [
            _ref("discovery.relabel.r.output"),
            _ref("loki.write.w.receiver"),
        ],
        "discovery.relabel.r": [_ref("discovery.docker.d.targets")],
        "loki.write.w": [_ref("string.format")],
        "discovery.docker.d": [],
    }
    order = toposort(nodes)
    assert order == [
        "discovery.docker.d",
        "discovery.relabel.r",
        "loki.write.w",
        "loki.source.docker.s",
    ]


def test_toposort_reports_cycles_with_positions() -> None:
    nodes = {
        "a.b.x": [_ref("a.b.y.out", 3)],
        "a.b.y": [_ref("a.b.z.out", 7)],
        "a.b.z": [_ref("a.b.x.out", 9)],
    }
    with pytest.raises(ConfigError) as info:
        toposort(nodes)
    diags = info.value.diagnostics
    assert [d.line for d in diags] == [3, 7, 9]
    assert all(
        "cycle detected: a.b.x -> a.b.y -> a.b.z -> a.b.x" in d.message for d in diags
    )
    with pytest.raises(ConfigError, match=r"a\.b\.x references itself"):
        toposort({"a.b.x": [_ref("a.b.x.out")]})


def test_toposort_handles_long_chains_without_recursion() -> None:
    n = 5000
    nodes = {
        f"c.n{i}": ([_ref(f"c.n{i + 1}.v")] if i + 1 < n else []) for i in range(n)
    }
    order = toposort(nodes)
    assert order[0] == f"c.n{n - 1}" and order[-1] == "c.n0"
