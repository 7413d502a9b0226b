"""The parser: statements, expressions, precedence, positions, error recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from minilog.config import ConfigError, load, parse
from minilog.config import ast as A
from minilog.config._parser import MAX_DEPTH


def expr(src: str) -> A.Expr:
    stmt = parse(f"x = {src}\n").body[0]
    assert isinstance(stmt, A.Attribute)
    return stmt.value


def errors(src: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(src, "f.alloy")
    return [str(d) for d in info.value.diagnostics]


def test_block_with_dotted_name_label_and_body() -> None:
    file = parse('loki.source.docker "app" {\n\thost = "h"\n\tsub { }\n}\n', "f.alloy")
    (block,) = file.body
    assert isinstance(block, A.Block)
    assert block.name == ("loki", "source", "docker")
    assert block.label == "app"
    assert block.id == "loki.source.docker.app"
    assert [type(s).__name__ for s in block.body] == ["Attribute", "Block"]
    assert block.pos == A.Pos(1, 1, 0, "f.alloy")
    assert block.body[0].pos == A.Pos(2, 2, 28, "f.alloy")


def test_precedence_and_associativity() -> None:
    e = expr("1 + 2 * 3 == 7 || !false && 2 ^ 3 ^ 2 > 1")
    assert A.dump(e) == {
        "binary": [
            "||",
            {
                "binary": [
                    "==",
                    {
                        "binary": [
                            "+",
                            {"number": 1},
                            {"binary": ["*", {"number": 2}, {"number": 3}]},
                        ]
                    },
                    {"number": 7},
                ]
            },
            {
                "binary": [
                    "&&",
                    {"unary": ["!", {"bool": False}]},
                    {
                        "binary": [
                            ">",
                            {
                                "binary": [
                                    "^",
                                    {"number": 2},
                                    {"binary": ["^", {"number": 3}, {"number": 2}]},
                                ]
                            },
                            {"number": 1},
                        ]
                    },
                ]
            },
        ]
    }
    assert A.dump(expr("10 - 4 - 3")) == {
        "binary": ["-", {"binary": ["-", {"number": 10}, {"number": 4}]}, {"number": 3}]
    }


def test_postfix_chain() -> None:
    e = expr('a.b[0]["k"].c(1, "s")')
    assert isinstance(e, A.CallExpr)
    assert [A.dump(a) for a in e.args] == [{"number": 1}, {"string": "s"}]
    assert A.start_pos(e).col == 5


def test_objects_accept_identifier_and_string_keys() -> None:
    e = expr('{ a = 1, "b c" = 2 }')
    assert isinstance(e, A.ObjectExpr)
    assert [(f.key, f.quoted) for f in e.fields] == [("a", False), ("b c", True)]


def test_trailing_comma_needed_before_newline_in_lists_and_objects() -> None:
    assert errors("x = [\n1,\n2\n]\n") == [
        "f.alloy:3:2: missing ',' in expression list"
    ]
    assert errors("x = {\na = 1\n}\n") == ["f.alloy:2:6: missing ',' in field list"]
    assert errors("x = f(\n1\n)\n") == ["f.alloy:2:2: missing ',' in argument list"]
    parse("x = [\n1,\n2,\n]\ny = [1, 2]\n")


def test_expected_messages_name_what_was_expected_and_found() -> None:
    assert errors("foo bar {\n}\n") == [
        "f.alloy:1:5: expected '=' or '{' after 'foo', found identifier bar"
    ]
    assert errors("x = (1\n") == ["f.alloy:1:7: expected ')', found newline"]
    assert errors("x = a.\n") == [
        "f.alloy:2:1: expected identifier after '.', found end of file"
    ]
    assert errors("x = { 1 = 2 }\n") == [
        "f.alloy:1:7: expected field name (identifier or string), found number 1"
    ]
    assert errors("x =\n") == ["f.alloy:2:1: expected expression, found end of file"]
    assert errors('x "l" = 1\n') == ["f.alloy:1:3: attribute names may not have labels"]
    assert errors('x "l" 1\n') == [
        "f.alloy:1:7: expected '{' after block label \"l\", found number 1"
    ]


def test_all_errors_of_a_file_are_reported_together() -> None:
    src = 'a = = 1\nb = 2\nc = ]\nblk {\n\td = "x\n\te = [1 2]\n}\nok = 3\n'
    assert errors(src) == [
        "f.alloy:1:5: expected expression, found '='",
        "f.alloy:3:5: expected expression, found ']'",
        "f.alloy:5:6: string literal not terminated",
        "f.alloy:6:9: missing ',' in expression list",
    ]


def test_recovery_skips_a_broken_block_header_with_its_body() -> None:
    assert errors("a b {\n\tc = 1\n}\nd = = 2\n") == [
        "f.alloy:1:3: expected '=' or '{' after 'a', found identifier b",
        "f.alloy:4:5: expected expression, found '='",
    ]


def test_component_labels_are_required_unique_and_identifiers() -> None:
    assert errors("a.b {\n}\n") == ['f.alloy:1:1: component "a.b" must have a label']
    assert errors('a.b "x" {\n}\na.b "x" {\n}\n') == [
        'f.alloy:3:1: component "a.b.x" already declared at f.alloy:1:1'
    ]
    assert errors('a.b "1x" {\n}\n') == [
        'f.alloy:1:5: block label "1x" must be a valid identifier'
    ]
    parse('a.b "x" {\n}\na.b "y" {\n}\nlogging {\n}\n')


def test_nesting_beyond_the_cap_is_an_error_not_a_crash() -> None:
    parse("x = " + "[" * (MAX_DEPTH - 5) + "]" * (MAX_DEPTH - 5) + "\n")
    deep = "x = " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    (msg,) = errors(deep)
    assert "nesting too deep" in msg
    (msg,) = errors("x = " + "-" * (MAX_DEPTH * 3) + "1\n")
    assert "nesting too deep" in msg


def test_long_left_associative_chains_do_not_recurse() -> None:
    e = expr(" + ".join(["1"] * 5000))
    assert isinstance(e, A.BinaryExpr)


def test_load_directory_merges_sorted_files_and_reports_cross_file_duplicates(
    tmp_path: Path,
) -> None:
    root = tmp_path
    (root / "b.alloy").write_text('loki.write "w" {\n}\n')
    (root / "a.alloy").write_text('discovery.docker "d" {\n}\n')
    (root / "ignored.txt").write_text("not alloy")
    file = load(root)
    assert [s.id for s in file.body if isinstance(s, A.Block)] == [
        "discovery.docker.d",
        "loki.write.w",
    ]
    assert file.body[1].pos.file == str(root / "b.alloy")
    (root / "c.alloy").write_text('\nloki.write "w" {\n}\n')
    with pytest.raises(ConfigError) as info:
        load(root)
    (diag,) = info.value.diagnostics
    assert (diag.path, diag.line, diag.column) == (str(root / "c.alloy"), 2, 1)
    assert "already declared at " + str(root / "b.alloy") + ":1:1" in diag.message


def test_load_reports_read_and_encoding_errors(tmp_path: Path) -> None:
    root = tmp_path
    with pytest.raises(ConfigError) as info:
        load(root / "missing.alloy")
    assert "cannot read config" in info.value.diagnostics[0].message
    bad = root / "bad.alloy"
    bad.write_bytes(b'a = 1\nb = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(bad)
    d = info.value.diagnostics[0]
    assert (d.line, d.column) == (2, 6)
    assert d.message == "illegal UTF-8 encoding"
    (root / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no \*\.alloy files"):
        load(root / "empty")
