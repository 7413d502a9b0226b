"""YAML decoding as Alloy's ``encoding.from_yaml`` does it (Go's ``gopkg.in/yaml.v3``
unmarshalling into ``any``), on PyYAML's parser.

PyYAML parses (its parser and libyaml, which yaml.v3 ports, share one lineage), but its
constructors resolve scalars as YAML 1.1 does (``yes`` is true, ``1:20`` is 80, a date
is a ``datetime``). yaml.v3 resolves them its own way, so this module takes PyYAML's
node graph with every plain scalar left unresolved and resolves each as yaml.v3's
``resolve`` does: only ``true``/``false`` (three spellings) are booleans, integers go
through Go's ``ParseInt(s, 0, 64)`` after dropping ``_`` (so ``0x1F``, ``0o17`` and
the 1.1 octal ``017`` are numbers), timestamps stay strings, and a mapping with any key
that is not a string is a Go ``map[any]any``, which Alloy sees as a capsule.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from minilog._go import go_quote

__all__ = ["GoMap", "YAMLDecodeError", "decode_yaml"]

_PLAIN: Final = "tag:minilog:plain"
_STR: Final = "tag:yaml.org,2002:str"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_BOOL: Final = "tag:yaml.org,2002:bool"
_NULL: Final = "tag:yaml.org,2002:null"
_BINARY: Final = "tag:yaml.org,2002:binary"
_TIMESTAMP: Final = "tag:yaml.org,2002:timestamp"
_MERGE: Final = "tag:yaml.org,2002:merge"
_RESOLVABLE: Final = frozenset({_PLAIN, _STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP})

#: yaml.v3's table of words: only these spellings are booleans, nulls, NaN or Inf.
_WORDS: Final[dict[str, tuple[str, Any]]] = {
    **dict.fromkeys(("true", "True", "TRUE"), (_BOOL, True)),
    **dict.fromkeys(("false", "False", "FALSE"), (_BOOL, False)),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), (_NULL, None)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), (_FLOAT, math.nan)),
    **dict.fromkeys((".inf", ".Inf", ".INF"), (_FLOAT, math.inf)),
    **dict.fromkeys(("+.inf", "+.Inf", "+.INF"), (_FLOAT, math.inf)),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), (_FLOAT, -math.inf)),
    "<<": (_MERGE, "<<"),
}
_YAML_FLOAT: Final = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
# Go's ParseFloat of a decimal (what a leading "." can start).
_GO_FLOAT: Final = re.compile(r"[-+]?(\.[0-9]+|[0-9]+\.?[0-9]*)([eE][-+]?[0-9]+)?")
_INT64: Final = 2**63
_UINT64: Final = 2**64
_TAG_NAMES: Final = {
    _STR: "!!str",
    _INT: "!!int",
    _FLOAT: "!!float",
    _BOOL: "!!bool",
    _NULL: "!!null",
    _TIMESTAMP: "!!timestamp",
    _MERGE: "!!merge",
}
#: Nodes one document may expand to through aliases (yaml.v3 refuses alias bombs too).
_MAX_NODES: Final = 1_000_000


class YAMLDecodeError(ValueError):
    """The text is not YAML, or yaml.v3 would refuse to decode it; worded as
    yaml.v3 words it (``yaml: line N: ...``)."""


class GoMap:
    """A YAML mapping with a key that is not a string: Go's ``map[any]any``, which
    Alloy cannot make an object of, so it is an opaque capsule."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items

    def __repr__(self) -> str:
        inner = " ".join(f"{k}:{v}" for k, v in self.items)
        return f"map[{inner}]"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GoMap) and other.items == self.items

    __hash__ = None  # type: ignore[assignment]


class _Loader(yaml.SafeLoader):
    """Composes nodes only, tagging every plain scalar with no tag of its own as
    ``_PLAIN`` so that yaml.v3's rules, not PyYAML's, resolve it."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit[0]:
            return _PLAIN
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]


def decode_yaml(text: str) -> Any:
    """The first document of ``text`` as Alloy values (``None`` for an empty one).

    Raises:
        YAMLDecodeError: a syntax error, a duplicate key, or a scalar its explicit
            tag does not fit.
    """
    loader = _Loader(text)
    try:
        node = loader.get_node() if loader.check_node() else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise YAMLDecodeError(f"yaml: {line}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YAMLDecodeError(f"yaml: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        return None
    decoder = _Decoder()
    value = decoder.value(node)
    if decoder.errors:
        raise YAMLDecodeError(
            "yaml: unmarshal errors:\n" + "\n".join(f"  {e}" for e in decoder.errors)
        )
    return value


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Decoder:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.budget = _MAX_NODES
        self.active: set[int] = set()

    def value(self, node: Node) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise YAMLDecodeError("yaml: document contains excessive aliasing")
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if id(node) in self.active:
            raise YAMLDecodeError(f"yaml: line {_line(node)}: anchor refers to itself")
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.value(item) for item in node.value]
            assert isinstance(node, MappingNode)
            return self.mapping(node)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode) -> Any:
        tag, value = _resolve(node.tag, node.value)
        if tag == "error":
            self.errors.append(f"line {_line(node)}: {value}")
            return None
        return value

    def key_tag(self, node: Node) -> str:
        if isinstance(node, ScalarNode):
            return _resolve(node.tag, node.value)[0] if node.tag == _PLAIN else node.tag
        return node.tag

    def mapping(self, node: MappingNode) -> Any:
        pairs = node.value
        for i, (key_i, _) in enumerate(pairs):
            for key_j, _ in pairs[i + 1 :]:
                if (
                    isinstance(key_i, ScalarNode)
                    and isinstance(key_j, ScalarNode)
                    and key_i.value == key_j.value
                ):
                    self.errors.append(
                        f"line {_line(key_j)}: mapping key {go_quote(key_j.value)} "
                        f"already defined at line {_line(key_i)}"
                    )
        string_keys = all(self.key_tag(k) in (_STR, _MERGE) for k, _ in pairs)
        explicit: list[tuple[Any, Any]] = []
        merges: list[Node] = []
        for key_node, value_node in pairs:
            if self.key_tag(key_node) == _MERGE:
                merges.append(value_node)
            else:
                explicit.append((self.value(key_node), self.value(value_node)))
        # As yaml.v3: the mapping's own keys win over merged ones, and among merged
        # mappings the first to bring a key wins.
        items = explicit + [pair for source in merges for pair in self.merged(source)]
        seen: set[Any] = set()
        unique: list[tuple[Any, Any]] = []
        for k, v in items:
            try:
                if k in seen:
                    continue
                seen.add(k)
            except TypeError:
                pass  # an unhashable key (a list) cannot repeat a merged one
            unique.append((k, v))
        if string_keys:
            return {str(k): v for k, v in unique}
        return GoMap(unique)

    def merged(self, node: Node) -> list[tuple[Any, Any]]:
        """The pairs a ``<<`` key brings in, from a mapping or a sequence of them."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        out: list[tuple[Any, Any]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                raise YAMLDecodeError(
                    f"yaml: line {_line(source)}: map merge requires map or sequence "
                    "of maps as the value"
                )
            value = self.value(source)
            out.extend(value.items() if isinstance(value, dict) else value.items)
        return out


def _resolve(tag: str, text: str) -> tuple[str, Any]:
    """yaml.v3's ``resolve``: the tag and value of a scalar, or ``("error", msg)``."""
    if tag == _BINARY:
        try:
            raw = base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError):
            return "error", "!!binary value contains invalid base64 data"
        return _STR, raw.decode("utf-8", errors="replace")
    if tag not in _RESOLVABLE:
        return tag, text  # a tag of the user's own: the text, as yaml.v3 keeps it
    if tag == _STR:
        return _STR, text
    rtag, value = _resolve_plain(text, allow_timestamp=tag in (_PLAIN, _TIMESTAMP))
    if tag in (_PLAIN, rtag):
        if rtag == _TIMESTAMP:
            # yaml.v3 hands a timestamp to ``any`` as its text, for compatibility.
            return _STR, text
        return rtag, value
    if tag == _FLOAT and rtag == _INT:
        return _FLOAT, float(value)
    return "error", (
        f"cannot decode {_TAG_NAMES.get(rtag, rtag)} `{text}` as a "
        f"{_TAG_NAMES.get(tag, tag)}"
    )


def _resolve_plain(text: str, *, allow_timestamp: bool) -> tuple[str, Any]:
    word = _WORDS.get(text)
    if word is not None:
        return word
    first = text[:1]
    if first == ".":
        if _GO_FLOAT.fullmatch(text):
            return _FLOAT, float(text)
        return _STR, text
    if not first or first not in "+-0123456789":
        return _STR, text
    if allow_timestamp and _is_timestamp(text):
        return _TIMESTAMP, text
    plain = text.replace("_", "")
    number = _go_parse_int(plain)
    if number is not None:
        return _INT, number
    if _YAML_FLOAT.fullmatch(plain):
        return _FLOAT, float(plain)
    return _STR, text


_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}")
_DATETIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(?:\.[0-9]*)?"
    r"(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?"
)


def _is_timestamp(text: str) -> bool:
    return bool(_DATE.fullmatch(text) or _DATETIME.fullmatch(text))


_DIGITS: Final = {
    2: re.compile("[01]+"),
    8: re.compile("[0-7]+"),
    10: re.compile("[0-9]+"),
    16: re.compile("[0-9a-fA-F]+"),
}
_BASES: Final = {"0x": 16, "0o": 8, "0b": 2}


def _go_parse_int(text: str) -> int | None:
    """Go's ``strconv.ParseInt(s, 0, 64)``, falling back to ``ParseUint`` as yaml.v3
    does: a sign, then ``0x``/``0o``/``0b`` or a leading ``0`` for octal."""
    sign = 1
    body = text
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    prefix = body[:2].lower()
    if prefix in _BASES:
        digits, base = body[2:], _BASES[prefix]
    elif len(body) > 1 and body[0] == "0":
        digits, base = body[1:], 8
    else:
        digits, base = body, 10
    if not _DIGITS[base].fullmatch(digits):
        return None
    value = sign * int(digits, base)
    if sign < 0:
        return value if value >= -_INT64 else None
    return value if value < _UINT64 else None
