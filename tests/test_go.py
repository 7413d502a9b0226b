"""Tests for ``minilog._go``: Go's quoting, escapes, durations, byte sizes and float
text, as Loki, Alloy and Prometheus write and read them."""

from __future__ import annotations

import pytest

from minilog._go import (
    format_float,
    format_float_f,
    go_quote,
    parse_base2_bytes,
    parse_duration,
    parse_duration_ns,
    quote_rune,
    sharp_u,
    unquote,
    unquote_char,
)
from minilog.errors import EscapeError

parse_bytes = parse_base2_bytes

# ------------------------------------------------------------------ quoting


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("", '""'),
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\temp", r'"C:\\temp"'),
        ("\a\b\f\r\n\t\v", r'"\a\b\f\r\n\t\v"'),
        ("\x00\x04\x1f", r'"\x00\x04\x1f"'),
        ("\x7f", r'"\x7f"'),
        ("héllo ✓ 日本 😀", '"héllo ✓ 日本 😀"'),
        ("!\u00a0!\u2000!\u3000!", r'"!\u00a0!\u2000!\u3000!"'),
        ("\u0085", r'"\u0085"'),
        ("\u2028\ufeff", r'"\u2028\ufeff"'),
        ("\U000e0001", r'"\U000e0001"'),
        ("\U0010ffff", r'"\U0010ffff"'),
        ("'single'", "\"'single'\""),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_go_quote_matches_strconv_quote(value: str, quoted: str) -> None:
    assert go_quote(value) == quoted


def test_go_quote_writes_invalid_utf8_bytes_as_hex() -> None:
    value = b"abc\xffdef\xc3".decode("utf-8", "surrogateescape")
    assert go_quote(value) == r'"abc\xffdef\xc3"'


def test_go_quote_reads_escaped_bytes_that_form_utf8_as_one_rune() -> None:
    # Two surrogateescape stand-ins that together are valid UTF-8 for "é".
    assert go_quote("\udcc3\udca9") == '"é"'


def test_go_quote_writes_other_lone_surrogates_as_their_bytes() -> None:
    assert go_quote("\ud800") == r'"\xed\xa0\x80"'


def test_quote_rune_and_sharp_u_as_go_prints_them() -> None:
    assert quote_rune("a") == "'a'"
    assert quote_rune("'") == "'\\''"
    assert quote_rune("\n") == "'\\n'"
    assert quote_rune("") == "EOF"
    assert sharp_u("/") == "U+002F '/'"
    assert sharp_u("\x00") == "U+0000"


# ------------------------------------------------------------------ escapes


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("plain", "plain"),
        (r"a\tb\nc", "a\tb\nc"),
        (r"\"quoted\"", '"quoted"'),
        (r"\\", "\\"),
        (r"\x41\101\u00e9\U0001F600", "AAé\U0001f600"),
        (r"\a\b\f\r\v", "\a\b\f\r\v"),
    ],
)
def test_unquote_decodes_go_escapes(body: str, text: str) -> None:
    assert unquote(body) == text


@pytest.mark.parametrize(
    ("body", "kind", "letter"),
    [
        (r"\q", "unknown", "q"),
        (r"\'", "unknown", "'"),
        (r"\x4", "unterminated", "x"),
        (r"\x4g", "illegal", "x"),
        (r"\12", "unterminated", "1"),
        (r"\777", "code_point", "7"),
        (r"\ud800", "code_point", "u"),
        (r"\U00110000", "code_point", "U"),
        ("\\", "unterminated", ""),
    ],
)
def test_unquote_refuses_what_go_refuses(body: str, kind: str, letter: str) -> None:
    with pytest.raises(EscapeError) as info:
        unquote(body)
    assert (info.value.kind, info.value.letter) == (kind, letter)


def test_unquote_char_tells_byte_escapes_apart() -> None:
    assert unquote_char(r"\xff", 1, '"') == ("\xff", 4, True)
    assert unquote_char(r"\u00ff", 1, '"') == ("\xff", 6, False)
    assert unquote_char("'", 0, "'") == ("'", 1, False)


# ------------------------------------------------------------------ durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("1s", 1.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("10us", 1e-5),
        ("10µs", 1e-5),
        ("5ns", 5e-9),
        ("-2m", -120.0),
        ("+.5s", 0.5),
        ("1m0.5s", 60.5),
    ],
)
def test_parse_duration_follows_go(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "s", ".s", "1.2.3s", "1 s", "-"])
def test_parse_duration_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1B", 1),
        ("512KiB", 512 * 1024),
        ("1KB", 1024),
        ("1MiB", 1 << 20),
        ("1MB", 1 << 20),
        ("1.5GB", 3 << 29),
        ("1GB512MB", (1 << 30) + (512 << 20)),
    ],
)
def test_parse_bytes_base2(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "1", "1mb", "MB", "1 MB"])
def test_parse_bytes_rejects_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="byte size"):
        parse_bytes(text)


def test_parse_duration_ns_is_exact_to_the_nanosecond() -> None:
    assert parse_duration_ns("1.5h") == 5400 * 10**9
    assert parse_duration_ns("1m0.000000001s") == 60 * 10**9 + 1
    assert parse_duration_ns("2562047h47m16.854775807s") == (1 << 63) - 1
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration_ns("2562047h47m16.854775809s")  # past Go's int64 duration


# ------------------------------------------------------------------ floats


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (1.5, "1.5"),
        (100000.0, "100000"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5, "-2.5"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Inf"),
    ],
)
def test_format_float_is_go_percent_v(value: float, text: str) -> None:
    assert format_float(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3.0, "3"),
        (1e20, "100000000000000000000"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (float("inf"), "+Inf"),
    ],
)
def test_format_float_f_never_uses_an_exponent(value: float, text: str) -> None:
    assert format_float_f(value) == text
