"""The Alloy standard library as Python callables, plus the ``Secret`` value type.

Owns the functions and constants a config can call (``sys.env``, ``string.format``,
``encoding.from_json``, ...) under both their namespaced and their deprecated flat
names, with Alloy v1.18's semantics. Alloy calls a Go function by decoding each
argument into the parameter's Go type, so a number passed where a string is wanted
becomes its text (``string.join([0, 1], ",")`` is ``"0,1"``) and a secret never
becomes a string; the helpers here do the same. Problems are raised as
:class:`ArgError` (about one argument, which the evaluator points at) or
:class:`FuncError` (the function's own error, shown after its name), as Alloy reports
them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import platform
import posixpath
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Final, TypeVar

from minilog._go import format_float, format_float_f, go_quote, go_type, go_value

__all__ = [
    "EXPERIMENTAL",
    "STDLIB_NAMES",
    "ArgError",
    "FuncError",
    "Namespace",
    "Secret",
    "alloy_type",
    "build_stdlib",
    "go_format",
    "is_raw",
    "number_text",
    "type_name",
    "values_equal",
]


class Secret(str):
    """A string Alloy never displays: ``repr`` hides it; ``nonsensitive`` unwraps it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('(secret)')"


class Namespace(dict[str, Any]):
    """A dict of names rather than a value: the stdlib namespaces and the component-ID
    levels.

    A missing key in a namespace means "no such component/function", not "no such
    field".
    """

    __slots__ = ("kind",)

    def __init__(self, kind: str, items: Mapping[str, Any] | None = None) -> None:
        super().__init__(items or {})
        self.kind = kind


class ArgError(TypeError):
    """Argument ``index`` (at ``path`` inside it: array indices, object keys) is
    wrong; ``message`` follows the argument's text, as in Alloy
    (``[0, true][1] should be string, got bool``)."""

    def __init__(
        self, index: int, message: str, path: tuple[int | str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.index = index
        self.message = message
        self.path = path


class FuncError(ValueError):
    """The function itself failed; Alloy shows the message after the function's name
    (``encoding.to_json jsonEncode only supports map``). ``bare`` messages are shown
    alone (Alloy's own argument-count checks of its raw functions)."""

    def __init__(self, message: str, *, bare: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.bare = bare


#: Stdlib functions Alloy marks experimental: a config that calls one needs
#: ``--stability.level=experimental``.
EXPERIMENTAL: Final = frozenset({"array.combine_maps", "array.group_by"})

#: The top-level names the stdlib defines (``build_stdlib().keys()``), so callers
#: can filter them out of ``references``.
STDLIB_NAMES: Final = frozenset(
    {
        "array",
        "base64_decode",
        "coalesce",
        "concat",
        "constants",
        "convert",
        "encoding",
        "env",
        "file",
        "format",
        "join",
        "json_decode",
        "json_path",
        "nonsensitive",
        "replace",
        "split",
        "string",
        "sys",
        "to_lower",
        "to_upper",
        "trim",
        "trim_prefix",
        "trim_space",
        "trim_suffix",
        "yaml_decode",
    }
)

_F = TypeVar("_F", bound=Callable[..., Any])


def _raw(fn: _F) -> _F:
    """Marks a function that checks its own argument count (Alloy's raw functions)."""
    fn.alloy_raw = True  # type: ignore[attr-defined]
    return fn


def is_raw(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` checks its own argument count (else the evaluator does)."""
    return bool(getattr(fn, "alloy_raw", False))


def type_name(value: Any) -> str:
    """minilog's name for the type of a Python value (``secret`` for a ``Secret``)."""
    if isinstance(value, Secret):
        return "secret"
    return alloy_type(value)


def alloy_type(value: Any) -> str:
    """Alloy's name for the type of a value, as its type errors say it (a secret is
    a capsule there)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Secret):
        return "capsule"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    if callable(value):
        return "function"
    return "capsule"


def number_text(value: int | float) -> str:
    """A number as Alloy turns it into a string (Go's ``FormatFloat(f, 'f', -1)``)."""
    if isinstance(value, float):
        return format_float_f(value)
    return str(value)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _mismatch(expected: str, value: Any) -> str:
    return f"should be {expected}, got {alloy_type(value)}"


# Alloy decodes each argument into the Go parameter's type; these are those decodings.


def _as_string(value: Any, index: int, path: tuple[int | str, ...] = ()) -> str:
    if isinstance(value, Secret):
        raise ArgError(index, "secrets may not be converted into strings", path)
    if isinstance(value, str):
        return str.__str__(value)
    if _is_number(value):
        return number_text(value)
    raise ArgError(index, _mismatch("string", value), path)


def _as_strings(value: Any, index: int) -> list[str]:
    if not isinstance(value, list | tuple):
        raise ArgError(index, _mismatch("array", value))
    return [_as_string(item, index, (i,)) for i, item in enumerate(value)]


def _as_array(value: Any, index: int) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ArgError(index, _mismatch("array", value))
    return value


def _as_bool(value: Any, index: int) -> bool:
    if not isinstance(value, bool):
        raise ArgError(index, _mismatch("bool", value))
    return value


def _env(name: Any) -> str:
    return os.environ.get(_as_string(name, 0), "")


@_raw
def _concat(*lists: Any) -> list[Any]:
    out: list[Any] = []
    for i, item in enumerate(lists):
        out.extend(_as_array(item, i))
    return out


@_raw
def _coalesce(*values: Any) -> Any:
    for value in values:
        if value is None or value is False:
            continue
        if isinstance(value, str | list | tuple | dict) and not value:
            continue
        if _is_number(value) and value == 0:
            continue
        return value
    # Alloy returns the last argument when every one is a zero value.
    return values[-1] if values else None


# ---------------------------------------------------------------- JSON


def _go_char(c: str) -> str:
    """How Go's encoding/json quotes a character in its errors (``quoteChar``)."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + go_quote(c)[1:-1] + "'"


def _json_number(text: str) -> int | float:
    # Go decodes every JSON number into a float64: integers beyond 2^53 lose
    # precision exactly as there; smaller ones stay ints so they print as such.
    value = int(text)
    return value if abs(value) <= 2**53 else float(value)


def _json_constant(name: str) -> Any:
    raise ValueError(
        f"invalid character {_go_char(name[0])} looking for beginning of value"
    )


def _from_json(text: Any) -> Any:
    source = _as_string(text, 0)
    try:
        return json.loads(source, parse_int=_json_number, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise FuncError(_go_json_error(exc)) from None
    except ValueError as exc:
        raise FuncError(str(exc)) from None


def _go_json_error(exc: json.JSONDecodeError) -> str:
    """encoding/json's wording of the usual syntax errors."""
    doc, pos = exc.doc, exc.pos
    if pos >= len(doc) or exc.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input"
    char = _go_char(doc[pos])
    if exc.msg == "Extra data":
        return f"invalid character {char} after top-level value"
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if exc.msg == "Expecting ':' delimiter":
        return f"invalid character {char} after object key"
    if exc.msg == "Expecting ',' delimiter":
        opener = _innermost_open(doc, pos)
        where = "object key:value pair" if opener == "{" else "array element"
        return f"invalid character {char} after {where}"
    if exc.msg.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if exc.msg.startswith("Invalid \\escape"):
        return f"invalid character {char} in string escape code"
    return f"invalid character {char} looking for beginning of value"


def _innermost_open(doc: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for c in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            stack.append(c)
        elif c in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _secret_path(value: Any) -> tuple[int | str, ...] | None:
    """Where the first secret inside ``value`` is, or ``None``."""
    if isinstance(value, Secret):
        return ()
    items: Any = ()
    if isinstance(value, list | tuple):
        items = enumerate(value)
    elif isinstance(value, Mapping):
        items = value.items()
    for key, item in items:
        inner = _secret_path(item)
        if inner is not None:
            return (key, *inner)
    return None


_JSON_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_JSON_SPECIAL: Final = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _json_string(text: str) -> str:
    def escape(m: re.Match[str]) -> str:
        c = m.group(0)
        if c in _JSON_ESCAPES:
            return _JSON_ESCAPES[c]
        if "\ud800" <= c <= "\udfff":
            return "\\ufffd"  # Go writes invalid UTF-8 as an escaped U+FFFD
        return f"\\u{ord(c):04x}"

    return '"' + _JSON_SPECIAL.sub(escape, text) + '"'


def _json_float(value: float) -> str:
    """Go's encoding/json float64 text: shortest, exponent only past 1e21 or below
    1e-6, written ``1e-07`` -> ``1e-7``."""
    if math.isnan(value) or math.isinf(value):
        raise FuncError(f"json: unsupported value: {format_float(value)}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if not exponent:
            mantissa, exponent = f"{value:e}".split("e")
        sign = exponent[0] if exponent[0] in "+-" else "+"
        digits = exponent.lstrip("+-").lstrip("0")
        # strconv writes at least two exponent digits; encoding/json then turns
        # "e-07" into "e-7" (negative exponents only).
        digits = digits if sign == "-" else digits.rjust(2, "0")
        return f"{mantissa.removesuffix('.0')}e{sign}{digits}"
    return format_float_f(value)


def _json_encode(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_encode(v) for v in value) + "]"
    if isinstance(value, Mapping):
        # Go's encoding/json writes map keys sorted.
        return (
            "{"
            + ",".join(
                f"{_json_string(str(k))}:{_json_encode(value[k])}"
                for k in sorted(value)
            )
            + "}"
        )
    raise FuncError(f"json: unsupported type: {alloy_type(value)}")


def _to_json(value: Any) -> str:
    if not isinstance(value, Mapping) or isinstance(value, Namespace):
        raise FuncError("jsonEncode only supports map")
    where = _secret_path(value)
    if where is not None:
        # Unlike Alloy, which would write the secret's text into the result.
        raise ArgError(0, "secrets may not be converted into strings", where)
    return _json_encode(value)


def _from_yaml(text: Any) -> Any:
    # Imported on first use: PyYAML costs an agent that never decodes YAML ~15 ms.
    from minilog.config._yaml import YAMLDecodeError, decode_yaml

    try:
        return decode_yaml(_as_string(text, 0))
    except YAMLDecodeError as exc:
        raise FuncError(str(exc)) from None


# ---------------------------------------------------------------- base64, URLs

_B64: Final = re.compile(r"[A-Za-z0-9+/]*")
_B64_URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(text: Any, *, url: bool) -> str:
    source = _as_string(text, 0)
    # Go's decoder skips newlines; anything else outside the alphabet is an error
    # at its byte offset, and so is a missing or misplaced "=".
    stripped = source.replace("\r", "").replace("\n", "")
    body = stripped.rstrip("=")
    alphabet = _B64_URL if url else _B64
    bad = alphabet.match(body)
    assert bad is not None
    if bad.end() < len(body) or len(stripped) % 4 or len(stripped) - len(body) > 2:
        offset = len(source.encode()[: _byte_offset(source, bad.end(), body)])
        raise FuncError(f"illegal base64 data at input byte {offset}")
    try:
        raw = base64.b64decode(stripped, altchars=b"-_" if url else None, validate=True)
    except (binascii.Error, ValueError):
        raise FuncError(
            f"illegal base64 data at input byte {len(source.encode())}"
        ) from None
    return raw.decode("utf-8", errors="replace")


def _byte_offset(source: str, end: int, body: str) -> int:
    # Where Go stops: the first bad character, or the end of the last whole quantum.
    if end < len(body):
        return source.find(body[end]) if body[end] in source else end
    return len(body) - len(body) % 4


def _b64encode(text: Any, *, url: bool) -> str:
    raw = _as_string(text, 0).encode()
    return (base64.urlsafe_b64encode(raw) if url else base64.b64encode(raw)).decode(
        "ascii"
    )


_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _url_encode(text: Any) -> str:
    # Go's url.QueryEscape: space becomes '+'; only A-Z a-z 0-9 - _ . ~ stay as is.
    return urllib.parse.quote_plus(_as_string(text, 0), safe="")


def _url_decode(text: Any) -> str:
    source = _as_string(text, 0)
    bad = _BAD_PERCENT.search(source)
    if bad is not None:
        start = bad.start()
        raise FuncError(f'invalid URL escape "{source[start : start + 3]}"')
    return urllib.parse.unquote_plus(source, errors="replace")


# ---------------------------------------------------------------- strings


def _join(items: Any, sep: Any) -> str:
    parts = _as_strings(items, 0)
    return _as_string(sep, 1).join(parts)


def _replace(text: Any, old: Any, new: Any) -> str:
    return _as_string(text, 0).replace(_as_string(old, 1), _as_string(new, 2))


def _split(text: Any, sep: Any) -> list[str]:
    source, separator = _as_string(text, 0), _as_string(sep, 1)
    # Go's strings.Split with an empty separator splits into characters.
    return list(source) if separator == "" else source.split(separator)


def _simple_case(text: str, upper: bool) -> str:
    # Go maps each character on its own (no "ß" -> "SS"): a mapping that would
    # change the length keeps the character.
    out = []
    for c in text:
        mapped = c.upper() if upper else c.lower()
        out.append(mapped if len(mapped) == 1 else c)
    return "".join(out)


def _to_lower(text: Any) -> str:
    return _simple_case(_as_string(text, 0), upper=False)


def _to_upper(text: Any) -> str:
    return _simple_case(_as_string(text, 0), upper=True)


#: Go's unicode.IsSpace (Python's isspace also counts U+001C..U+001F).
_GO_SPACE: Final = (
    "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _trim_space(text: Any) -> str:
    return _as_string(text, 0).strip(_GO_SPACE)


def _trim(text: Any, cutset: Any) -> str:
    source, chars = _as_string(text, 0), _as_string(cutset, 1)
    # str.strip("") strips whitespace; Go's Trim with an empty cutset strips nothing.
    return source.strip(chars) if chars else source


def _trim_prefix(text: Any, prefix: Any) -> str:
    return _as_string(text, 0).removeprefix(_as_string(prefix, 1))


def _trim_suffix(text: Any, suffix: Any) -> str:
    return _as_string(text, 0).removesuffix(_as_string(suffix, 1))


def _nonsensitive(value: Any) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    raise ArgError(0, _mismatch("capsule", value))


@_raw
def _path_join(*parts: Any) -> str:
    texts = [_as_string(part, i) for i, part in enumerate(parts)]
    joined = "/".join(p for p in texts if p)
    if not joined:
        return ""
    # Go's filepath.Clean: unlike normpath it folds a leading "//" to "/".
    cleaned = posixpath.normpath(joined)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


# Flags, an optional [n] argument index, width, precision, another [n], the verb.
_VERB: Final = re.compile(
    r"%([-+# 0]*)(?:\[(\d+)\])?(\d*)(?:\.(\d*))?(?:\[(\d+)\])?(.|$)", re.DOTALL
)


def _bad_verb(verb: str, value: Any) -> str:
    return f"%!{verb}({go_type(value)}={go_value(value)})"


def _pad(text: str, flags: str, width: str, *, numeric: bool) -> str:
    if not width:
        return text
    w = int(width)
    if "-" in flags:
        return text.ljust(w)
    if "0" in flags and numeric:
        sign = text[0] if text[:1] in ("-", "+") else ""
        return sign + text[len(sign) :].rjust(w - len(sign), "0")
    return text.rjust(w)


def _format_int(value: int, verb: str, flags: str) -> str:
    spec = {"d": "d", "b": "b", "o": "o", "O": "o", "x": "x", "X": "X"}[verb]
    digits = format(abs(value), spec)
    if verb == "O" or ("#" in flags and verb != "d"):
        digits = {"b": "0b", "o": "0", "O": "0o", "x": "0x", "X": "0X"}[verb] + digits
    sign = "-" if value < 0 else "+" if "+" in flags else " " if " " in flags else ""
    return sign + digits


def _format_one(verb: str, flags: str, width: str, prec: str | None, value: Any) -> str:
    numeric = False
    if verb == "v":
        text = go_value(value)
    elif verb == "s":
        if not isinstance(value, str):
            return _bad_verb(verb, value)
        text = str.__str__(value)
        if prec is not None:
            text = text[: int(prec or 0)]
    elif verb == "q":
        if not isinstance(value, str):
            return _bad_verb(verb, value)
        text = go_quote(value)
    elif verb in "dboxXOc":
        if isinstance(value, str) and verb in "xX":
            text = value.encode().hex()
            text = text.upper() if verb == "X" else text
        elif isinstance(value, bool) or not isinstance(value, int):
            return _bad_verb(verb, value)
        elif verb == "c":
            text = chr(value) if 0 <= value <= 0x10FFFF else "\ufffd"
        else:
            text = _format_int(value, verb, flags)
            numeric = True
    elif verb in "feEgG":
        if isinstance(value, bool) or not isinstance(value, float):
            return _bad_verb(verb, value)
        digits = 6 if prec is None else int(prec or 0)
        text = (
            format_float(value)
            if verb in "gG" and prec is None
            else f"{value:{'+' if '+' in flags else ''}.{digits}{verb}}"
        )
        numeric = True
    elif verb == "t":
        if not isinstance(value, bool):
            return _bad_verb(verb, value)
        text = "true" if value else "false"
    else:
        return _bad_verb(verb, value)
    return _pad(text, flags, width, numeric=numeric)


def go_format(fmt: Any, *args: Any) -> str:
    """Go's ``fmt.Sprintf`` for the verbs Alloy documents (%% %t %b %d %o %x %X %e
    %E %f %g %G %s %q, plus %v and %c) and ``[n]`` argument indexes.

    Secrets format as their text, as in Alloy, but then the result is a ``Secret`` too,
    so formatting cannot leak one.
    """
    text = _sprintf(_as_string(fmt, 0), args)
    return Secret(text) if any(isinstance(a, Secret) for a in args) else text


def _sprintf(fmt: str, args: tuple[Any, ...]) -> str:
    out: list[str] = []
    pos = 0
    argi = 0
    reordered = False
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, index1, width, prec, index2, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if verb == "":
            out.append("%!(NOVERB)")
            continue
        index = index2 or index1
        if index is not None:
            reordered = True
            n = int(index)
            if not 1 <= n <= len(args):
                out.append(f"%!{verb}(BADINDEX)")
                continue
            argi = n - 1
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_one(verb, flags, width, prec, args[argi]))
        argi += 1
    out.append(fmt[pos:])
    if not reordered and argi < len(args):
        extra = ", ".join(f"{go_type(a)}={go_value(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


# ---------------------------------------------------------------- json_path

_JP_NAME: Final = re.compile(r"[^.\[\]\s()]+")
_JP_FILTER: Final = re.compile(
    r"\s*@((?:\.[^\s.=!<>\[\]()]+)*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*$"
)


def _json_path(document: str, path: str) -> list[Any]:
    """A JSONPath subset of ojg's ``jp`` (which Alloy uses); always returns a list.

    Supported: ``$``, ``.name``, ``['name']``, ``[n]`` (negative too), ``[a:b]``,
    ``*``, ``..`` (recursive descent), unions ``[0,2]`` and simple filters
    ``[?(@.a.b == "x")]`` / ``[?(@.a)]``.
    """
    document = _as_string(document, 0)
    path = _as_string(path, 1)
    nodes = [_from_json(document)]
    i = 1 if path.startswith(("$", "@")) else 0
    while i < len(path):
        if path.startswith("..", i):
            nodes = [d for n in nodes for d in _descendants(n)]
            i += 2
            if i < len(path) and path[i] == "[":
                continue
            nodes, i = _jp_dot(nodes, path, i)
        elif path[i] == ".":
            nodes, i = _jp_dot(nodes, path, i + 1)
        elif path[i] == "[":
            end = _jp_bracket_end(path, i)
            nodes = _jp_select(nodes, path[i + 1 : end])
            i = end + 1
        else:
            # ojg also accepts a bare leading name, as in "key.sub".
            nodes, i = _jp_dot(nodes, path, i)
    return nodes


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node.values())
    return list(node) if isinstance(node, list) else []


def _descendants(node: Any) -> list[Any]:
    out = [node]
    for child in _children(node):
        out.extend(_descendants(child))
    return out


def _jp_dot(nodes: list[Any], path: str, i: int) -> tuple[list[Any], int]:
    if path.startswith("*", i):
        return [c for n in nodes for c in _children(n)], i + 1
    m = _JP_NAME.match(path, i)
    if m is None:
        raise ValueError(f"invalid JSONPath {path!r} at offset {i}")
    name = m.group(0)
    return [n[name] for n in nodes if isinstance(n, dict) and name in n], m.end()


def _jp_bracket_end(path: str, i: int) -> int:
    depth = 0
    quote = ""
    for j in range(i, len(path)):
        c = path[j]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"invalid JSONPath {path!r}: unclosed '['")


def _jp_select(nodes: list[Any], sel: str) -> list[Any]:
    sel = sel.strip()
    if sel == "*":
        return [c for n in nodes for c in _children(n)]
    if sel.startswith("?(") and sel.endswith(")"):
        return [c for n in nodes for c in _children(n) if _jp_filter(c, sel[2:-1])]
    out: list[Any] = []
    for part in (p.strip() for p in sel.split(",")):
        if part[:1] in ("'", '"') and part[-1:] == part[:1]:
            name = part[1:-1]
            out.extend(n[name] for n in nodes if isinstance(n, dict) and name in n)
        elif ":" in part:
            bounds = [int(b) if b.strip() else None for b in part.split(":")]
            if len(bounds) > 3:
                raise ValueError(f"invalid JSONPath slice [{part}]")
            window = slice(*bounds)
            for n in nodes:
                if isinstance(n, list):
                    out.extend(n[window])
        else:
            try:
                index = int(part)
            except ValueError:
                raise ValueError(f"unsupported JSONPath selector [{part}]") from None
            out.extend(
                n[index]
                for n in nodes
                if isinstance(n, list) and -len(n) <= index < len(n)
            )
    return out


def _jp_filter(node: Any, expr: str) -> bool:
    m = _JP_FILTER.match(expr)
    if m is None:
        raise ValueError(f"unsupported JSONPath filter ?({expr})")
    value = node
    for name in filter(None, m.group(1).split(".")):
        if not isinstance(value, dict) or name not in value:
            return False
        value = value[name]
    op, literal = m.group(2), m.group(3)
    if op is None:
        return True
    text = literal.strip()
    if text[:1] == "'" and text[-1:] == "'":
        text = json.dumps(text[1:-1])
    try:
        want = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"unsupported JSONPath filter value {literal!r}") from None
    if op == "==":
        return bool(value == want)
    if op == "!=":
        return bool(value != want)
    comparable = (_is_num(value) and _is_num(want)) or (
        isinstance(value, str) and isinstance(want, str)
    )
    if not comparable:
        return False
    if op == "<":
        return bool(value < want)
    if op == "<=":
        return bool(value <= want)
    if op == ">":
        return bool(value > want)
    return bool(value >= want)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _as_objects(value: Any, index: int) -> list[Mapping[str, Any]]:
    items = _as_array(value, index)
    for item in items:
        if not isinstance(item, Mapping):
            # Alloy's ArgError here names the element but the argument's index.
            raise ArgError(index, _mismatch("object", item), ())
    return list(items)


@_raw
def _combine_maps(*args: Any) -> list[dict[str, Any]]:
    """``array.combine_maps(left, right, keys[, passthrough])``: each pair of a left
    and a right object whose ``keys`` all hold equal values, merged (right wins).

    With ``passthrough``, Alloy appends the left object once for every right object
    it does not match (so once per non-matching right object, and never when
    ``right`` is empty): that is its behaviour, kept as is.
    """
    if len(args) not in (3, 4):
        raise FuncError(
            f"combine_maps: expected 3 or 4 arguments, got {len(args)}", bare=True
        )
    left = _as_objects(args[0], 0)
    right = _as_objects(args[1], 1)
    conditions = _as_array(args[2], 2)
    if not conditions:
        raise ArgError(2, "combine_maps: merge conditions must not be empty")
    keys = [_as_string(c, 2, (i,)) for i, c in enumerate(conditions)]
    passthrough = _as_bool(args[3], 3) if len(args) == 4 else False
    out: list[dict[str, Any]] = []
    for a in left:
        for b in right:
            if all(k in a and k in b and values_equal(a[k], b[k]) for k in keys):
                out.append({**a, **b})
            elif passthrough:
                out.append(dict(a))
    return out


@_raw
def _group_by(*args: Any) -> list[dict[str, Any]]:
    """``array.group_by(objects, key, drop_missing)``: one ``{key = value, items =
    [...]}`` per distinct string value of ``key``, in order of first appearance
    (Alloy's order is Go's map order, which is random). Objects without the key go to
    the ``""`` group, or are dropped with ``drop_missing``."""
    if len(args) != 3:
        raise FuncError(f"group_by: expected 3 arguments, got {len(args)}", bare=True)
    items = _as_array(args[0], 0)
    if not isinstance(args[1], str) or isinstance(args[1], Secret):
        raise ArgError(1, _mismatch("string", args[1]))
    key = str.__str__(args[1])
    drop_missing = _as_bool(args[2], 2)
    groups: dict[str, list[Any]] = {}
    for item in items:
        if not isinstance(item, Mapping):
            raise ArgError(0, _mismatch("object", item))
        if key not in item:
            if not drop_missing:
                groups.setdefault("", []).append(item)
            continue
        value = item[key]
        if not isinstance(value, str) or isinstance(value, Secret):
            raise ArgError(0, _mismatch("string", value))
        groups.setdefault(str.__str__(value), []).append(item)
    return [{key: value, "items": members} for value, members in groups.items()]


def values_equal(a: Any, b: Any) -> bool:
    """Alloy's value equality (``==``): numbers by value, no bool/number mixing,
    arrays and objects deeply, functions never equal."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) and isinstance(b, str):
        return str.__eq__(a, b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(
            values_equal(x, y) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    kind = alloy_type(a)
    if kind != alloy_type(b) or kind == "function":
        # Alloy never considers two functions equal.
        return False
    return a is b or bool(a == b)


def _version() -> str:
    try:
        return "v" + metadata.version("minilog")
    except metadata.PackageNotFoundError:
        return "v0.0.0"  # Alloy's text for a build without a version


_GOARCH: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
}


def _from_base64(text: Any) -> str:
    return _b64decode(text, url=False)


def _from_url_base64(text: Any) -> str:
    return _b64decode(text, url=True)


def _to_base64(text: Any) -> str:
    return _b64encode(text, url=False)


def _to_url_base64(text: Any) -> str:
    return _b64encode(text, url=True)


def build_stdlib() -> Namespace:
    """A fresh root namespace with every stdlib name, old spellings included."""
    machine = platform.machine().lower()
    string_ns = {
        "format": go_format,
        "join": _join,
        "replace": _replace,
        "split": _split,
        "to_lower": _to_lower,
        "to_upper": _to_upper,
        "trim": _trim,
        "trim_prefix": _trim_prefix,
        "trim_suffix": _trim_suffix,
        "trim_space": _trim_space,
    }
    root: dict[str, Any] = {
        "sys": Namespace("stdlib", {"env": _env}),
        "constants": Namespace(
            "stdlib",
            {
                "hostname": socket.gethostname(),
                "os": sys.platform if sys.platform != "win32" else "windows",
                "arch": _GOARCH.get(machine, machine),
                "version": _version(),
            },
        ),
        "array": Namespace(
            "stdlib",
            {
                "concat": _concat,
                "combine_maps": _combine_maps,
                "group_by": _group_by,
            },
        ),
        "convert": Namespace("stdlib", {"nonsensitive": _nonsensitive}),
        "encoding": Namespace(
            "stdlib",
            {
                "from_json": _from_json,
                "to_json": _to_json,
                "from_yaml": _from_yaml,
                "from_base64": _from_base64,
                "from_URLbase64": _from_url_base64,
                "to_base64": _to_base64,
                "to_URLbase64": _to_url_base64,
                "url_encode": _url_encode,
                "url_decode": _url_decode,
            },
        ),
        "string": Namespace("stdlib", string_ns),
        "file": Namespace("stdlib", {"path_join": _path_join}),
        "coalesce": _coalesce,
        "json_path": _json_path,
        # Deprecated flat spellings that older configs still use.
        "env": _env,
        "concat": _concat,
        "json_decode": _from_json,
        "yaml_decode": _from_yaml,
        "base64_decode": _from_base64,
        "nonsensitive": _nonsensitive,
        **string_ns,
    }
    return Namespace("stdlib", root)
