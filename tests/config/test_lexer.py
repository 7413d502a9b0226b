"""The scanner: tokens, positions, terminator insertion, escapes, lexical errors."""

from __future__ import annotations

from minilog.config._lexer import (
    COMMENT,
    EOF,
    FLOAT,
    IDENT,
    NUMBER,
    STRING,
    TERM,
    tokenize,
)


def kinds(src: str) -> list[str]:
    toks, diags = tokenize(src)
    assert not diags, diags
    return [t.kind for t in toks]


def value_of(src: str) -> object:
    toks, diags = tokenize(src)
    assert not diags, [str(d) for d in diags]
    return toks[0].value


def messages(src: str) -> list[str]:
    return [d.message for d in tokenize(src)[1]]


def test_positions_are_one_based_line_and_column_with_offset() -> None:
    toks, _ = tokenize('a = 1\n  bb = "x"\n', "f.alloy")
    bb = toks[4]
    assert (bb.text, bb.pos.line, bb.pos.col, bb.pos.offset, bb.pos.file) == (
        "bb",
        2,
        3,
        8,
        "f.alloy",
    )


def test_newline_after_value_tokens_becomes_terminator() -> None:
    assert kinds("a\n") == [IDENT, TERM, EOF]
    assert kinds(")\n]\n}\n") == [")", TERM, "]", TERM, "}", TERM, EOF]
    assert kinds('"s"\n1\n1.5\ntrue\nnull\n') == [
        STRING, TERM, NUMBER, TERM, FLOAT, TERM, "BOOL", TERM, "NULL", TERM, EOF,
    ]  # fmt: skip


def test_newline_after_operator_or_opener_is_whitespace() -> None:
    assert kinds("a = [\n1,\n+\n") == [IDENT, "=", "[", NUMBER, ",", "+", EOF]


def test_end_of_file_after_value_inserts_terminator() -> None:
    toks, _ = tokenize("x")
    assert [(t.kind, t.text) for t in toks] == [(IDENT, "x"), (TERM, ""), (EOF, "")]


def test_terminator_comes_before_a_comment_that_ends_the_line() -> None:
    assert kinds("a // c\nb") == [IDENT, TERM, COMMENT, IDENT, TERM, EOF]
    assert kinds("a /* x\n y */ b") == [IDENT, TERM, COMMENT, IDENT, TERM, EOF]
    assert kinds("a /* x */ /* y */\nb") == [
        IDENT, TERM, COMMENT, COMMENT, IDENT, TERM, EOF,
    ]  # fmt: skip
    assert kinds("a /* x */ b") == [IDENT, COMMENT, IDENT, TERM, EOF]
    toks, _ = tokenize("ab // c\n")
    assert (toks[1].kind, toks[1].pos.col) == (TERM, 4)


def test_leading_zero_is_octal_and_big_integers_become_floats() -> None:
    assert value_of("010") == 8
    assert value_of("0") == 0
    # Not octal: Go's ParseInt fails and Alloy falls back to ParseFloat.
    assert value_of("09") == 9.0 and isinstance(value_of("09"), float)
    assert value_of("18446744073709551615") == 2**64 - 1
    assert isinstance(value_of("18446744073709551616"), float)


def test_floats_and_exponents() -> None:
    assert value_of("1.5") == 1.5
    assert value_of(".5") == 0.5
    assert value_of("1e3") == 1000.0
    assert value_of("2E-3") == 0.002
    assert messages("1e") == ["exponent has no digits"]
    assert messages("1e+") == ["exponent has no digits"]


def test_go_escapes_decode_exactly() -> None:
    assert value_of(r'"\a\b\f\n\r\t\v\\\""') == '\a\b\f\n\r\t\v\\"'
    assert value_of(r'"\101\x41\u00e9\U0001F600"') == "AAé\U0001f600"


def test_bad_escapes_are_reported_after_the_backslash_as_alloy_does() -> None:
    toks, diags = tokenize(r'x = "ab\qc"')
    assert [(d.line, d.column, d.message) for d in diags] == [
        (1, 9, r"unknown escape sequence \q")
    ]
    assert toks[2].value == "abqc"  # scanning resumes at the offending character
    assert messages(r'"\'"') == [r"unknown escape sequence \'"]
    assert messages(r'"\777"') == ["escape sequence is invalid Unicode code point"]
    assert messages(r'"\xG1"') == ["illegal character U+0047 'G' in escape sequence"]
    assert messages(r'"\UFFFFFFFF"') == [
        "escape sequence is invalid Unicode code point"
    ]
    assert messages('"\\') == [
        "escape sequence not terminated",
        "string literal not terminated",
    ]


def test_raw_strings_span_lines_without_escapes_and_drop_carriage_returns() -> None:
    toks, diags = tokenize("a = `x\\n\r\ny`\nb")
    assert not diags
    assert toks[2].value == "x\\n\ny"
    assert toks[5].pos.line == 3  # line counting continues after the raw string


def test_lexical_errors_are_all_reported() -> None:
    assert messages("# c\n") == [
        "illegal character U+0023 '#'; comments start with // or /*"
    ]
    assert messages("'x'") == ["illegal single-quoted string; use double quotes"]
    assert messages('"abc') == ["string literal not terminated"]
    assert messages("`abc") == ["raw string literal not terminated"]
    assert messages("/* abc") == ["block comment not terminated"]
    assert messages("a @ b \x01") == [
        "illegal character U+0040 '@'",
        "illegal character U+0001",
    ]
    assert messages("a | b") == ["missing second | in ||"]
    assert [t.kind for t in tokenize("a & b")[0]] == [IDENT, "&&", IDENT, TERM, EOF]


def test_nul_and_undecodable_bytes_are_errors_even_inside_strings() -> None:
    _, diags = tokenize('a = "x\x00y"\n// \udcff\n')
    assert [(d.line, d.column, d.message) for d in diags] == [
        (1, 7, "illegal character NUL"),
        (2, 4, "illegal UTF-8 encoding"),
    ]


def test_bom_allowed_only_at_start() -> None:
    toks, diags = tokenize("\ufeffa")
    assert not diags and toks[0].pos.col == 1
    assert messages("a\ufeff") == ["illegal byte order mark"]


def test_unicode_identifiers() -> None:
    toks, diags = tokenize("héllo_1 = 1")
    assert not diags and toks[0].text == "héllo_1"


def test_two_character_operators() -> None:
    assert kinds("a || b && c == d != e <= f >= g") == [
        IDENT, "||", IDENT, "&&", IDENT, "==", IDENT, "!=", IDENT, "<=", IDENT, ">=",
        IDENT, TERM, EOF,
    ]  # fmt: skip
