"""Label names and label sets: the names minilog gives meaning to, canonical text,
name validation and parsing.

Owns every label name minilog reads or writes by name (``__tenant_id__``,
``service_name``, the ``__meta_docker_*`` names of Docker discovery), the rule that
``__``-prefixed labels are internal, the canonical ``{a="x", b="y"}`` form (values
quoted as Go's ``strconv.Quote``, see ``_go``), legacy label-name checks and a parser
for the Prometheus label-set grammar Loki accepts in a push
(``promql/parser.ParseMetric``). Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from minilog._go import (
    as_go_sees_it,
    go_quote,
    quote_rune,
    sharp_u,
    surrogate_free,
    unquote_char,
)
from minilog.errors import EscapeError, LabelError

__all__ = [
    "ADDRESS_LABEL",
    "DOCKER_CONTAINER_ID",
    "DOCKER_CONTAINER_LABEL_PREFIX",
    "DOCKER_CONTAINER_NAME",
    "DOCKER_CONTAINER_NETWORK_MODE",
    "DOCKER_LOG_STREAM",
    "DOCKER_META_PREFIX",
    "DOCKER_NETWORK_ID",
    "DOCKER_NETWORK_INGRESS",
    "DOCKER_NETWORK_INTERNAL",
    "DOCKER_NETWORK_IP",
    "DOCKER_NETWORK_LABEL_PREFIX",
    "DOCKER_NETWORK_NAME",
    "DOCKER_NETWORK_SCOPE",
    "DOCKER_PORT_PRIVATE",
    "DOCKER_PORT_PUBLIC",
    "DOCKER_PORT_PUBLIC_IP",
    "INTERNAL_PREFIX",
    "SERVICE_NAME",
    "TENANT_LABEL",
    "format_labels",
    "format_pairs",
    "is_internal",
    "is_valid_label_name",
    "parse_label_pairs",
    "parse_label_set",
    "parse_labels",
    "public_labels",
    "validate_label_name",
]

# -------------------------------------------------------------------------------------
# Label names with a meaning

#: Labels whose names start with this are internal: they steer minilog (and Alloy)
#: and never reach Loki.
INTERNAL_PREFIX: Final = "__"
#: The internal label that routes an entry to a tenant (``X-Scope-OrgID``).
TENANT_LABEL: Final = "__tenant_id__"
#: The label Loki 3 adds to a stream that lacks it (``discover_service_name``).
SERVICE_NAME: Final = "service_name"
#: Prometheus' target address label, which Docker discovery sets.
ADDRESS_LABEL: Final = "__address__"

#: What ``discovery.docker`` exports, as Prometheus' Docker SD names it.
DOCKER_META_PREFIX: Final = "__meta_docker_"
DOCKER_CONTAINER_ID: Final = DOCKER_META_PREFIX + "container_id"
DOCKER_CONTAINER_NAME: Final = DOCKER_META_PREFIX + "container_name"
DOCKER_CONTAINER_NETWORK_MODE: Final = DOCKER_META_PREFIX + "container_network_mode"
DOCKER_CONTAINER_LABEL_PREFIX: Final = DOCKER_META_PREFIX + "container_label_"
DOCKER_NETWORK_ID: Final = DOCKER_META_PREFIX + "network_id"
DOCKER_NETWORK_NAME: Final = DOCKER_META_PREFIX + "network_name"
DOCKER_NETWORK_SCOPE: Final = DOCKER_META_PREFIX + "network_scope"
DOCKER_NETWORK_INTERNAL: Final = DOCKER_META_PREFIX + "network_internal"
DOCKER_NETWORK_INGRESS: Final = DOCKER_META_PREFIX + "network_ingress"
DOCKER_NETWORK_LABEL_PREFIX: Final = DOCKER_META_PREFIX + "network_label_"
DOCKER_NETWORK_IP: Final = DOCKER_META_PREFIX + "network_ip"
DOCKER_PORT_PRIVATE: Final = DOCKER_META_PREFIX + "port_private"
DOCKER_PORT_PUBLIC: Final = DOCKER_META_PREFIX + "port_public"
DOCKER_PORT_PUBLIC_IP: Final = DOCKER_META_PREFIX + "port_public_ip"
#: Set by ``loki.source.docker`` on each stream (``stdout`` or ``stderr``) before its
#: ``relabel_rules`` run.
DOCKER_LOG_STREAM: Final = DOCKER_META_PREFIX + "container_log_stream"


def is_internal(name: str) -> bool:
    """Whether ``name`` is an internal label (``__``-prefixed): never sent to Loki."""
    return name.startswith(INTERNAL_PREFIX)


def public_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` without the internal ones: what Loki gets to see."""
    return {k: v for k, v in labels.items() if not k.startswith(INTERNAL_PREFIX)}


_LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def format_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """Canonical text of already sorted ``(name, value)`` pairs, empty values kept."""
    return (
        "{" + ", ".join([name + "=" + go_quote(value) for name, value in pairs]) + "}"
    )


def format_labels(labels: Mapping[str, str]) -> str:
    """Loki's canonical label text ``{a="x", b="y"}``: sorted, empty values dropped.

    Values are quoted with :func:`go_quote`, so the result is byte-identical to
    Promtail's ``labelsMapToString`` and Prometheus ``Labels.String``.
    """
    return (
        "{"
        + ", ".join(
            [
                name + "=" + go_quote(value)
                for name, value in sorted(labels.items())
                if value
            ]
        )
        + "}"
    )


def is_valid_label_name(name: str) -> bool:
    """True for a legacy Prometheus label name: ``[a-zA-Z_][a-zA-Z0-9_]*``."""
    return _LEGACY_NAME.match(name) is not None


def validate_label_name(name: str) -> None:
    """Raise :class:`LabelError` unless ``name`` is a legacy Prometheus label name."""
    if not _LEGACY_NAME.match(name):
        raise LabelError(
            f"invalid label name {go_quote(name)}: "
            "must match [a-zA-Z_][a-zA-Z0-9_]* (letters, digits, underscores)"
        )


# -------------------------------------------------------------------------------------
# Parser for the label-set grammar of promql/parser.ParseMetric (generated_parser.y
# rules ``metric``, ``label_set``, ``label_set_item``; lexer lex.go). Error texts and
# positions follow Prometheus: "<line>:<col>: parse error: <msg>", col in bytes from 1.

_EOF = "EOF"
_IDENT = "IDENTIFIER"
_STRING = "STRING"
_PUNCT = "PUNCT"  # one of { } , = and the operators that are illegal here


class _Token:
    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, pos: int, text: str, value: str = "") -> None:
        self.kind = kind
        self.pos = pos  # character offset into the input
        self.text = text  # source text of the token
        self.value = value  # unquoted value of a string

    def desc(self) -> str:
        """The token as Prometheus' ``Item.desc()`` names it in "unexpected" errors."""
        if self.kind == _EOF:
            return "end of input"
        if self.kind == _IDENT:
            return "identifier " + go_quote(self.text)
        if self.kind == _STRING:
            shown = self.text
            # Go's "%.10q" truncates the string to 10 runes before quoting.
            quoted = go_quote(shown[:10]) + ("..." if len(shown) > 10 else "")
            return "string " + quoted
        if self.text in ("!=", "=~", "!~"):
            return f"<op:{self.text}>"
        return go_quote(self.text)


class _LabelParser:
    __slots__ = ("_n", "_pos", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._n = len(text)

    # -- errors ------------------------------------------------------------------------

    def _error(self, pos: int, message: str) -> LabelError:
        prefix = self._text[:pos]
        line = prefix.count("\n") + 1
        line_start = prefix.rfind("\n") + 1
        # Prometheus counts columns in bytes.
        col = len(prefix[line_start:].encode("utf-8", "surrogatepass")) + 1
        return LabelError(f"{line}:{col}: parse error: {message}")

    def _unexpected(self, tok: _Token, expected: str) -> LabelError:
        return self._error(
            tok.pos, f"unexpected {tok.desc()} in label set, expected {expected}"
        )

    # -- lexer -------------------------------------------------------------------------

    def _skip_space(self) -> None:
        text, n, pos = self._text, self._n, self._pos
        while pos < n:
            ch = text[pos]
            if ch in " \t\n\r":
                pos += 1
            elif ch == "#":
                # A line comment runs to the end of the line.
                end = text.find("\n", pos)
                pos = n if end < 0 else end
            else:
                break
        self._pos = pos

    def _next_in_braces(self) -> _Token:
        self._skip_space()
        text, pos = self._text, self._pos
        if pos >= self._n:
            raise self._error(pos, "unexpected end of input inside braces")
        ch = text[pos]
        if ch.isascii() and (ch.isalpha() or ch == "_"):
            end = pos + 1
            while end < self._n and (
                text[end].isascii() and (text[end].isalnum() or text[end] == "_")
            ):
                end += 1
            self._pos = end
            return _Token(_IDENT, pos, text[pos:end])
        if ch in "\"'":
            return self._lex_string(ch)
        if ch == "`":
            return self._lex_raw_string()
        if ch in ",}":
            self._pos = pos + 1
            return _Token(_PUNCT, pos, ch)
        if ch == "=":
            two = text[pos : pos + 2]
            width = 2 if two == "=~" else 1
            self._pos = pos + width
            return _Token(_PUNCT, pos, text[pos : pos + width])
        if ch == "!":
            nxt = text[pos + 1 : pos + 2]
            if nxt in ("=", "~"):
                self._pos = pos + 2
                return _Token(_PUNCT, pos, "!" + nxt)
            raise self._error(
                pos,
                f"unexpected character after '!' inside braces: {quote_rune(nxt)}",
            )
        if ch == "{":
            raise self._error(pos, "unexpected left brace '{'")
        raise self._error(pos, f"unexpected character inside braces: {quote_rune(ch)}")

    def _lex_string(self, quote: str) -> _Token:
        text, n = self._text, self._n
        start = self._pos
        pos = start + 1
        out: list[str] = []
        chunk_start = pos
        while True:
            if pos >= n:
                raise self._error(start, "unterminated quoted string")
            ch = text[pos]
            if ch == quote:
                out.append(text[chunk_start:pos])
                self._pos = pos + 1
                value = "".join(out)
                if not surrogate_free(value):
                    # Byte escapes (\xHH, \NNN) that spell UTF-8 together form one rune.
                    value = as_go_sees_it(value)
                return _Token(_STRING, start, text[start : pos + 1], value)
            if ch == "\n":
                raise self._error(start, "unterminated quoted string")
            if "\ud800" <= ch <= "\udfff":
                raise self._error(start, "invalid UTF-8 rune")
            if ch == "\\":
                out.append(text[chunk_start:pos])
                pos = self._lex_escape(start, pos + 1, quote, out)
                chunk_start = pos
                continue
            pos += 1

    def _lex_escape(self, start: int, pos: int, quote: str, out: list[str]) -> int:
        """Decode the escape after a backslash at ``pos``; return the next position.

        Errors are Prometheus' lexer's, at the start of the string.
        """
        try:
            value, pos, is_byte = unquote_char(self._text, pos, quote)
        except EscapeError as exc:
            if exc.kind == "unterminated":
                message = "escape sequence not terminated"
            elif exc.kind == "unknown":
                message = f"unknown escape sequence {sharp_u(exc.char)}"
            elif exc.kind == "illegal":
                message = f"illegal character {sharp_u(exc.char)} in escape sequence"
            else:
                message = "escape sequence is an invalid Unicode code point"
            raise self._error(start, message) from None
        if is_byte:
            # \NNN and \xHH are single bytes, not code points (Go strconv.Unquote).
            value = bytes((ord(value),)).decode("utf-8", "surrogateescape")
        out.append(value)
        return pos

    def _lex_raw_string(self) -> _Token:
        start = self._pos
        end = self._text.find("`", start + 1)
        if end < 0:
            raise self._error(start, "unterminated raw string")
        value = self._text[start + 1 : end]
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            raise self._error(start, "invalid UTF-8 rune")
        self._pos = end + 1
        return _Token(_STRING, start, self._text[start : end + 1], value)

    # -- grammar -----------------------------------------------------------------------

    def parse(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        self._skip_space()
        text = self._text
        if self._pos >= self._n:
            raise self._error(self._pos, "unexpected end of input")
        if text[self._pos] != "{":
            pairs.append(("__name__", self._metric_name()))
            self._skip_space()
        if self._pos < self._n and text[self._pos] == "{":
            self._pos += 1
            self._label_set(pairs)
        self._skip_space()
        if self._pos < self._n:
            raise self._error(self._pos, self._describe_trailing())
        return pairs

    def _metric_name(self) -> str:
        text, pos = self._text, self._pos
        ch = text[pos]
        if not (ch.isascii() and (ch.isalpha() or ch in "_:")):
            raise self._error(pos, f"unexpected character: {quote_rune(ch)}")
        end = pos + 1
        while (
            end < self._n
            and text[end].isascii()
            and (text[end].isalnum() or text[end] in "_:")
        ):
            end += 1
        self._pos = end
        return text[pos:end]

    def _describe_trailing(self) -> str:
        ch = self._text[self._pos]
        if ch == "}":
            return "unexpected right brace '}'"
        return f"unexpected character: {quote_rune(ch)}"

    def _label_set(self, pairs: list[tuple[str, str]]) -> None:
        tok = self._next_in_braces()
        if tok.kind == _PUNCT and tok.text == "}":
            return
        while True:
            self._label_item(tok, pairs)
            sep = self._next_in_braces()
            if sep.kind != _PUNCT or sep.text not in (",", "}"):
                raise self._unexpected(sep, '"," or "}"')
            if sep.text == "}":
                return
            tok = self._next_in_braces()
            if tok.kind == _PUNCT and tok.text == "}":
                return  # trailing comma

    def _label_item(self, tok: _Token, pairs: list[tuple[str, str]]) -> None:
        if tok.kind == _IDENT:
            name = tok.text
        elif tok.kind == _STRING:
            name = tok.value
        else:
            raise self._unexpected(tok, 'identifier or "}"')
        eq = self._next_in_braces()
        if tok.kind == _STRING and eq.kind == _PUNCT and eq.text in (",", "}"):
            # A lone quoted string is the metric name (Prometheus 3 grammar).
            pairs.append(("__name__", name))
            self._pos = eq.pos
            return
        if eq.kind != _PUNCT or eq.text != "=":
            raise self._unexpected(eq, '"="')
        value = self._next_in_braces()
        if value.kind != _STRING:
            raise self._unexpected(value, "string")
        pairs.append((name, value.value))


# The common case, a brace set of name="value" items without escapes, is recognised
# by one regular expression and split by another; anything else goes to the parser.
_SP = "[ \t\n\r]*"
_SURROGATES = "\ud800-\udfff"  # invalid UTF-8 stand-ins: the parser reports those
_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_ITEM = rf'{_SP}{_NAME}{_SP}={_SP}"[^"\\\n{_SURROGATES}]*"{_SP}'
_SIMPLE_SET = re.compile(rf"{_SP}\{{(?:{_ITEM}(?:,{_ITEM})*,?)?{_SP}\}}{_SP}\Z")
_SIMPLE_PAIR = re.compile(rf'({_NAME}){_SP}={_SP}"([^"]*)"')


def parse_label_set(text: str) -> list[tuple[str, str]]:
    """:func:`parse_label_pairs` without its fast path: the grammar parser alone."""
    return _LabelParser(text).parse()


def parse_label_pairs(text: str) -> list[tuple[str, str]]:
    """Parse a label set into ``(name, value)`` pairs in source order.

    Duplicates and empty values are kept (Loki rejects or drops them in later steps).
    Raises :class:`LabelError` with a Prometheus-style message, e.g.
    ``1:5: parse error: unexpected character inside braces: '.'``.
    """
    if _SIMPLE_SET.match(text):
        return _SIMPLE_PAIR.findall(text)
    return _LabelParser(text).parse()


def parse_labels(text: str) -> dict[str, str]:
    """Parse Loki/Prometheus label-set text (``{a="x", b='y', c=`z`,}``) into a dict.

    Empty values are dropped, as Loki's label builder does. A name given twice raises
    :class:`LabelError` (Loki refuses such a stream).
    """
    labels: dict[str, str] = {}
    for name, value in parse_label_pairs(text):
        if name in labels:
            raise LabelError(f"duplicate label name: {go_quote(name)}")
        labels[name] = value
    return {name: value for name, value in labels.items() if value}
