"""Parsers the stages need: JMESPath (the ``jmespath`` library, with a fast path for
plain paths), logfmt (go-logfmt's decoder), Loki's ``pattern`` expressions, Go strings,
LogQL selectors; Go templates are ``gotemplate``'s.

Owns the grammar of each; the stages own what is done with the results. Errors in
configuration text raise ``ValueError`` with a message (the builder names the stage);
bad log lines never raise. Pure.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jmespath
import jmespath.exceptions

from minilog._go import unquote
from minilog._re2 import compile_re2, translate
from minilog.errors import EscapeError, Re2Error
from minilog.labels import is_valid_label_name

__all__ = [
    "JmesPath",
    "LineFilter",
    "Matcher",
    "Pattern",
    "Selector",
    "compile_jmespath",
    "compile_pattern",
    "go_unquote",
    "jmes_search",
    "logfmt_scan",
    "logfmt_value",
    "parse_selector",
]

# ---------------------------------------------------------------------------- JMESPath

#: A compiled expression: a plain path (object keys and array indexes, applied in
#: order) searched without the library, or the library's compiled expression.
JmesPath = tuple[str | int, ...] | Any


def compile_jmespath(expression: str) -> JmesPath:
    """Compile a JMESPath expression (Alloy uses go-jmespath; minilog the ``jmespath``
    library). A plain path such as ``a.b``, ``"a-b"`` or ``a[0].b`` becomes a tuple
    searched directly, the per-line fast path.

    Raises:
        ValueError: the library's parse error.
    """
    try:
        compiled = jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(_jmes_error(exc)) from None
    path = _plain_path(compiled.parsed)
    return compiled if path is None else path


def _jmes_error(exc: Exception) -> str:
    """The library's message on one line, with the offset it points at."""
    message = str(exc).split("\n", 1)[0].rstrip(":")
    offset = getattr(exc, "lex_position", None)
    if offset is None:
        offset = getattr(exc, "lexer_position", None)
    return message if offset is None else f"{message} (at offset {offset})"


def _plain_path(node: Mapping[str, Any]) -> tuple[str | int, ...] | None:
    kind = node.get("type")
    if kind == "field":
        return (node["value"],)
    if kind == "subexpression":
        steps: list[str | int] = []
        for child in node["children"]:
            part = _plain_path(child)
            if part is None:
                return None
            steps.extend(part)
        return tuple(steps)
    if kind == "index_expression":
        left, right = node["children"]
        head = _plain_path(left)
        if head is None or right.get("type") != "index":
            return None
        return (*head, int(right["value"]))
    return None


def jmes_search(path: JmesPath, data: Any) -> Any:
    """Evaluate a compiled expression; missing keys, wrong types, bad indexes give None.

    Raises:
        ValueError: the library failed (a function given the wrong types): Alloy then
        skips that expression for the line.
    """
    if not isinstance(path, tuple):
        try:
            return path.search(data)
        except jmespath.exceptions.JMESPathError as exc:
            raise ValueError(str(exc)) from None
    cur = data
    for step in path:
        if type(step) is str:
            if type(cur) is not dict:
                return None
            cur = cur.get(step)
        else:
            if type(cur) is not list:
                return None
            try:
                cur = cur[step]  # type: ignore[index]
            except IndexError:
                return None
    return cur


# ------------------------------------------------------------------------------ logfmt


# go-logfmt's decoder as one regex: a key (bytes above ' ' but '=' and '"'), then '='
# and a quoted value (which may be followed by anything: the decoder goes on with the
# next key right after the quote) or a bare value followed by a separator (a byte
# <= ' ') or the end, or no '=' and a separator; otherwise, as the third group, the
# character where go-logfmt stops with a syntax error. Quoted values end at a line
# end: the decoder reads line by line.
_LOGFMT_SCAN: Final = re.compile(
    r'([^\x00-\x20="]+)(?:=("(?:[^"\\\n]|\\[^\n])*"|[^\x00-\x20="]*(?=[\x00-\x20]|\Z))'
    r"|(?=[\x00-\x20]|\Z))|([^\x00-\x20])"
)
#: bufio.Scanner's limit: go-logfmt fails on a line this long (in bytes) or longer.
_MAX_RECORD: Final = 64 * 1024


def logfmt_scan(text: str) -> list[tuple[str, str, str]]:
    """Scan logfmt ``text`` into (key, raw value, stop) triples, in one regex pass.

    A raw value is bare, empty (a key without ``=``) or still quoted: pass it to
    ``logfmt_value``. A non-empty ``stop`` marks where go-logfmt's decoder fails (a
    stray ``"`` or ``=``, an unterminated quote): only the triples before it count.
    """
    if len(text) >= _MAX_RECORD:
        text = _before_long_record(text)
    return _LOGFMT_SCAN.findall(text)


def _before_long_record(text: str) -> str:
    """The lines before the first one too long for go-logfmt's line scanner (which
    then stops), plus a stop marker; ``text`` itself when none is."""
    offset = 0
    for line in text.split("\n"):
        if len(line.encode()) >= _MAX_RECORD:
            return text[:offset] + "\n\x7f"
        offset += len(line) + 1
    return text


def logfmt_value(raw: str) -> str | None:
    """The value of a raw value from ``logfmt_scan`` (unquoted, unescaped), or None
    where go-logfmt refuses the quoted value (the decoder stops there)."""
    if raw[:1] != '"':
        return raw
    if "\\" not in raw:
        return raw[1:-1]
    return _unquote_logfmt(raw[1:-1])


_LOGFMT_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "'": "'",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


def _unquote_logfmt(body: str) -> str | None:
    """go-logfmt's ``unquoteBytes`` (JSON's escapes plus ``\\'``); None if invalid."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch == "\\":
            if i + 1 >= n:
                return None
            letter = body[i + 1]
            simple = _LOGFMT_ESCAPES.get(letter)
            if simple is not None:
                out.append(simple)
                i += 2
                continue
            if letter != "u":
                return None
            code = _u4(body, i)
            if code < 0:
                return None
            i += 6
            if 0xD800 <= code < 0xE000:
                low = _u4(body, i)
                if 0xD800 <= code < 0xDC00 and 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    i += 6
                    continue
                code = 0xFFFD
            out.append(chr(code))
            continue
        if ch == '"' or ch < " ":
            return None
        out.append(ch)
        i += 1
    return "".join(out)


def _u4(text: str, i: int) -> int:
    """The value of ``\\uXXXX`` at ``text[i:]``, or -1."""
    if text[i : i + 2] != "\\u":
        return -1
    digits = text[i + 2 : i + 6]
    if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        return -1
    return int(digits, 16)


# ----------------------------------------------------------------------------- pattern


@dataclass(frozen=True, slots=True)
class Pattern:
    """A Loki ``pattern`` expression: literals and ``<name>`` captures (``<_>``
    captures without a name)."""

    nodes: tuple[tuple[bool, str], ...]  # (is a capture, literal text or name)
    names: tuple[str, ...]

    def matches(self, line: str) -> list[str] | None:
        """Loki's ``Matcher.Matches``: the named captures, in order; fewer when the
        line ends early; None when the leading literal does not start the line."""
        if not line or not self.nodes:
            return None
        nodes = self.nodes
        rest = line
        i = 0
        if not nodes[0][0]:
            literal = nodes[0][1]
            if not rest.startswith(literal):
                return None
            rest = rest[len(literal) :]
            i = 1
        if i == len(nodes):
            return None
        captures: list[str] = []
        while i < len(nodes):
            name = nodes[i][1]
            if i + 1 == len(nodes):  # ending on a capture
                if name != "_":
                    captures.append(rest)
                return captures
            literal = nodes[i + 1][1]
            i += 2
            found = rest.find(literal)
            if found < 0:  # a capture that misses takes the rest
                if name != "_":
                    captures.append(rest)
                return captures
            if name != "_":
                captures.append(rest[:found])
            rest = rest[found + len(literal) :]
        return captures


_PATTERN_CAPTURE: Final = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def compile_pattern(text: str) -> Pattern:
    """Parse and validate a Loki ``pattern`` expression as ``stage.pattern`` does.

    Raises:
        ValueError: no named capture, two captures in a row, a name used twice, or a
        name that is not a label name.
    """
    nodes: list[tuple[bool, str]] = []
    pos = 0
    for m in _PATTERN_CAPTURE.finditer(text):
        if m.start() > pos:
            nodes.append((False, text[pos : m.start()]))
        nodes.append((True, m.group(1)))
        pos = m.end()
    if pos < len(text):
        nodes.append((False, text[pos:]))
    names = tuple(name for capture, name in nodes if capture and name != "_")
    if not names:
        raise ValueError("at least one capture is required")
    for (c1, n1), (c2, n2) in itertools.pairwise(nodes):
        if c1 and c2:
            raise ValueError(
                f"found consecutive capture '<{n1}><{n2}>': invalid expression"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate capture name ({name}): invalid expression")
        seen.add(name)
        if not is_valid_label_name(name):
            raise ValueError(f"invalid capture label name '{name}'")
    return Pattern(tuple(nodes), names)


# -------------------------------------------------------------------------- Go strings


def go_unquote(body: str) -> str:
    """Decode the inside of a Go double-quoted string literal (``strconv.Unquote``).

    Raises:
        ValueError: on an invalid escape.
    """
    try:
        return unquote(body)
    except EscapeError as exc:
        if exc.letter == "'":
            raise ValueError("invalid escape \\' in a double-quoted string") from None
        raise ValueError(f"invalid escape \\{exc.letter}") from None


# ------------------------------------------------------------------------------- LogQL


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher of a stream selector: ``name op "value"``."""

    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True, slots=True)
class LineFilter:
    """One line filter: ``|= "a"``, ``!= "a"``, ``|~ "re"``, ``!~ "re"``."""

    op: str
    values: tuple[str, ...]
    regexes: tuple[re.Pattern[str], ...]

    def keeps(self, line: str) -> bool:
        if self.op in ("|=", "!="):
            found = any(v in line for v in self.values)
        else:
            found = any(r.search(line) is not None for r in self.regexes)
        return found if self.op in ("|=", "|~") else not found


@dataclass(frozen=True, slots=True)
class Selector:
    """A LogQL stream selector with optional line filters (``stage.match``)."""

    matchers: tuple[Matcher, ...]
    filters: tuple[LineFilter, ...]

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def keeps_line(self, line: str) -> bool:
        return all(f.keeps(line) for f in self.filters)


_SEL_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<op>\|=|\|~|!=|!~|=~|=|\{|\}|,|\|>|!>|\|)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE | re.DOTALL,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        if not text[pos:].strip():
            break
        m = _SEL_TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"syntax error at offset {pos}: {text[pos : pos + 10]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _string_value(token: str) -> str:
    if token[0] == "`":
        return token[1:-1]
    return go_unquote(token[1:-1])


def _regex(pattern: str, anchored: bool) -> re.Pattern[str]:
    try:
        if anchored:
            return compile_re2(pattern)
        translate(pattern)
        return re.compile(translate("(?-s:" + pattern + ")"))
    except Re2Error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


def parse_selector(text: str) -> Selector:
    """Parse ``{a="x", b=~"y.*"} |= "err" != "debug"``.

    Label regexes are fully anchored (Prometheus); line regexes match anywhere (Loki).
    Raises ``ValueError`` for bad syntax or what minilog does not support (label
    filters, parsers, pattern filters).
    """
    toks = _tokens(text)
    i = 0

    def expect(kind: str, value: str | None = None) -> str:
        nonlocal i
        if i >= len(toks):
            raise ValueError(f"unexpected end of selector {text!r}")
        k, v = toks[i]
        if k != kind or (value is not None and v != value):
            raise ValueError(f"syntax error in selector {text!r}: unexpected {v!r}")
        i += 1
        return v

    expect("op", "{")
    matchers: list[Matcher] = []
    while True:
        if i < len(toks) and toks[i] == ("op", "}"):
            i += 1
            break
        name = expect("ident")
        op = expect("op")
        if op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"syntax error in selector {text!r}: unexpected {op!r}")
        value = _string_value(expect("str"))
        rx = _regex(value, anchored=True) if op in ("=~", "!~") else None
        matchers.append(Matcher(name, op, value, rx))
        if i < len(toks) and toks[i] == ("op", ","):
            i += 1
            continue
        expect("op", "}")
        break
    if not matchers:
        raise ValueError(f"selector {text!r} needs at least one label matcher")
    filters: list[LineFilter] = []
    while i < len(toks):
        op = expect("op")
        if op not in ("|=", "!=", "|~", "!~"):
            raise ValueError(
                f"unsupported expression after the stream selector in {text!r}: {op!r} "
                "(only line filters |= != |~ !~ are allowed)"
            )
        values = [_string_value(expect("str"))]
        while i < len(toks) and toks[i] == ("ident", "or"):
            i += 1
            values.append(_string_value(expect("str")))
        regexes = tuple(_regex(v, anchored=False) for v in values) if "~" in op else ()
        filters.append(LineFilter(op, tuple(values), regexes))
    return Selector(tuple(matchers), tuple(filters))
