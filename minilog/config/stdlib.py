"""The Alloy standard library as Python callables, plus the ``Secret`` value type.

Owns the functions and constants a config can call (``sys.env``, ``string.format``,
``encoding.from_json``, ...) under both their namespaced and their deprecated flat
names. Functions raise ``ValueError``/``TypeError``; the evaluator turns those into
positioned errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import platform
import posixpath
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Final

from minilog._go import format_float, go_quote

__all__ = [
    "STDLIB_NAMES",
    "Namespace",
    "Secret",
    "build_stdlib",
    "go_format",
    "type_name",
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


def type_name(value: Any) -> str:
    """Alloy's name for the type of a Python value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Secret):
        return "secret"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    if callable(value):
        return "function"
    return "capsule"


def _want(name: str, value: Any, *types: str) -> None:
    kind = type_name(value)
    if kind not in types:
        if kind == "secret" and "string" in types:
            # As in Alloy: a secret never turns back into a string implicitly.
            raise TypeError(f"{name}: secrets may not be converted into strings")
        raise TypeError(f"{name} must be {' or '.join(types)}, got {kind}")


def _env(name: str) -> str:
    _want("name", name, "string")
    return os.environ.get(name, "")


def _concat(*lists: Any) -> list[Any]:
    out: list[Any] = []
    for i, item in enumerate(lists):
        if not isinstance(item, list | tuple):
            raise TypeError(f"argument {i + 1} must be array, got {type_name(item)}")
        out.extend(item)
    return out


def _coalesce(*values: Any) -> Any:
    for value in values:
        if value is None or value is False:
            continue
        if isinstance(value, str | list | tuple | dict) and not value:
            continue
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value == 0
        ):
            continue
        return value
    # Alloy returns the last argument when every one is a zero value.
    return values[-1] if values else None


def _from_json(text: str) -> Any:
    _want("argument", text, "string")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc


def _contains_secret(value: Any) -> bool:
    if isinstance(value, Secret):
        return True
    if isinstance(value, list | tuple):
        return any(_contains_secret(v) for v in value)
    if isinstance(value, Mapping):
        return any(_contains_secret(v) for v in value.values())
    return False


def _to_json(value: Any) -> str:
    if _contains_secret(value):
        raise TypeError("secrets may not be converted into strings")

    def default(obj: Any) -> Any:
        raise TypeError(f"cannot encode {type_name(obj)} as JSON")

    # Go's encoding/json sorts object keys and escapes <, > and & like this.
    text = json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=default,
    )
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _from_yaml(text: str) -> Any:
    _want("argument", text, "string")
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]  # optional dependency
    except ImportError as exc:
        raise ValueError(
            "encoding.from_yaml needs PyYAML, which is not installed"
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from exc


def _b64decode(text: str, *, url: bool) -> str:
    _want("argument", text, "string")
    try:
        if url and ("+" in text or "/" in text):
            raise ValueError("illegal base64 data: '+' or '/' in URL encoding")
        # validate=True: like Go, reject characters outside the alphabet.
        raw = base64.b64decode(text, altchars=b"-_" if url else None, validate=True)
        return raw.decode("utf-8", errors="replace")
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"illegal base64 data: {exc}") from exc


def _b64encode(text: str, *, url: bool) -> str:
    _want("argument", text, "string")
    raw = text.encode()
    return (base64.urlsafe_b64encode(raw) if url else base64.b64encode(raw)).decode(
        "ascii"
    )


_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _url_encode(text: str) -> str:
    _want("argument", text, "string")
    # Go's url.QueryEscape: space becomes '+'; only A-Z a-z 0-9 - _ . ~ stay as is.
    return urllib.parse.quote_plus(text, safe="")


def _url_decode(text: str) -> str:
    _want("argument", text, "string")
    bad = _BAD_PERCENT.search(text)
    if bad is not None:
        raise ValueError(f'invalid URL escape "{text[bad.start() : bad.start() + 3]}"')
    return urllib.parse.unquote_plus(text, errors="strict")


def _join(items: Any, sep: str) -> str:
    _want("first argument", items, "array")
    _want("separator", sep, "string")
    for item in items:
        _want("array element", item, "string")
    return str(sep).join(items)


def _replace(text: str, old: str, new: str) -> str:
    for v in (text, old, new):
        _want("argument", v, "string")
    return text.replace(old, new)


def _split(text: str, sep: str) -> list[str]:
    _want("argument", text, "string")
    _want("separator", sep, "string")
    # Go's strings.Split with an empty separator splits into characters.
    return list(text) if sep == "" else text.split(sep)


def _str_fn(fn: Callable[[str], str]) -> Callable[[str], str]:
    def wrapped(text: str) -> str:
        _want("argument", text, "string")
        return fn(text)

    return wrapped


def _trim(text: str, cutset: str) -> str:
    _want("argument", text, "string")
    _want("cutset", cutset, "string")
    # str.strip("") strips whitespace; Go's Trim with an empty cutset strips nothing.
    return text.strip(cutset) if cutset else text


def _trim_prefix(text: str, prefix: str) -> str:
    _want("argument", text, "string")
    _want("prefix", prefix, "string")
    return text.removeprefix(prefix)


def _trim_suffix(text: str, suffix: str) -> str:
    _want("argument", text, "string")
    _want("suffix", suffix, "string")
    return text.removesuffix(suffix)


def _nonsensitive(value: str) -> str:
    _want("argument", value, "secret", "string")
    return str.__str__(value)


def _path_join(*parts: str) -> str:
    for part in parts:
        _want("argument", part, "string")
    joined = "/".join(p for p in parts if p)
    if not joined:
        return ""
    # Go's filepath.Clean: unlike normpath it folds a leading "//" to "/".
    cleaned = posixpath.normpath(joined)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


_VERB: Final = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d*))?(.|$)", re.DOTALL)


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        # Alloy hands numbers to fmt.Sprintf as int64 (uint64 beyond its range).
        return "int64" if value <= 2**63 - 1 else "uint64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    return type(value).__name__


def _go_value(value: Any) -> str:
    """Go's ``%v`` of a value converted from Alloy."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, int | str):
        return str.__str__(value) if isinstance(value, str) else str(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "map[" + " ".join(f"{k}:{_go_value(value[k])}" for k in sorted(value)) + "]"
        )
    return repr(value)


def _bad_verb(verb: str, value: Any) -> str:
    return f"%!{verb}({_go_type(value)}={_go_value(value)})"


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


def _format_one(verb: str, flags: str, width: str, prec: str | None, value: Any) -> str:
    numeric = False
    if verb == "v":
        text = _go_value(value)
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
    elif verb == "d":
        if isinstance(value, bool) or not isinstance(value, int):
            return _bad_verb(verb, value)
        text = f"{value:+d}" if "+" in flags else str(value)
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


def go_format(fmt: str, *args: Any) -> str:
    """Go's ``fmt.Sprintf`` for the verbs configs use: %s %d %v %q %f %e %g %t %%.

    Secrets format as their text, as in Alloy, but then the result is a ``Secret`` too,
    so formatting cannot leak one.
    """
    _want("format", fmt, "string")
    text = _sprintf(fmt, args)
    return Secret(text) if any(isinstance(a, Secret) for a in args) else text


def _sprintf(fmt: str, args: tuple[Any, ...]) -> str:
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if verb == "":
            out.append("%!(NOVERB)")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_one(verb, flags, width, prec, args[argi]))
        argi += 1
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{_go_type(a)}={_go_value(a)}" for a in args[argi:])
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
    _want("first argument", document, "string")
    _want("path", path, "string")
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


def _combine_maps(left: Any, right: Any, conditions: Any) -> list[dict[str, Any]]:
    """``array.combine_maps``: join two arrays of objects on equal values of keys."""
    for name, arr in (("first", left), ("second", right)):
        _want(f"{name} argument", arr, "array")
        for item in arr:
            _want(f"{name} argument element", item, "object")
    _want("third argument", conditions, "array")
    if not conditions:
        raise ValueError("merge conditions must not be empty")
    return [
        {**a, **b}
        for a in left
        for b in right
        if all(k in a and k in b and a[k] == b[k] for k in conditions)
    ]


def _version() -> str:
    try:
        return "v" + metadata.version("minilog")
    except metadata.PackageNotFoundError:
        return "devel"


_GOARCH: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
}


def build_stdlib() -> Namespace:
    """A fresh root namespace with every stdlib name, old spellings included."""
    to_lower = _str_fn(str.lower)
    to_upper = _str_fn(str.upper)
    trim_space = _str_fn(str.strip)
    machine = platform.machine().lower()
    string_ns = {
        "format": go_format,
        "join": _join,
        "replace": _replace,
        "split": _split,
        "to_lower": to_lower,
        "to_upper": to_upper,
        "trim": _trim,
        "trim_prefix": _trim_prefix,
        "trim_suffix": _trim_suffix,
        "trim_space": trim_space,
    }

    def from_base64(text: str) -> str:
        return _b64decode(text, url=False)

    def from_url_base64(text: str) -> str:
        return _b64decode(text, url=True)

    def to_base64(text: str) -> str:
        return _b64encode(text, url=False)

    def to_url_base64(text: str) -> str:
        return _b64encode(text, url=True)

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
            "stdlib", {"concat": _concat, "combine_maps": _combine_maps}
        ),
        "convert": Namespace("stdlib", {"nonsensitive": _nonsensitive}),
        "encoding": Namespace(
            "stdlib",
            {
                "from_json": _from_json,
                "to_json": _to_json,
                "from_yaml": _from_yaml,
                "from_base64": from_base64,
                "from_URLbase64": from_url_base64,
                "to_base64": to_base64,
                "to_URLbase64": to_url_base64,
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
        "base64_decode": from_base64,
        "nonsensitive": _nonsensitive,
        "trim_space": trim_space,
    }
    for name in (
        "format",
        "join",
        "replace",
        "split",
        "to_lower",
        "to_upper",
        "trim",
        "trim_prefix",
        "trim_suffix",
    ):
        root[name] = string_ns[name]
    return Namespace("stdlib", root)
