"""Scanner for the Alloy configuration language: source text -> tokens with positions.

Owns the lexical grammar (identifiers, numbers with Go's leading-zero octal quirk,
Go-escaped and raw strings, comments, operators) and Go-style terminator insertion.
Scanning never stops at the first problem: every error becomes a ``Diagnostic`` and the
scan goes on.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from minilog._go import sharp_u, unquote_char
from minilog.config.ast import Pos
from minilog.errors import Diagnostic, EscapeError

__all__ = [
    "BOOL",
    "COMMENT",
    "EOF",
    "FLOAT",
    "IDENT",
    "NULL",
    "NUMBER",
    "STRING",
    "TERM",
    "Token",
    "describe",
    "tokenize",
]

IDENT: Final = "IDENT"
NUMBER: Final = "NUMBER"
FLOAT: Final = "FLOAT"
STRING: Final = "STRING"
BOOL: Final = "BOOL"
NULL: Final = "NULL"
# A statement terminator: an inserted newline (text "\n") or end of file (text "").
TERM: Final = "TERM"
COMMENT: Final = "COMMENT"
EOF: Final = "EOF"
# Punctuation and operator tokens use their own text as their kind.

ASCII_LETTERS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
)
DIGITS: Final = frozenset("0123456789")
ASCII_IDENT_CHARS: Final = ASCII_LETTERS | DIGITS
WHITESPACE: Final = frozenset(" \t\r")
SINGLE_OPS: Final = frozenset("!=<>+-*/%^{}()[],.")
DOUBLE_OPS: Final = frozenset({"||", "&&", "==", "!=", "<=", ">="})
DOUBLE_OP_PREFIXES: Final = tuple(sorted(DOUBLE_OPS))
# Go inserts a terminator at a newline that follows one of these.
INSERT_AFTER: Final = frozenset(
    {IDENT, NUMBER, FLOAT, STRING, BOOL, NULL, ")", "]", "}"}
)
BAD_CHARS: Final = frozenset("\x00\ufeff") | frozenset(map(chr, range(0xDC80, 0xDD00)))
_BAD_CHAR_RE: Final = re.compile("[\x00\ufeff\udc80-\udcff]")
OCTAL_DIGITS: Final = frozenset("01234567")
KEYWORDS: Final = {"true": (BOOL, True), "false": (BOOL, False), "null": (NULL, None)}
INT64_MAX: Final = 2**63 - 1
UINT64_MAX: Final = 2**64 - 1


class Token(NamedTuple):
    kind: str
    text: str
    value: int | float | str | bool | None
    pos: Pos
    end: int  # offset just past the token


def describe(tok: Token) -> str:
    """How a token is named in "found ..." messages."""
    if tok.kind == TERM:
        return "newline" if tok.text else "end of file"
    if tok.kind == EOF:
        return "end of file"
    if tok.kind == IDENT:
        return f"identifier {tok.text}"
    if tok.kind == STRING:
        return f"string {tok.text}"
    if tok.kind in (NUMBER, FLOAT):
        return f"number {tok.text}"
    if tok.kind in (BOOL, NULL):
        return tok.text
    return f"'{tok.kind}'"


def _is_letter(c: str) -> bool:
    return c in ASCII_LETTERS or (c > "\x7f" and c.isalpha())


def _is_ident_char(c: str) -> bool:
    return c in ASCII_IDENT_CHARS or (c > "\x7f" and (c.isalpha() or c.isdecimal()))


class _Scanner:
    """Cursor state shared by the scanning functions: line starts, diagnostics."""

    __slots__ = ("diags", "line", "line_start", "path", "src")

    def __init__(self, src: str, path: str) -> None:
        self.src = src
        self.path = path
        self.line = 1
        self.line_start = 0
        self.diags: list[Diagnostic] = []

    def pos(self, offset: int) -> Pos:
        return Pos(self.line, offset - self.line_start + 1, offset, self.path)

    def error(self, offset: int, message: str) -> None:
        self.diags.append(
            Diagnostic(self.path, self.line, offset - self.line_start + 1, message)
        )


def tokenize(src: str, path: str = "<config>") -> tuple[list[Token], list[Diagnostic]]:
    """Scan all of ``src``: every token (comments too, EOF last) and the diagnostics."""
    sc = _Scanner(src, path)
    _report_bad_chars(sc)
    toks: list[Token] = []
    n = len(src)
    i = 0
    if src.startswith("\ufeff"):
        # A byte order mark may only be the first character; columns start after it.
        i = 1
        sc.line_start = 1
    insert = False
    while True:
        while i < n:
            c = src[i]
            if c == "\n":
                if insert:
                    toks.append(Token(TERM, "\n", None, sc.pos(i), i + 1))
                    insert = False
                i += 1
                sc.line += 1
                sc.line_start = i
            elif c in WHITESPACE:
                i += 1
            else:
                break
        if i >= n:
            if insert:
                toks.append(Token(TERM, "", None, sc.pos(i), i))
            toks.append(Token(EOF, "", None, sc.pos(i), i))
            return toks, sc.diags
        start = i
        pos = sc.pos(i)
        c = src[i]
        if _is_letter(c):
            i += 1
            while i < n and _is_ident_char(src[i]):
                i += 1
            text = src[start:i]
            kind, value = KEYWORDS.get(text, (IDENT, text))
            toks.append(Token(kind, text, value, pos, i))
            insert = True
        elif c in DIGITS or (c == "." and i + 1 < n and src[i + 1] in DIGITS):
            kind, num, i = _scan_number(sc, i)
            toks.append(Token(kind, src[start:i], num, pos, i))
            insert = True
        elif c == '"':
            s, i = _scan_string(sc, i)
            toks.append(Token(STRING, src[start:i], s, pos, i))
            insert = True
        elif c == "`":
            s, i = _scan_raw_string(sc, i)
            toks.append(Token(STRING, src[start:i], s, pos, i))
            insert = True
        elif c == "/" and src.startswith(("//", "/*"), i):
            line_comment = src[i + 1] == "/"
            if line_comment:
                end = src.find("\n", i)
                close = n if end < 0 else end
            else:
                close = _block_comment_end(sc, i)
            if insert and (line_comment or _line_ends(src, start, close)):
                # As Go's scanner does: the terminator comes before a comment that
                # runs to the end of the line, positioned where the comment starts.
                toks.append(Token(TERM, "\n", None, pos, start))
                insert = False
            if not line_comment:
                _advance_lines(sc, start, close)
            i = close
            text = _comment_text(src[start:i], block=not line_comment)
            toks.append(Token(COMMENT, text, None, pos, i))
        elif src.startswith(DOUBLE_OP_PREFIXES, i):
            op = src[i : i + 2]
            i += 2
            toks.append(Token(op, op, None, pos, i))
            insert = False
        elif c in SINGLE_OPS:
            i += 1
            toks.append(Token(c, c, None, pos, i))
            insert = c in INSERT_AFTER
        elif c in "|&":
            # Alloy reports the half operator but scans it as the whole one.
            sc.error(i + 1, f"missing second {c} in {c}{c}")
            i += 1
            toks.append(Token(c + c, c, None, pos, i))
            insert = False
        elif c == "'":
            s, i = _scan_single_quoted(sc, i)
            # Recover as a string, so the parser piles up no follow-on errors.
            toks.append(Token(STRING, src[start:i], s, pos, i))
            insert = True
        else:
            if c not in BAD_CHARS:  # those were reported up front
                sc.error(i, _illegal_message(c))
            i += 1


def _comment_text(text: str, *, block: bool) -> str:
    """A comment's text as Alloy's scanner gives it: carriage returns removed (the
    formatter prints this text), except one between ``*`` and ``/`` in a block
    comment, whose removal would end the comment early."""
    if "\r" not in text:
        return text
    out: list[str] = []
    n = len(text)
    for j, ch in enumerate(text):
        keep = (
            block
            and len(out) > 2
            and out[-1] == "*"
            and j + 1 < n
            and text[j + 1] == "/"
        )
        if ch != "\r" or keep:
            out.append(ch)
    return "".join(out)


def _illegal_message(c: str) -> str:
    if c == "#":
        return f"illegal character {sharp_u(c)}; comments start with // or /*"
    return f"illegal character {sharp_u(c)}"


def _report_bad_chars(sc: _Scanner) -> None:
    """NUL, a misplaced BOM and undecodable bytes are errors wherever they are, even in
    strings and comments (``load`` maps undecodable bytes to lone surrogates)."""
    src = sc.src
    for m in _BAD_CHAR_RE.finditer(src):
        offset = m.start()
        c = m.group(0)
        if offset == 0 and c == "\ufeff":
            continue
        line = src.count("\n", 0, offset) + 1
        col = offset - (src.rfind("\n", 0, offset) + 1) + 1
        message = {
            "\x00": "illegal character NUL",
            "\ufeff": "illegal byte order mark",
        }.get(c, "illegal UTF-8 encoding")
        sc.diags.append(Diagnostic(sc.path, line, col, message))


def _line_ends(src: str, start: int, close: int) -> bool:
    """Whether block comment ``src[start:close]`` ends its line (Go's findLineEnd)."""
    n = len(src)
    while True:
        if "\n" in src[start:close]:
            return True
        j = close
        while j < n and src[j] in WHITESPACE:
            j += 1
        if j >= n or src[j] == "\n" or src.startswith("//", j):
            return True
        if not src.startswith("/*", j):
            return False
        end = src.find("*/", j + 2)
        if end < 0:
            return True
        start, close = j, end + 2


def _advance_lines(sc: _Scanner, start: int, close: int) -> None:
    text = sc.src[start:close]
    newlines = text.count("\n")
    if newlines:
        sc.line += newlines
        sc.line_start = start + text.rfind("\n") + 1


def _scan_digits(src: str, i: int) -> int:
    n = len(src)
    while i < n and src[i] in DIGITS:
        i += 1
    return i


def _scan_number(sc: _Scanner, i: int) -> tuple[str, int | float, int]:
    src = sc.src
    n = len(src)
    start = i
    i = _scan_digits(src, i)
    is_float = False
    if i < n and src[i] == ".":
        is_float = True
        i = _scan_digits(src, i + 1)
    if i < n and src[i] in "eE":
        is_float = True
        j = i + 1
        if j < n and src[j] in "+-":
            j += 1
        k = _scan_digits(src, j)
        if k == j:
            sc.error(start, "exponent has no digits")
            return FLOAT, 0.0, j
        i = k
    text = src[start:i]
    if is_float:
        return FLOAT, float(text), i
    if len(text) > 1 and text[0] == "0":
        # Go parses numbers with base 0, so a leading zero means octal (010 == 8);
        # when that fails (09), Alloy falls back to ParseFloat: 09 is the float 9.
        if all(ch in OCTAL_DIGITS for ch in text):
            return NUMBER, int(text, 8), i
        return NUMBER, float(text), i
    value = int(text)
    if value > UINT64_MAX:
        # Alloy falls back to float64 for integers beyond uint64.
        return NUMBER, float(value), i
    return NUMBER, value, i


def _scan_string(sc: _Scanner, i: int) -> tuple[str, int]:
    src = sc.src
    n = len(src)
    start = i
    i += 1
    parts: list[str] = []
    chunk = i
    while True:
        if i >= n or src[i] == "\n":
            sc.error(start, "string literal not terminated")
            parts.append(src[chunk:i])
            return "".join(parts), i
        c = src[i]
        if c == '"':
            parts.append(src[chunk:i])
            return "".join(parts), i + 1
        if c != "\\":
            i += 1
            continue
        parts.append(src[chunk:i])
        text, i = _scan_escape(sc, i)
        parts.append(text)
        chunk = i


def _scan_escape(sc: _Scanner, i: int) -> tuple[str, int]:
    """Decode the escape at ``src[i] == '\\'``: its text and the offset after it.

    Errors are positioned, as Alloy's are, at the character after the backslash; a bad
    escape is dropped and scanning resumes at the offending character.
    """
    j = i + 1
    try:
        # NOTE: Go turns \xNN and \NNN into raw bytes; here they become code points.
        value, end, _ = unquote_char(sc.src, j, '"')
    except EscapeError as exc:
        if exc.kind == "unterminated" or exc.char == "\n":
            sc.error(j, "escape sequence not terminated")
        elif exc.kind == "unknown":
            sc.error(j, f"unknown escape sequence \\{exc.char}")
        elif exc.kind == "illegal":
            sc.error(j, f"illegal character {sharp_u(exc.char)} in escape sequence")
        else:
            sc.error(j, "escape sequence is invalid Unicode code point")
        return "", exc.resume
    return value, end


def _scan_raw_string(sc: _Scanner, i: int) -> tuple[str, int]:
    src = sc.src
    start = i
    end = src.find("`", i + 1)
    if end < 0:
        sc.error(start, "raw string literal not terminated")
        end = len(src)
        close = end
    else:
        close = end + 1
    body = src[i + 1 : end]
    newlines = body.count("\n")
    if newlines:
        sc.line += newlines
        sc.line_start = i + 1 + body.rfind("\n") + 1
    # Go's unquoting drops carriage returns from raw strings.
    return body.replace("\r", ""), close


def _block_comment_end(sc: _Scanner, i: int) -> int:
    end = sc.src.find("*/", i + 2)
    if end < 0:
        sc.error(i, "block comment not terminated")
        return len(sc.src)
    return end + 2


def _scan_single_quoted(sc: _Scanner, i: int) -> tuple[str, int]:
    src = sc.src
    sc.error(i, "illegal single-quoted string; use double quotes")
    end = i + 1
    n = len(src)
    while end < n and src[end] not in "'\n":
        end += 2 if src[end] == "\\" else 1
    end = min(end, n)
    value = src[i + 1 : end]
    return value, end + 1 if end < n and src[end] == "'" else end
