"""The functions of ``stage.template`` and ``stage.replace`` templates.

Owns the function table Alloy gives Go's template engine: Go's builtins (``eq``,
``printf``, ``index``, ...), sprig v3's ``TxtFuncMap`` where minilog implements it, and
Alloy's own functions (``ToLower``, ``Replace``, ``Hash``, ``regexReplaceAll``, ...),
which override sprig's of the same name as in Alloy. Each has Go's parameter types, so a
wrong argument is the same execution error. sprig functions minilog does not implement
(dates, random certificates, semver, ...) are refused when the template is parsed, with
the reason, instead of behaving differently. Pure, but for ``env``/``expandenv`` (the
process environment, as in Alloy) and the random ones.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import os
import posixpath
import re
import secrets
import string
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote_plus

import orjson

from minilog._go import format_float, go_quote
from minilog._re2 import translate
from minilog.errors import Re2Error
from minilog.process.core import go_find_all
from minilog.process.gotemplate import (
    NO_VALUE,
    FuncError,
    GoFunc,
    GoTemplate,
    go_sprint,
    go_type,
    is_true,
    parse_template,
)
from minilog.relabel import expand, go_lower, go_upper

__all__ = [
    "FUNCS",
    "GO_SPACE",
    "UNSUPPORTED",
    "compile_go_template",
    "go_regex",
    "go_trim_space",
]

#: Go's ``unicode.IsSpace``.
GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def go_trim_space(text: str) -> str:
    """``strings.TrimSpace``."""
    return text.strip(GO_SPACE)


# ---------------------------------------------------------------- Go regexp


@functools.lru_cache(maxsize=256)
def go_regex(pattern: str) -> re.Pattern[str]:
    """``regexp.MustCompile``: an RE2 pattern with Go's semantics (``.`` does not
    match a newline unless asked). Raises ``FuncError`` for an invalid pattern."""
    try:
        translate(pattern)
        return re.compile(translate("(?-s:" + pattern + ")"))
    except Re2Error as exc:
        raise FuncError(f"regexp: Compile({go_quote(pattern)}): {exc}") from None


def _replace_all(
    regex: re.Pattern[str], text: str, repl: Callable[[re.Match[str]], str]
) -> str:
    """Go's ``ReplaceAllString`` loop: no replacement for an empty match right after
    a previous one."""
    out: list[str] = []
    last_end = 0
    last_match_end = -1
    pos = 0
    end = len(text)
    while pos <= end:
        m = regex.search(text, pos)
        if m is None:
            break
        out.append(text[last_end : m.start()])
        if m.end() > last_match_end or m.start() == 0:
            out.append(repl(m))
        last_end = m.end()
        last_match_end = m.end()
        pos = m.end() if m.end() > pos else pos + 1
    out.append(text[last_end:])
    return "".join(out)


def _regex_replace_all(regex: str, s: str, repl: str) -> str:
    return _replace_all(go_regex(regex), s, lambda m: expand(repl, m))


def _regex_replace_all_literal(regex: str, s: str, repl: str) -> str:
    return _replace_all(go_regex(regex), s, lambda _m: repl)


def _regex_split(regex: str, s: str, n: int) -> list[str]:
    if n == 0:
        return []
    r = go_regex(regex)
    if len(r.pattern) > 0 and s == "":
        return [""]
    matches = go_find_all(r, s, n)
    out: list[str] = []
    beg = 0
    for m in matches:
        if n > 0 and len(out) == n - 1:
            break
        end = m.start()
        if m.end() == 0:
            continue
        out.append(s[beg:end])
        beg = m.end()
    out.append(s[beg:])
    return out


def _quote_meta(s: str) -> str:
    return "".join("\\" + c if c in r"\.+*?()|[]{}^$" else c for c in s)


# ---------------------------------------------------------------- Go builtins


def _basic_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "invalid"


def _eq(arg1: Any, *args: Any) -> bool:
    if not args:
        raise FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in args:
        k2 = _basic_kind(arg)
        if k1 != k2:
            if arg1 is not NO_VALUE and arg is not NO_VALUE:
                raise FuncError(
                    f"incompatible types for comparison: {go_type(arg1)} and "
                    f"{go_type(arg)}"
                )
            truth = False
        elif k1 != "invalid":
            truth = arg1 == arg
        else:
            nil1 = arg1 is NO_VALUE or arg1 is None
            nil2 = arg is NO_VALUE or arg is None
            if nil1 or nil2:
                truth = nil1 == nil2
            elif isinstance(arg, list | dict):
                raise FuncError(f"non-comparable type {_fmt(arg)}: {go_type(arg)}")
            else:
                truth = arg1 == arg
        if truth:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _lt(a: Any, b: Any) -> bool:
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 in ("invalid", "bool") or k2 in ("invalid", "bool"):
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


def _not(a: Any) -> bool:
    return not is_true(a)


def _len(item: Any) -> int:
    if isinstance(item, str):
        return len(item.encode())
    if isinstance(item, list | tuple | dict):
        return len(item)
    if item is NO_VALUE or item is None:
        raise FuncError("len of nil pointer")
    raise FuncError(f"len of type {go_type(item)}")


def _index_arg(index: Any, cap: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        if index is NO_VALUE or index is None:
            raise FuncError("cannot index slice/array with nil")
        raise FuncError(f"cannot index slice/array with type {go_type(index)}")
    if index < 0 or index > cap:
        raise FuncError(f"index out of range: {index}")
    return index


def _index(item: Any, *indexes: Any) -> Any:
    if item is NO_VALUE or item is None:
        raise FuncError("index of untyped nil")
    for index in indexes:
        if isinstance(item, str):
            data = item.encode()
            x = _index_arg(index, len(data))
            if x == len(data):
                raise FuncError(f"index out of range: {x}")
            item = data[x]
        elif isinstance(item, list | tuple):
            x = _index_arg(index, len(item))
            if x == len(item):
                raise FuncError(f"index out of range: {x}")
            item = item[x]
        elif isinstance(item, dict):
            if index is NO_VALUE or index is None:
                raise FuncError("value is nil; should be of type string")
            if not isinstance(index, str):
                raise FuncError(f"value has type {go_type(index)}; should be string")
            item = item.get(index)
        else:
            raise FuncError(f"can't index item of type {go_type(item)}")
    return item


def _print(*args: Any) -> str:
    return go_sprint(*args)


def _println(*args: Any) -> str:
    return " ".join(_fmt(a) for a in args) + "\n"


def _fmt(value: Any) -> str:
    return go_sprint(value) if not isinstance(value, str) else value


_VERB: Final = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?([a-zA-Z%])")


def _sprintf(fmt: str, *args: Any) -> str:
    """``fmt.Sprintf`` for the verbs templates use: %v %s %d %q %x %X %o %b %c %U
    %f %F %e %E %g %G %t %%, with flags, width and precision."""
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
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        text = _format_one(arg, verb, flags, prec)
        if text is None:
            text = f"%!{verb}({go_type(arg)}={_fmt(arg)})"
        if width:
            w = int(width)
            if "-" in flags:
                text = text.ljust(w)
            elif "0" in flags and verb in "dxXobfFeEgG" and text[:1] in "+-":
                text = text[0] + text[1:].rjust(w - 1, "0")
            elif "0" in flags and verb in "dxXobfFeEgG":
                text = text.rjust(w, "0")
            else:
                text = text.rjust(w)
        out.append(text)
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{go_type(a)}={_fmt(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_one(arg: Any, verb: str, flags: str, prec: str | None) -> str | None:
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    if verb == "v":
        return _fmt(arg)
    if verb == "s":
        if isinstance(arg, str):
            return arg[: int(prec)] if prec else arg
        if isinstance(arg, list | dict):
            return _fmt(arg)
        return None
    if verb == "q":
        if isinstance(arg, str):
            return go_quote(arg)
        if is_int:
            return "'" + go_quote(chr(arg))[1:-1].replace("'", "\\'") + "'"
        return None
    if verb == "t":
        return ("true" if arg else "false") if isinstance(arg, bool) else None
    if verb in "dxXob" and is_int:
        spec = {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb]
        sign = "+" if "+" in flags and arg >= 0 else ""
        prefix = ""
        if "#" in flags and verb in "xXo":
            prefix = {"x": "0x", "X": "0X", "o": "0"}[verb]
        text = format(abs(arg), spec)
        return ("-" if arg < 0 else sign) + prefix + text
    if verb in "xX" and isinstance(arg, str):
        text = arg.encode().hex()
        return text.upper() if verb == "X" else text
    if verb == "c" and is_int:
        return chr(arg)
    if verb == "U" and is_int:
        return f"U+{arg:04X}"
    if verb in "fFeEgG" and isinstance(arg, float | int) and not isinstance(arg, bool):
        value = float(arg)
        if verb in "gG" and prec is None:
            text = format_float(value)
            return text.upper() if verb == "G" else text
        p = 6 if prec is None else int(prec or 0)
        text = format(value, f"{'+' if '+' in flags else ''}.{p}{verb.lower()}")
        if verb in "eE":
            text = re.sub(r"e([+-])(\d)$", r"e\g<1>0\2", text)
        return text.upper() if verb in "EG" else text
    return None


def _html(*args: Any) -> str:
    text = _eval_args_string(args)
    return (
        text.replace("&", "&amp;")
        .replace("'", "&#39;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("\x00", "\ufffd")
    )


def _js(*args: Any) -> str:
    text = _eval_args_string(args)
    out: list[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == '"':
            out.append('\\"')
        elif ch == "<":
            out.append("\\u003C")
        elif ch == ">":
            out.append("\\u003E")
        elif ch == "&":
            out.append("\\u0026")
        elif ch == "=":
            out.append("\\u003D")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or not ch.isprintable():
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    return quote_plus(_eval_args_string(args), safe="")


def _eval_args_string(args: Sequence[Any]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return go_sprint(*args)


def _slice(item: Any, *indexes: Any) -> Any:
    """sprig's ``slice``, which replaces Go's builtin of that name in Alloy."""
    if not isinstance(item, list | tuple):
        raise FuncError(f"Cannot slice on type {go_type(item)}")
    values = [_to_int(i) for i in indexes]
    if not values:
        return list(item)
    if len(values) == 1:
        return list(item[values[0] :])
    return list(item[values[0] : values[1]])


# ---------------------------------------------------------------- sprig conversions


def _strval(v: Any) -> str:
    return v if isinstance(v, str) else _fmt(v)


def _to_int64(v: Any) -> int:
    """``cast.ToInt64`` with errors as 0, as sprig uses it."""
    if v is None or v is NO_VALUE:
        return 0
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if math.isfinite(v) else 0
    if isinstance(v, str):
        text = v
        if "." in text:
            head, _, tail = text.partition(".")
            if tail.strip("0") == "":
                text = head
        try:
            return int(text, 0)
        except ValueError:
            return 0
    return 0


_to_int = _to_int64


def _to_float64(v: Any) -> float:
    if v is None or v is NO_VALUE:
        return 0.0
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return 0.0
    return 0.0


def _empty(v: Any) -> bool:
    return not is_true(v)


def _default(d: Any, *given: Any) -> Any:
    if not given or _empty(given[0]):
        return d
    return given[0]


def _coalesce(*values: Any) -> Any:
    for v in values:
        if not _empty(v):
            return v
    return None


def _ternary(vt: Any, vf: Any, v: bool) -> Any:
    return vt if v else vf


def _strslice(v: Any) -> list[str]:
    if isinstance(v, list | tuple):
        return [_strval(x) for x in v if x is not None]
    if v is None:
        return []
    return [_strval(v)]


def _byte_slice(s: str, start: int | None, end: int | None) -> str:
    data = s.encode()
    if start is not None and start > len(data):
        raise FuncError("slice bounds out of range")
    if end is not None and (end < 0 or end > len(data)):
        raise FuncError("slice bounds out of range")
    return data[start:end].decode(errors="ignore")


def _trunc(c: int, s: str) -> str:
    n = len(s.encode())
    if c < 0 and n + c > 0:
        return _byte_slice(s, n + c, None)
    if c >= 0 and n > c:
        return _byte_slice(s, None, c)
    return s


def _substr(start: int, end: int, s: str) -> str:
    if start < 0:
        return _byte_slice(s, None, end)
    if end < 0 or end > len(s.encode()):
        return _byte_slice(s, start, None)
    if start > end:
        raise FuncError("slice bounds out of range")
    return _byte_slice(s, start, end)


def _abbrev(width: int, s: str) -> str:
    if width < 4 or len(s) <= width:
        return s
    return s[: width - 3] + "..."


def _abbrevboth(left: int, right: int, s: str) -> str:
    if right < 4 or (left > 0 and right < 7):
        return s
    if len(s) <= right:
        return s
    left = min(max(left, 0), len(s))
    if len(s) - left < right - 3:
        left = len(s) - (right - 3)
    if left <= 4:
        return s[: right - 3] + "..."
    if left + right - 3 < len(s):
        return "..." + _abbrev(right - 3, s[left:])
    return "..." + s[len(s) - (right - 3) :]


def _go_title(s: str) -> str:
    """``strings.Title``: upper-case the first letter of each word."""
    out: list[str] = []
    prev = " "
    for ch in s:
        separator = not (prev.isalnum() or prev == "_")
        out.append(go_upper(ch) if separator else ch)
        prev = ch
    return "".join(out)


def _untitle(s: str) -> str:
    return go_lower(s[:1]) + s[1:] if s else s


def _initials(s: str) -> str:
    return "".join(word[0] for word in s.split() if word)


def _swapcase(s: str) -> str:
    out: list[str] = []
    whitespace = True
    for ch in s:
        if ch.isupper() or ch.istitle():
            out.append(go_lower(ch))
            whitespace = False
        elif ch.islower():
            out.append(ch.title() if whitespace else go_upper(ch))
            whitespace = False
        else:
            out.append(ch)
            whitespace = ch in GO_SPACE
    return "".join(out)


def _nospace(s: str) -> str:
    return "".join(ch for ch in s if ch not in GO_SPACE)


def _quote(*values: Any) -> str:
    return " ".join(go_quote(_strval(v)) for v in values if v is not None)


def _squote(*values: Any) -> str:
    return " ".join(f"'{_fmt(v)}'" for v in values if v is not None)


def _cat(*values: Any) -> str:
    return " ".join(_fmt(v) for v in values if v is not None)


def _indent(spaces: int, v: str) -> str:
    pad = " " * spaces
    return pad + v.replace("\n", "\n" + pad)


def _split(sep: str, orig: str) -> dict[str, Any]:
    parts = _go_split(orig, sep, -1)
    return {f"_{i}": p for i, p in enumerate(parts)}


def _splitn(sep: str, n: int, orig: str) -> dict[str, Any]:
    parts = _go_split(orig, sep, n)
    return {f"_{i}": p for i, p in enumerate(parts)}


def _go_split(s: str, sep: str, n: int) -> list[str]:
    """``strings.SplitN`` (``n < 0``: all)."""
    if n == 0:
        return []
    if sep == "":
        chars = list(s)
        if 0 < n < len(chars):
            return [*chars[: n - 1], "".join(chars[n - 1 :])]
        return chars
    return s.split(sep, n - 1 if n > 0 else -1)


def _until(count: int) -> list[Any]:
    return _until_step(0, count, 1 if count >= 0 else -1)


def _until_step(start: int, stop: int, step: int) -> list[Any]:
    if step == 0 or (step > 0 and start >= stop) or (step < 0 and start <= stop):
        return []
    return list(range(start, stop, step))


def _seq(*params: int) -> str:
    if len(params) == 1:
        end = params[0]
        nums = range(1, end + 1) if end >= 1 else range(1, end - 1, -1)
    elif len(params) == 2:
        start, end = params
        nums = range(start, end + 1) if end >= start else range(start, end - 1, -1)
    elif len(params) == 3:
        start, step, end = params
        if step == 0 or (end > start and step < 0) or (end < start and step > 0):
            return ""
        nums = range(start, end + (1 if step > 0 else -1), step)
    else:
        return ""
    return " ".join(str(n) for n in nums)


def _decimal_op(
    a: Any, rest: Sequence[Any], op: Callable[[Decimal, Decimal], Decimal]
) -> float:
    try:
        result = Decimal(repr(_to_float64(a)))
        for b in rest:
            result = op(result, Decimal(repr(_to_float64(b))))
    except (InvalidOperation, ZeroDivisionError):
        raise FuncError("decimal division by zero") from None
    return float(result)


def _round(a: Any, p: int, *r_opt: float) -> float:
    round_on = r_opt[0] if r_opt else 0.5
    pow10: float = math.pow(10.0, p)
    digit = pow10 * _to_float64(a)
    fraction = digit - math.trunc(digit)  # math.Modf: negative for a negative value
    rounded = math.ceil(digit) if fraction >= round_on else math.floor(digit)
    return rounded / pow10


def _go_json(v: Any, pretty: bool = False, escape_html: bool = True) -> str:
    if v is NO_VALUE:
        v = None
    opts = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if pretty else 0)
    try:
        text = orjson.dumps(v, option=opts).decode()
    except TypeError as exc:
        raise FuncError(str(exc)) from None
    if escape_html:
        for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
            text = text.replace(raw, esc)
    return text


def _from_json(v: str) -> Any:
    try:
        return _jsonable(orjson.loads(v))
    except orjson.JSONDecodeError:
        return None


def _must_from_json(v: str) -> Any:
    try:
        return _jsonable(orjson.loads(v))
    except orjson.JSONDecodeError as exc:
        raise FuncError(str(exc)) from None


def _jsonable(v: Any) -> Any:
    # Go decodes every JSON number into a float64.
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _b64dec(v: str) -> str:
    try:
        return base64.b64decode(v.encode(), validate=True).decode(errors="replace")
    except (ValueError, TypeError) as exc:
        return f"illegal base64 data: {exc}"


def _b32dec(v: str) -> str:
    try:
        return base64.b32decode(v.encode()).decode(errors="replace")
    except (ValueError, TypeError) as exc:
        return f"illegal base32 data: {exc}"


def _dict(*pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(0, len(pairs), 2):
        key = _strval(pairs[i])
        out[key] = pairs[i + 1] if i + 1 < len(pairs) else ""
    return out


def _need_dict(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        want = "map[string]interface {}"
        raise FuncError(f"wrong type for value; expected {want}; got {go_type(d)}")
    return d


def _get(d: Any, key: str) -> Any:
    return _need_dict(d).get(key, "")


def _set(d: Any, key: str, value: Any) -> Any:
    _need_dict(d)[key] = value
    return d


def _unset(d: Any, key: str) -> Any:
    _need_dict(d).pop(key, None)
    return d


def _has_key(d: Any, key: str) -> bool:
    return key in _need_dict(d)


def _pluck(key: str, *dicts: Any) -> list[Any]:
    return [d[key] for d in map(_need_dict, dicts) if key in d]


def _keys(*dicts: Any) -> list[Any]:
    return [k for d in map(_need_dict, dicts) for k in d]


def _pick(d: Any, *names: str) -> dict[str, Any]:
    src = _need_dict(d)
    return {k: src[k] for k in names if k in src}


def _omit(d: Any, *names: str) -> dict[str, Any]:
    return {k: v for k, v in _need_dict(d).items() if k not in names}


def _values(d: Any) -> list[Any]:
    return list(_need_dict(d).values())


def _merge(dst: Any, *srcs: Any) -> Any:
    target = _need_dict(dst)
    for src in srcs:
        for k, v in _need_dict(src).items():
            if k not in target or _empty(target[k]):
                target[k] = v
    return target


def _merge_overwrite(dst: Any, *srcs: Any) -> Any:
    target = _need_dict(dst)
    for src in srcs:
        target.update(_need_dict(src))
    return target


def _dig(*args: Any) -> Any:
    if len(args) < 3:
        raise FuncError("dig needs at least three arguments")
    *keys, default, d = args
    current = _need_dict(d)
    for i, key in enumerate(keys):
        if not isinstance(current, dict) or key not in current:
            return default
        if i == len(keys) - 1:
            return current[key]
        current = current[key]
    return default


def _need_list(v: Any, name: str) -> list[Any]:
    if isinstance(v, list | tuple):
        return list(v)
    raise FuncError(f"Cannot {name} on type {go_type(v)}")


def _first(v: Any) -> Any:
    items = _need_list(v, "find first")
    return items[0] if items else None


def _last(v: Any) -> Any:
    items = _need_list(v, "find last")
    return items[-1] if items else None


def _rest(v: Any) -> Any:
    items = _need_list(v, "find rest")
    return items[1:] if items else None


def _initial(v: Any) -> Any:
    items = _need_list(v, "find initial")
    return items[:-1] if items else None


def _reverse(v: Any) -> list[Any]:
    return list(reversed(_need_list(v, "find reverse")))


def _uniq(v: Any) -> list[Any]:
    out: list[Any] = []
    for item in _need_list(v, "find uniq"):
        if not any(_deep_equal(item, seen) for seen in out):
            out.append(item)
    return out


def _without(v: Any, *omit: Any) -> list[Any]:
    items = _need_list(v, "find without")
    return [x for x in items if not any(_deep_equal(x, o) for o in omit)]


def _has(needle: Any, haystack: Any) -> bool:
    if haystack is None:
        return False
    return any(_deep_equal(needle, x) for x in _need_list(haystack, "find has"))


def _push(v: Any, item: Any) -> list[Any]:
    return [*_need_list(v, "push"), item]


def _prepend(v: Any, item: Any) -> list[Any]:
    return [item, *_need_list(v, "prepend")]


def _concat(*lists: Any) -> list[Any]:
    out: list[Any] = []
    for v in lists:
        out.extend(_need_list(v, "concat"))
    return out


def _chunk(size: int, v: Any) -> list[Any]:
    items = _need_list(v, "chunk")
    if size <= 0:
        raise FuncError("chunk size must be positive")
    return [items[i : i + size] for i in range(0, len(items), size)]


def _compact(v: Any) -> list[Any]:
    return [x for x in _need_list(v, "compact") if not _empty(x)]


def _sort_alpha(v: Any) -> list[str]:
    return sorted(_strslice(v))


def _max(a: Any, *rest: Any) -> int:
    return max([_to_int64(a), *(_to_int64(x) for x in rest)])


def _min(a: Any, *rest: Any) -> int:
    return min([_to_int64(a), *(_to_int64(x) for x in rest)])


def _maxf(a: Any, *rest: Any) -> float:
    return max([_to_float64(a), *(_to_float64(x) for x in rest)])


def _minf(a: Any, *rest: Any) -> float:
    return min([_to_float64(a), *(_to_float64(x) for x in rest)])


def _div(a: Any, b: Any) -> int:
    x, y = _to_int64(a), _to_int64(b)
    if y == 0:
        raise FuncError("runtime error: integer divide by zero")
    q = abs(x) // abs(y)
    return q if (x >= 0) == (y >= 0) else -q


def _mod(a: Any, b: Any) -> int:
    x, y = _to_int64(a), _to_int64(b)
    if y == 0:
        raise FuncError("runtime error: integer divide by zero")
    return x - _div(x, y) * y


def _deep_equal(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _kind_of(v: Any) -> str:
    if v is None or v is NO_VALUE:
        return "invalid"
    kind = go_type(v)
    return {"[]interface {}": "slice", "map[string]interface {}": "map"}.get(kind, kind)


def _type_of(v: Any) -> str:
    return "<nil>" if v is None else go_type(v)


def _rand_string(chars: str) -> Callable[[int], str]:
    def make(count: int) -> str:
        return "".join(secrets.choice(chars) for _ in range(max(count, 0)))

    return make


def _rand_int(lo: int, hi: int) -> int:
    if hi <= lo:
        raise FuncError("invalid argument to Intn")
    return lo + secrets.randbelow(hi - lo)


def _fail(msg: str) -> str:
    raise FuncError(msg)


def _adler32(s: str) -> str:
    return str(zlib.adler32(s.encode()))


def _go_path_base(p: str) -> str:
    if p == "":
        return "."
    p = p.rstrip("/")
    if p == "":
        return "/"
    return p.rsplit("/", 1)[-1]


def _go_path_clean(p: str) -> str:
    if p == "":
        return "."
    cleaned = posixpath.normpath(p)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _go_path_dir(p: str) -> str:
    head = p[: p.rfind("/") + 1]
    return _go_path_clean(head)


def _go_path_ext(p: str) -> str:
    for i in range(len(p) - 1, -1, -1):
        if p[i] == "/":
            break
        if p[i] == ".":
            return p[i:]
    return ""


def _env(name: str) -> str:
    return os.environ.get(name, "")


def _expandenv(s: str) -> str:
    def repl(m: re.Match[str]) -> str:
        return os.environ.get(m.group(1) or m.group(2) or "", "")

    return re.sub(r"\$\{([^}]*)\}|\$([A-Za-z0-9_]+)", repl, s)


def _go_replace(s: str, old: str, new: str, n: int) -> str:
    return s.replace(old, new, n if n >= 0 else -1)


def _hash(salt: str, text: str) -> str:
    return hashlib.sha3_256((salt + text).encode()).hexdigest()


def _sha2_hash(salt: str, text: str) -> str:
    return hashlib.sha256((salt + text).encode()).hexdigest()


def _regex_match(regex: str, s: str) -> bool:
    try:
        return go_regex(regex).search(s) is not None
    except FuncError:
        return False


def _must_regex_match(regex: str, s: str) -> bool:
    return go_regex(regex).search(s) is not None


def _regex_find(regex: str, s: str) -> str:
    m = go_regex(regex).search(s)
    return "" if m is None else m.group(0)


def _regex_find_all(regex: str, s: str, n: int) -> list[Any]:
    return [m.group(0) for m in go_find_all(go_regex(regex), s, n)]


def _s(fn: Callable[..., Any], params: str, variadic: str | None = None) -> GoFunc:
    return GoFunc(params, fn, variadic)


_STRINGS: Final[dict[str, GoFunc]] = {
    "abbrev": _s(_abbrev, "is"),
    "abbrevboth": _s(_abbrevboth, "iis"),
    "trunc": _s(_trunc, "is"),
    "trim": _s(go_trim_space, "s"),
    "upper": _s(go_upper, "s"),
    "lower": _s(go_lower, "s"),
    "title": _s(_go_title, "s"),
    "untitle": _s(_untitle, "s"),
    "substr": _s(_substr, "iis"),
    "repeat": _s(
        lambda count, s: s * count if count >= 0 else _fail("negative Repeat count"),
        "is",
    ),
    "trimall": _s(lambda a, b: b.strip(a), "ss"),
    "trimAll": _s(lambda a, b: b.strip(a), "ss"),
    "trimSuffix": _s(lambda a, b: b.removesuffix(a), "ss"),
    "trimPrefix": _s(lambda a, b: b.removeprefix(a), "ss"),
    "nospace": _s(_nospace, "s"),
    "initials": _s(_initials, "s"),
    "randAlphaNum": _s(_rand_string(string.ascii_letters + string.digits), "i"),
    "randAlpha": _s(_rand_string(string.ascii_letters), "i"),
    "randAscii": _s(_rand_string("".join(chr(c) for c in range(32, 127))), "i"),
    "randNumeric": _s(_rand_string(string.digits), "i"),
    "swapcase": _s(_swapcase, "s"),
    "contains": _s(lambda sub, s: sub in s, "ss"),
    "hasPrefix": _s(lambda pre, s: s.startswith(pre), "ss"),
    "hasSuffix": _s(lambda suf, s: s.endswith(suf), "ss"),
    "quote": _s(_quote, "", "a"),
    "squote": _s(_squote, "", "a"),
    "cat": _s(_cat, "", "a"),
    "indent": _s(_indent, "is"),
    "nindent": _s(lambda n, v: "\n" + _indent(n, v), "is"),
    "replace": _s(lambda old, new, src: src.replace(old, new), "sss"),
    "plural": _s(lambda one, many, count: one if count == 1 else many, "ssi"),
    "sha1sum": _s(lambda s: hashlib.sha1(s.encode()).hexdigest(), "s"),
    "sha256sum": _s(lambda s: hashlib.sha256(s.encode()).hexdigest(), "s"),
    "sha512sum": _s(lambda s: hashlib.sha512(s.encode()).hexdigest(), "s"),
    "adler32sum": _s(_adler32, "s"),
    "toString": _s(_strval, "a"),
    "atoi": _s(lambda a: int(a) if re.fullmatch(r"[+-]?\d+", a) else 0, "s"),
    "int64": _s(_to_int64, "a"),
    "int": _s(_to_int, "a"),
    "float64": _s(_to_float64, "a"),
    "seq": _s(_seq, "", "i"),
    "split": _s(_split, "ss"),
    "splitList": _s(lambda sep, orig: _go_split(orig, sep, -1), "ss"),
    "splitn": _s(_splitn, "sis"),
    "toStrings": _s(_strslice, "a"),
    "until": _s(_until, "i"),
    "untilStep": _s(_until_step, "iii"),
    "add1": _s(lambda i: _to_int64(i) + 1, "a"),
    "add": _s(lambda *xs: sum(_to_int64(x) for x in xs), "", "a"),
    "sub": _s(lambda a, b: _to_int64(a) - _to_int64(b), "aa"),
    "div": _s(_div, "aa"),
    "mod": _s(_mod, "aa"),
    "mul": _s(
        lambda a, *xs: math.prod([_to_int64(a), *(_to_int64(x) for x in xs)]), "a", "a"
    ),
    "randInt": _s(_rand_int, "ii"),
    "add1f": _s(lambda i: _decimal_op(i, [1], Decimal.__add__), "a"),
    "addf": _s(lambda *xs: _decimal_op(0.0, xs, Decimal.__add__), "", "a"),
    "subf": _s(lambda a, *xs: _decimal_op(a, xs, Decimal.__sub__), "a", "a"),
    "divf": _s(lambda a, *xs: _decimal_op(a, xs, Decimal.__truediv__), "a", "a"),
    "mulf": _s(lambda a, *xs: _decimal_op(a, xs, Decimal.__mul__), "a", "a"),
    "biggest": _s(_max, "a", "a"),
    "max": _s(_max, "a", "a"),
    "min": _s(_min, "a", "a"),
    "maxf": _s(_maxf, "a", "a"),
    "minf": _s(_minf, "a", "a"),
    "ceil": _s(lambda a: float(math.ceil(_to_float64(a))), "a"),
    "floor": _s(lambda a: float(math.floor(_to_float64(a))), "a"),
    "round": _s(_round, "ai", "f"),
    "join": _s(lambda sep, v: sep.join(_strslice(v)), "sa"),
    "sortAlpha": _s(_sort_alpha, "a"),
    "default": _s(_default, "a", "a"),
    "empty": _s(_empty, "a"),
    "coalesce": _s(_coalesce, "", "a"),
    "all": _s(lambda *xs: all(not _empty(x) for x in xs), "", "a"),
    "any": _s(lambda *xs: any(not _empty(x) for x in xs), "", "a"),
    "compact": _s(_compact, "a"),
    "mustCompact": _s(_compact, "a"),
    "fromJson": _s(_from_json, "s"),
    "mustFromJson": _s(_must_from_json, "s"),
    "toJson": _s(_go_json, "a"),
    "mustToJson": _s(_go_json, "a"),
    "toPrettyJson": _s(lambda v: _go_json(v, pretty=True), "a"),
    "mustToPrettyJson": _s(lambda v: _go_json(v, pretty=True), "a"),
    "toRawJson": _s(lambda v: _go_json(v, escape_html=False), "a"),
    "mustToRawJson": _s(lambda v: _go_json(v, escape_html=False), "a"),
    "ternary": _s(_ternary, "aab"),
    "typeOf": _s(_type_of, "a"),
    "typeIs": _s(lambda t, v: _type_of(v) == t, "sa"),
    "typeIsLike": _s(lambda t, v: _type_of(v) in (t, "*" + t), "sa"),
    "kindOf": _s(_kind_of, "a"),
    "kindIs": _s(lambda k, v: _kind_of(v) == k, "sa"),
    "deepEqual": _s(_deep_equal, "aa"),
    "env": _s(_env, "s"),
    "expandenv": _s(_expandenv, "s"),
    "base": _s(_go_path_base, "s"),
    "dir": _s(_go_path_dir, "s"),
    "clean": _s(_go_path_clean, "s"),
    "ext": _s(_go_path_ext, "s"),
    "isAbs": _s(lambda p: p.startswith("/"), "s"),
    "osBase": _s(_go_path_base, "s"),
    "osClean": _s(_go_path_clean, "s"),
    "osDir": _s(_go_path_dir, "s"),
    "osExt": _s(_go_path_ext, "s"),
    "osIsAbs": _s(lambda p: p.startswith("/"), "s"),
    "b64enc": _s(lambda v: base64.b64encode(v.encode()).decode(), "s"),
    "b64dec": _s(_b64dec, "s"),
    "b32enc": _s(lambda v: base64.b32encode(v.encode()).decode(), "s"),
    "b32dec": _s(_b32dec, "s"),
    "tuple": _s(lambda *xs: list(xs), "", "a"),
    "list": _s(lambda *xs: list(xs), "", "a"),
    "dict": _s(_dict, "", "a"),
    "get": _s(_get, "as"),
    "set": _s(_set, "asa"),
    "unset": _s(_unset, "as"),
    "hasKey": _s(_has_key, "as"),
    "pluck": _s(_pluck, "s", "a"),
    "keys": _s(_keys, "", "a"),
    "pick": _s(_pick, "a", "s"),
    "omit": _s(_omit, "a", "s"),
    "merge": _s(_merge, "a", "a"),
    "mergeOverwrite": _s(_merge_overwrite, "a", "a"),
    "mustMerge": _s(_merge, "a", "a"),
    "mustMergeOverwrite": _s(_merge_overwrite, "a", "a"),
    "values": _s(_values, "a"),
    "append": _s(_push, "aa"),
    "push": _s(_push, "aa"),
    "mustAppend": _s(_push, "aa"),
    "mustPush": _s(_push, "aa"),
    "prepend": _s(_prepend, "aa"),
    "mustPrepend": _s(_prepend, "aa"),
    "first": _s(_first, "a"),
    "mustFirst": _s(_first, "a"),
    "rest": _s(_rest, "a"),
    "mustRest": _s(_rest, "a"),
    "last": _s(_last, "a"),
    "mustLast": _s(_last, "a"),
    "initial": _s(_initial, "a"),
    "mustInitial": _s(_initial, "a"),
    "reverse": _s(_reverse, "a"),
    "mustReverse": _s(_reverse, "a"),
    "uniq": _s(_uniq, "a"),
    "mustUniq": _s(_uniq, "a"),
    "without": _s(_without, "a", "a"),
    "mustWithout": _s(_without, "a", "a"),
    "has": _s(_has, "aa"),
    "mustHas": _s(_has, "aa"),
    "slice": _s(_slice, "a", "a"),
    "mustSlice": _s(_slice, "a", "a"),
    "concat": _s(_concat, "", "a"),
    "dig": _s(_dig, "", "a"),
    "chunk": _s(_chunk, "ia"),
    "mustChunk": _s(_chunk, "ia"),
    "uuidv4": _s(lambda: str(uuid.uuid4()), ""),
    "fail": _s(_fail, "s"),
    "regexMatch": _s(_regex_match, "ss"),
    "mustRegexMatch": _s(_must_regex_match, "ss"),
    "regexFindAll": _s(_regex_find_all, "ssi"),
    "mustRegexFindAll": _s(_regex_find_all, "ssi"),
    "regexFind": _s(_regex_find, "ss"),
    "mustRegexFind": _s(_regex_find, "ss"),
    "regexReplaceAll": _s(_regex_replace_all, "sss"),
    "mustRegexReplaceAll": _s(_regex_replace_all, "sss"),
    "regexReplaceAllLiteral": _s(_regex_replace_all_literal, "sss"),
    "mustRegexReplaceAllLiteral": _s(_regex_replace_all_literal, "sss"),
    "regexSplit": _s(_regex_split, "ssi"),
    "mustRegexSplit": _s(_regex_split, "ssi"),
    "regexQuoteMeta": _s(_quote_meta, "s"),
}

#: Go's template builtins (sprig's ``slice`` replaces Go's, as in Alloy).
_BUILTINS: Final[dict[str, GoFunc]] = {
    "call": _s(
        lambda fn, *args: _fail(f"non-function of type {go_type(fn)}"), "v", "v"
    ),
    "html": _s(_html, "", "a"),
    "index": _s(_index, "v", "v"),
    "js": _s(_js, "", "a"),
    "len": _s(_len, "v"),
    "not": _s(_not, "v"),
    "print": _s(_print, "", "a"),
    "printf": _s(_sprintf, "s", "a"),
    "println": _s(_println, "", "a"),
    "urlquery": _s(_urlquery, "", "a"),
    "eq": _s(_eq, "v", "v"),
    "ge": _s(_ge, "vv"),
    "gt": _s(_gt, "vv"),
    "le": _s(_le, "vv"),
    "lt": _s(_lt, "vv"),
    "ne": _s(_ne, "vv"),
}

#: Alloy's own functions (``stages/template.go``), over sprig's.
_ALLOY: Final[dict[str, GoFunc]] = {
    "ToLower": _s(go_lower, "s"),
    "ToUpper": _s(go_upper, "s"),
    "Replace": _s(_go_replace, "sssi"),
    "Trim": _s(lambda s, cutset: s.strip(cutset), "ss"),
    "TrimLeft": _s(lambda s, cutset: s.lstrip(cutset), "ss"),
    "TrimRight": _s(lambda s, cutset: s.rstrip(cutset), "ss"),
    "TrimPrefix": _s(lambda s, prefix: s.removeprefix(prefix), "ss"),
    "TrimSuffix": _s(lambda s, suffix: s.removesuffix(suffix), "ss"),
    "TrimSpace": _s(go_trim_space, "s"),
    "Hash": _s(_hash, "ss"),
    "Sha2Hash": _s(_sha2_hash, "ss"),
    "regexReplaceAll": _s(_regex_replace_all, "sss"),
    "regexReplaceAllLiteral": _s(_regex_replace_all_literal, "sss"),
}

#: sprig functions minilog refuses, and why (a template naming one is a config error).
UNSUPPORTED: Final[Mapping[str, str]] = {
    **dict.fromkeys(
        (
            "ago",
            "date",
            "date_in_zone",
            "date_modify",
            "dateInZone",
            "dateModify",
            "duration",
            "durationRound",
            "htmlDate",
            "htmlDateInZone",
            "must_date_modify",
            "mustDateModify",
            "mustToDate",
            "now",
            "toDate",
            "unixEpoch",
        ),
        "sprig's date functions are not implemented by minilog",
    ),
    **dict.fromkeys(
        ("snakecase", "camelcase", "kebabcase", "shuffle", "wrap", "wrapWith"),
        "this sprig string function is not implemented by minilog",
    ),
    **dict.fromkeys(
        (
            "bcrypt",
            "htpasswd",
            "genPrivateKey",
            "derivePassword",
            "buildCustomCert",
            "genCA",
            "genCAWithKey",
            "genSelfSignedCert",
            "genSelfSignedCertWithKey",
            "genSignedCert",
            "genSignedCertWithKey",
            "encryptAES",
            "decryptAES",
            "randBytes",
        ),
        "sprig's crypto functions are not implemented by minilog",
    ),
    **dict.fromkeys(
        (
            "semver",
            "semverCompare",
            "getHostByName",
            "urlParse",
            "urlJoin",
            "toDecimal",
            "deepCopy",
            "mustDeepCopy",
            "hello",
        ),
        "this sprig function is not implemented by minilog",
    ),
}

#: Every function a template can call, by name.
FUNCS: Final[Mapping[str, GoFunc]] = {**_BUILTINS, **_STRINGS, **_ALLOY}


def compile_go_template(text: str) -> GoTemplate:
    """Parse ``text`` with Alloy's function table (``template.New("pipeline_template")
    .Funcs(functionMap).Parse``).

    Raises:
        ValueError: Go's parse error, or a function minilog does not implement.
    """
    try:
        return parse_template(text, FUNCS)
    except ValueError as exc:
        message = str(exc)
        m = re.search(r'function "([^"]+)" not defined', message)
        if m is not None and m.group(1) in UNSUPPORTED:
            raise ValueError(f"{message} ({UNSUPPORTED[m.group(1)]})") from None
        raise
