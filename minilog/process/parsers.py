"""Parsers the stages need: JMESPath and Go-template subsets, logfmt, Go strings, LogQL.

Owns the grammar of each; the stages own what is done with the results. Errors in
configuration text raise ``ValueError`` with a message (the builder names the stage);
bad log lines never raise. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from minilog._go import unquote
from minilog._re2 import compile_re2, translate
from minilog.errors import EscapeError, Re2Error

__all__ = [
    "JmesPath",
    "LineFilter",
    "Matcher",
    "Selector",
    "Template",
    "compile_jmespath",
    "compile_template",
    "go_unquote",
    "jmes_search",
    "logfmt_scan",
    "logfmt_value",
    "parse_selector",
    "template_fields",
]

# ---------------------------------------------------------------------------- JMESPath

#: A compiled path: object keys (str) and array indexes (int), applied in order.
JmesPath = tuple[str | int, ...]

_JMES_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<quoted>"(?:[^"\\]|\\.)*")
      | \[\s*(?P<index>-?[0-9]+)\s*\]
      | (?P<dot>\.)
    )""",
    re.VERBOSE,
)


def compile_jmespath(expression: str) -> JmesPath:
    """Compile the JMESPath subset minilog supports: ``a.b``, ``"a.b"``, ``a[0].b``.

    Raises:
        ValueError: for anything else (wildcards, filters, functions, ...), or bad
        syntax.
    """
    steps: list[str | int] = []
    pos, n = 0, len(expression)
    want_field = True  # at the start or after '.', a field name must follow
    after_dot = False
    while pos < n:
        if expression[pos:].strip() == "":
            break
        m = _JMES_TOKEN.match(expression, pos)
        if m is None:
            raise ValueError(
                f"unsupported JMESPath expression {expression!r} at offset {pos}: "
                "minilog supports field names, quoted names, dots and [index]"
            )
        pos = m.end()
        if m.group("dot") is not None:
            if want_field:
                raise ValueError(
                    f"unexpected '.' in JMESPath expression {expression!r}"
                )
            want_field = after_dot = True
            continue
        if m.group("index") is not None:
            if after_dot:
                raise ValueError(f"expected a field name after '.' in {expression!r}")
            steps.append(int(m.group("index")))
            want_field = False
            continue
        if not want_field:
            raise ValueError(
                f"expected '.' or '[' in JMESPath expression {expression!r}"
            )
        quoted = m.group("quoted")
        steps.append(orjson.loads(quoted) if quoted is not None else m.group("ident"))
        want_field = after_dot = False
    if not steps or after_dot:
        raise ValueError(f"incomplete JMESPath expression {expression!r}")
    return tuple(steps)


def jmes_search(path: JmesPath, data: Any) -> Any:
    """Evaluate a compiled path; missing keys, wrong types, bad indexes give None."""
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


# One key, optionally '=' and a quoted or bare value, then a separator (a byte <= ' ')
# or the end; otherwise, as a third group, the single character where go-logfmt stops.
_LOGFMT_SCAN: Final = re.compile(
    r'([^\x00-\x20="]+)(?:=("(?:[^"\\]|\\.)*"|[^\x00-\x20="]*))?(?=[\x00-\x20]|\Z)'
    r"|([^\x00-\x20])"
)


def logfmt_scan(text: str) -> list[tuple[str, str, str]]:
    """Scan logfmt ``text`` into (key, raw value, stop) triples, in one regex pass.

    A raw value is bare, empty (a key without ``=``) or still quoted: pass it to
    ``logfmt_value``. A non-empty ``stop`` marks where go-logfmt's decoder fails (a
    stray ``"`` or ``=``, an unterminated quote): only the triples before it count.
    """
    return _LOGFMT_SCAN.findall(text)


def logfmt_value(raw: str) -> str:
    """The value of a raw value from ``logfmt_scan`` (unquoted, unescaped)."""
    if raw[:1] != '"':
        return raw
    return _unquote_logfmt(raw)


def _unquote_logfmt(raw: str) -> str:
    if "\\" not in raw:
        return raw[1:-1]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # go-logfmt is laxer than JSON about unknown escapes; keep them as written.
        return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value if isinstance(value, str) else raw[1:-1]


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


# ---------------------------------------------------------------------------- templates

#: A compiled template: the data (extracted values as strings, plus ``Value``) to text,
#: or None where Go's template execution fails.
Template = Callable[[Mapping[str, str]], "str | None"]

_ACTION: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_FIELD: Final = r"\.([A-Za-z_][A-Za-z0-9_]*)"
_FUNCS: Final = "(ToUpper|ToLower|TrimSpace)"
_FORMS: Final = (
    (re.compile(rf"\s*{_FIELD}\s*"), None),
    (re.compile(rf"\s*{_FIELD}\s*\|\s*{_FUNCS}\s*"), "pipe"),
    (re.compile(rf"\s*{_FUNCS}\s+{_FIELD}\s*"), "call"),
)
_APPLY: Final[dict[str | None, Callable[[str], str]]] = {
    None: str,
    "ToUpper": str.upper,
    "ToLower": str.lower,
    "TrimSpace": str.strip,
}


def compile_template(text: str) -> Template:
    """Compile the Go ``text/template`` subset of ``stage.replace``/``stage.template``.

    Literal text and ``{{ .Field }}``, ``{{ .Field | ToUpper }}`` or
    ``{{ ToLower .Field }}`` actions (``ToUpper``, ``ToLower``, ``TrimSpace``); a
    missing field prints ``<no value>`` as in Go. Anything else raises ``ValueError``.
    """
    parts: list[tuple[str, str, Callable[[str], str]]] = []  # literal, field, function
    pos = 0
    for m in _ACTION.finditer(text):
        field, func = _template_action(m.group(1))
        parts.append((text[pos : m.start()], field, _APPLY[func]))
        pos = m.end()
    if "{{" in text[pos:] or "}}" in text[pos:]:
        raise ValueError(f"unbalanced template delimiters in {text!r}")
    tail = text[pos:]
    if not parts:
        return lambda _data: tail

    def render(data: Mapping[str, str]) -> str | None:
        out: list[str] = []
        for literal, field, func in parts:
            out.append(literal)
            value = data.get(field)
            if value is not None:
                out.append(func(value))
            elif func is str:
                out.append("<no value>")  # how Go prints a missing map key
            else:
                return None  # Go fails: a missing key is not a string argument
        out.append(tail)
        return "".join(out)

    return render


def _template_action(action: str) -> tuple[str, str | None]:
    for pattern, form in _FORMS:
        m = pattern.fullmatch(action)
        if m is None:
            continue
        if form is None:
            return m.group(1), None
        if form == "pipe":
            return m.group(1), m.group(2)
        return m.group(2), m.group(1)
    raise ValueError(
        f"unsupported template action {{{{{action}}}}}: minilog supports "
        "{{ .Field }}, {{ .Field | F }} and {{ F .Field }} with F one of ToUpper, "
        "ToLower, TrimSpace"
    )


def template_fields(text: str) -> frozenset[str]:
    """The fields a template (valid for ``compile_template``) refers to."""
    return frozenset(_template_action(m.group(1))[0] for m in _ACTION.finditer(text))
