"""Go compatibility: what minilog must write or read exactly as Go does (pure).

Loki, Alloy and Prometheus are Go programs, and their users see Go's spellings: label
values quoted by ``strconv.Quote``, string literals with Go's escapes, durations in
``time.ParseDuration``'s syntax, byte sizes as ``alecthomas/units`` reads them, floats
as ``fmt`` prints them. One table of Go's escapes (``ESCAPES``) serves quoting here and
the three lexers that read escapes (the Alloy config lexer, the Prometheus label-set
parser in ``labels``, LogQL selectors in ``process``); each keeps its own error texts,
as the Go program it mimics does.

Strings are Python ``str``; a byte that is not valid UTF-8 travels as a
``surrogateescape`` stand-in (U+DC80..U+DCFF), which Go would hold as the raw byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from minilog.errors import EscapeError

__all__ = [
    "ESCAPES",
    "as_go_sees_it",
    "format_float",
    "format_float_f",
    "go_quote",
    "go_type",
    "go_value",
    "parse_base2_bytes",
    "parse_duration",
    "parse_duration_ns",
    "quote_rune",
    "sharp_u",
    "surrogate_free",
    "unquote",
    "unquote_char",
]

#: Go's one-letter escapes: the letter after the backslash, and the character.
#: (The quote character itself is escaped too, but which quote depends on the literal.)
ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_ESCAPED: Final = {char: "\\" + letter for letter, char in ESCAPES.items()}
# Characters that strconv.Quote copies verbatim without looking further: printable ASCII
# minus '"' and '\'. A string made only of them is quoted by wrapping it.
_PLAIN: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*\Z")
_HEX: Final = "0123456789abcdef"
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS: Final = frozenset("01234567")
#: Escape letters that take digits: (count, base, largest value).
_NUMERIC: Final = {"x": (2, 16, 0xFF), "u": (4, 16, 0x10FFFF), "U": (8, 16, 0x10FFFF)}
_NS: Final = 1_000_000_000

# ---------------------------------------------------------------- quoting


def _hex_byte(b: int) -> str:
    return "\\x" + _HEX[b >> 4] + _HEX[b & 0xF]


def _escape_rune(ch: str, quote: str) -> str:
    """One code point as strconv.appendEscapedRune writes it."""
    if ch == quote or ch == "\\":
        return "\\" + ch
    if ch.isprintable():
        # Python's isprintable() is Go's unicode.IsPrint: letters, marks, numbers,
        # punctuation, symbols and the ASCII space (as of the Unicode version each
        # ships: Python 3.11 has 14.0, Go 1.2x has 15.0).
        return ch
    simple = _ESCAPED.get(ch)
    if simple is not None:
        return simple
    cp = ord(ch)
    if cp < 0x20 or cp == 0x7F:
        return _hex_byte(cp)
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _quote(s: str, quote: str) -> str:
    parts = [quote]
    append = parts.append
    for ch in s:
        if "\udc80" <= ch <= "\udcff":
            # surrogateescape's stand-in for a byte that was not valid UTF-8: Go
            # sees the raw byte and writes it as \xHH.
            append(_hex_byte(ord(ch) - 0xDC00))
        else:
            append(_escape_rune(ch, quote))
    append(quote)
    return "".join(parts)


def surrogate_free(s: str) -> bool:
    """Whether ``s`` is valid UTF-8 as it stands (no lone surrogate)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_go_sees_it(s: str) -> str:
    """Turn lone surrogates into the bytes Go would hold, re-decoded (surrogateescape).

    Escaped bytes that together form valid UTF-8 become that character again, and other
    lone surrogates (``surrogatepass`` input) become their three invalid bytes.
    """
    raw = bytearray()
    for ch in s:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            raw.append(cp - 0xDC00)
        else:
            raw += ch.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "surrogateescape")


def go_quote(s: str) -> str:
    """Quote ``s`` exactly as Go's ``strconv.Quote`` does.

    Escapes ``"`` and ``\\``, uses ``\\a \\b \\f \\n \\r \\t \\v``, ``\\xHH`` for
    other control bytes, 0x7F and invalid UTF-8 (lone surrogates from
    ``surrogateescape``), ``\\uHHHH`` / ``\\UHHHHHHHH`` for other non-printable runes,
    and keeps printable non-ASCII as is.
    """
    if _PLAIN.match(s):
        return '"' + s + '"'
    if s.isascii() or surrogate_free(s):
        return _quote(s, '"')
    return _quote(as_go_sees_it(s), '"')


def quote_rune(ch: str) -> str:
    """Go ``%q`` of a rune (``strconv.QuoteRune``), for error messages; ``EOF`` for
    none."""
    if ch == "":
        return "EOF"
    return _quote(ch, "'")


def sharp_u(ch: str) -> str:
    """Go ``%#U`` of a rune: ``U+002F '/'``."""
    text = f"U+{ord(ch):04X}"
    if ch.isprintable():
        text += f" '{ch}'"
    return text


# ---------------------------------------------------------------- unquoting


def unquote_char(text: str, pos: int, quote: str) -> tuple[str, int, bool]:
    """Decode the escape whose letter is ``text[pos]`` (after a backslash) in a literal
    quoted with ``quote``: ``(value, next position, is a byte)``.

    A byte escape (``\\xHH``, ``\\NNN``) yields the byte's code point (below 256) with
    ``is a byte`` true: Go holds the raw byte, and each caller decides what that byte
    becomes in a ``str``.

    Raises:
        EscapeError: the escape is not one Go accepts.
    """
    n = len(text)
    if pos >= n:
        raise EscapeError("unterminated", "", "", pos)
    letter = text[pos]
    simple = ESCAPES.get(letter)
    if simple is not None:
        return simple, pos + 1, False
    if letter == quote:
        return letter, pos + 1, False
    if letter in _OCTAL_DIGITS:
        count, base, top, start = 3, 8, 0xFF, pos
    elif letter in _NUMERIC:
        count, base, top = _NUMERIC[letter]
        start = pos + 1
    else:
        raise EscapeError("unknown", letter, letter, pos)
    digits = _OCTAL_DIGITS if base == 8 else _HEX_DIGITS
    value = 0
    k = start
    for _ in range(count):
        if k >= n:
            raise EscapeError("unterminated", "", letter, k)
        d = text[k]
        if d not in digits:
            raise EscapeError("illegal", d, letter, k)
        value = value * base + int(d, 16)
        k += 1
    if value > top or 0xD800 <= value < 0xE000:
        raise EscapeError("code_point", "", letter, k)
    return chr(value), k, base == 8 or letter == "x"


def unquote(body: str, quote: str = '"') -> str:
    """The inside of a Go string literal, escapes decoded (``strconv.Unquote``); a
    byte escape becomes the code point of that byte.

    Raises:
        EscapeError: an escape Go does not accept.
    """
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while True:
        j = body.find("\\", i)
        if j < 0:
            out.append(body[i:])
            return "".join(out)
        out.append(body[i:j])
        value, i, _ = unquote_char(body, j + 1, quote)
        out.append(value)


# ---------------------------------------------------------------- durations

_DURATION_UNITS_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": _NS,
    "m": 60 * _NS,
    "h": 3600 * _NS,
}
_LEADING: Final = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_MAX_DURATION: Final = 1 << 63


def parse_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds: ``"1h30m"``, ``"-250ms"``; no ``d``.

    Raises:
        ValueError: Go's reason, as Alloy reports it (``invalid duration "x"``,
            ``missing unit in duration "x"``, ``unknown unit "u" in duration "x"``).
    """
    s = text
    negative = s.startswith("-")
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'invalid duration "{text}"')
    total = 0
    pos = 0
    while pos < len(s):
        m = _LEADING.match(s, pos)
        assert m is not None  # the pattern matches the empty string
        whole, frac = m.group(1), m.group(2)
        if not whole and not frac:
            raise ValueError(f'invalid duration "{text}"')
        end = m.end()
        unit_end = end
        while unit_end < len(s) and s[unit_end] not in "0123456789.":
            unit_end += 1
        unit = s[end:unit_end]
        if not unit:
            raise ValueError(f'missing unit in duration "{text}"')
        scale = _DURATION_UNITS_NS.get(unit)
        if scale is None:
            raise ValueError(f'unknown unit "{unit}" in duration "{text}"')
        value = int(whole or 0) * scale
        if frac:
            # As Go: the fraction through float64, exact to the nanosecond for hours.
            value += int(int(frac) * (scale / 10 ** len(frac)))
        total += value
        if total > _MAX_DURATION:
            raise ValueError(f'invalid duration "{text}"')
        pos = unit_end
    return -total if negative else total


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` in seconds (see :func:`parse_duration_ns`)."""
    return parse_duration_ns(text) / _NS


# ---------------------------------------------------------------- byte sizes

_BYTE_UNITS: Final = {"B": 1}
for _i, _prefix in enumerate("KMGTPE", start=1):
    # alecthomas/units ParseBase2Bytes: "KB" and "KiB" both mean 1024.
    _BYTE_UNITS[_prefix + "B"] = 1024**_i
    _BYTE_UNITS[_prefix + "iB"] = 1024**_i
_BYTES_PART: Final = re.compile(r"(\d*)(?:\.(\d*))?([A-Za-z]*)")


def parse_base2_bytes(text: str) -> int:
    """A byte size as ``alecthomas/units.ParseBase2Bytes`` reads it (what Alloy's
    ``units.Base2Bytes`` arguments take): ``"1MiB"``, ``"1MB"`` (2^20 too), ``"0"``;
    a unit is required, and case matters.

    Raises:
        ValueError: ``invalid byte size "x"``, ``missing unit in byte size "x"``,
            ``unknown unit "u" in byte size "x"``.
    """
    if text == "0":
        return 0
    if not text:
        raise ValueError('invalid byte size ""')
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _BYTES_PART.match(text, pos)
        assert m is not None
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if m.end() == pos or (not whole and not frac):
            raise ValueError(f'invalid byte size "{text}"')
        if not unit:
            raise ValueError(f'missing unit in byte size "{text}"')
        scale = _BYTE_UNITS.get(unit)
        if scale is None:
            raise ValueError(f'unknown unit "{unit}" in byte size "{text}"')
        total += float(f"{whole or 0}.{frac or 0}") * scale
        pos = m.end()
    return int(total)


# ---------------------------------------------------------------- floats


def format_float(value: float) -> str:
    """Go's ``%v`` of a float64: shortest digits; ``e`` form if exp < -4 or >= 6."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest round-tripping digits, like Go's strconv with prec -1.
    text = repr(abs(value))
    exp = Decimal(text).adjusted()
    digits = text.partition("e")[0].replace(".", "").strip("0") or "0"
    if -4 <= exp < 6:
        if "e" in text:
            text = f"{abs(value):.{max(0, len(digits) - 1 - exp)}f}"
        return sign + text.removesuffix(".0")
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{head}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def format_float_f(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'f', -1, 64)``: shortest digits, never an
    exponent; ``NaN``, ``+Inf``, ``-Inf``."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    return format(Decimal(repr(value)), "f")


def go_type(value: Any) -> str:
    """Go's ``%T`` of a value as Alloy hands it to Go (numbers beyond int64 are
    uint64; lists and maps are ``interface {}`` containers)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if value <= 2**63 - 1 else "uint64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    return type(value).__name__


def go_value(value: Any) -> str:
    """Go's ``%v``: strings unquoted (a ``str`` subclass, such as a secret, as its
    plain text), maps in key order as ``fmt`` prints them."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
        )
    return str(value)
