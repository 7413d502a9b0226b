"""Declarative argument schemas, the decoder from block bodies to plain dicts, and typed
argument classes built from those dicts.

Owns ``Attr``/``BlockSpec``/``Schema`` and the Alloy type conversions ("duration",
"bytes", "list(map(string))", ...); Go's duration and byte-size syntax are ``_go``'s.
Components are not described here: the runtime declares one ``Schema`` per component and
calls ``decode_block``, which reports every problem of the block, positioned, in one
``ConfigError``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from minilog._go import parse_base2_bytes as parse_bytes
from minilog._go import parse_duration
from minilog.config import ast
from minilog.config._eval import Scope, evaluate
from minilog.config.stdlib import (
    Namespace,
    Secret,
    alloy_type,
    number_text,
    type_name,
)
from minilog.errors import ConfigError, Diagnostic, MinilogError

__all__ = [
    "MISSING",
    "TYPES",
    "Attr",
    "BlockSpec",
    "Schema",
    "args_from",
    "attr",
    "block",
    "decode_block",
    "defaults_of",
    "parse_bytes",
    "parse_duration",
    "schema_for",
]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Marks an attribute without a default (decoded as ``None`` when absent).
MISSING: Final = _Missing()

#: The scalar types; ``list(T)`` and ``map(T)`` compose them.
TYPES: Final = frozenset(
    {
        "string",
        "number",
        "int",
        "uint",
        "bool",
        "duration",
        "bytes",
        "secret",
        "any",
        "capsule",
    }
)


def _check_type(text: str) -> None:
    inner = text
    while inner.startswith(("list(", "map(")) and inner.endswith(")"):
        inner = inner[inner.index("(") + 1 : -1]
    if inner not in TYPES:
        raise ValueError(f"unknown attribute type {text!r}")


@dataclass(frozen=True, slots=True)
class Attr:
    """One attribute: its Alloy name, type, and default (a Python value, used as given,
    deep-copied).

    An absent or ``null`` attribute decodes to ``default``, or to ``None`` without one.
    """

    name: str
    type: str
    default: Any = MISSING
    required: bool = False

    def __post_init__(self) -> None:
        _check_type(self.type)
        if self.required and self.default is not MISSING:
            raise ValueError(
                f"attribute {self.name!r} cannot be both required and defaulted"
            )


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """A nested block; absent, it decodes to ``None`` (``[]`` when ``repeated``).

    ``group`` makes blocks of several names one ordered list, as Alloy's enum blocks
    (``loki.process``'s ``stage.*``): ``result[group]`` is ``[(block name, dict), ...]``
    in source order, and each block of the group may repeat.
    """

    name: str
    schema: Schema
    repeated: bool = False
    required: bool = False
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    attrs: Sequence[Attr]
    blocks: Sequence[BlockSpec] = ()


# ---------------------------------------------------------------- typed arguments

_T = TypeVar("_T")
#: Field metadata keys: the Alloy type of an attribute, the class of a nested block.
_ALLOY_TYPE: Final = "alloy_type"
_ALLOY_BLOCK: Final = "alloy_block"


def attr(type: str, default: Any = MISSING, *, required: bool = False) -> Any:
    """A dataclass field that is an Alloy attribute of ``type`` (``"duration"``,
    ``"list(string)"``, ...), named as the field.

    Its ``default`` is the one default of that argument: ``schema_for`` puts it in the
    schema, and code that builds the class by hand gets it too. Without a default the
    attribute decodes to ``None`` when absent; a ``required`` one has none (declare
    the class ``kw_only``).
    """
    _check_type(type)
    metadata = {_ALLOY_TYPE: type, "required": required}
    if required:
        return dataclasses.field(metadata=metadata)
    if default is MISSING:
        default = None
    if isinstance(default, dict | list | set):
        return dataclasses.field(
            default_factory=functools.partial(copy.deepcopy, default),
            metadata=metadata,
        )
    return dataclasses.field(default=default, metadata=metadata)


def block(cls: type, *, repeated: bool = False, required: bool = False) -> Any:
    """A dataclass field that is a nested block, decoded into ``cls`` (a class of
    ``attr`` fields): a tuple of them when ``repeated``, else one or ``None``."""
    metadata = {_ALLOY_BLOCK: cls, "repeated": repeated, "required": required}
    return dataclasses.field(default=() if repeated else None, metadata=metadata)


def defaults_of(cls: type) -> dict[str, Any]:
    """The field defaults of dataclass ``cls`` (a fresh copy of mutable ones): for a
    schema whose defaults are a plain class's (``EndpointConfig``, ``Rule``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


_SCHEMAS: dict[type, Schema] = {}


def schema_for(cls: type) -> Schema:
    """The schema of an argument class: its ``attr`` and ``block`` fields, in order,
    with their defaults (built once per class)."""
    found = _SCHEMAS.get(cls)
    if found is None:
        found = _SCHEMAS[cls] = _schema_of(cls)
    return found


def _schema_of(cls: type) -> Schema:
    attrs: list[Attr] = []
    blocks: list[BlockSpec] = []
    for f in dataclasses.fields(cls):
        required = bool(f.metadata.get("required"))
        if _ALLOY_TYPE in f.metadata:
            default: Any = MISSING
            if not required:
                if f.default is not dataclasses.MISSING and f.default is not None:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
            attrs.append(Attr(f.name, f.metadata[_ALLOY_TYPE], default, required))
        elif _ALLOY_BLOCK in f.metadata:
            inner = schema_for(f.metadata[_ALLOY_BLOCK])
            repeated = bool(f.metadata["repeated"])
            blocks.append(BlockSpec(f.name, inner, repeated, required))
    return Schema(attrs=attrs, blocks=blocks)


def args_from(cls: type[_T], values: Mapping[str, Any]) -> _T:
    """An instance of argument class ``cls`` from ``decode_block``'s values for its
    schema: nested blocks become their classes, lists become tuples."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _ALLOY_TYPE in f.metadata:
            value = values.get(f.name)
            if value is None and not f.metadata.get("required"):
                continue  # the field's default (the schema's too)
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        elif _ALLOY_BLOCK in f.metadata:
            inner = f.metadata[_ALLOY_BLOCK]
            value = values.get(f.name)
            if f.metadata["repeated"]:
                kwargs[f.name] = tuple(args_from(inner, v) for v in value or ())
            else:
                kwargs[f.name] = None if value is None else args_from(inner, value)
    return cls(**kwargs)


# ---------------------------------------------------------------- conversions


class _Mismatch(MinilogError):
    """A value does not fit its type; ``path`` (array indices, object keys) says
    where inside the attribute's value, ``message`` what Alloy says of it."""

    def __init__(self, message: str, path: tuple[int | str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


#: The Alloy type each minilog type is to a type error ("should be array").
_ALLOY_NAMES: Final = {
    "string": "string",
    "number": "number",
    "int": "number",
    "uint": "number",
    "bool": "bool",
    "duration": "string",
    "bytes": "string",
    "secret": "capsule",
    "capsule": "capsule",
}
_UINT_TEXT: Final = re.compile(r"[0-9]+")
_INT_TEXT: Final = re.compile(r"-[0-9]+")
_FLOAT_TEXT: Final = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _should(typ: str, value: Any) -> _Mismatch:
    if typ.startswith("list("):
        expected = "array"
    elif typ.startswith("map("):
        expected = "object"
    else:
        expected = _ALLOY_NAMES.get(typ, typ)
    return _Mismatch(f"should be {expected}, got {alloy_type(value)}")


def _to_number(value: Any, typ: str) -> int | float:
    if _is_number(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and not isinstance(value, Secret):
        # Alloy converts a string assigned to a number: "-..." as an int, one with
        # ".eE" as a float, anything else as an unsigned int (Go's strconv, no
        # spaces, signs or underscores beyond that).
        text = str.__str__(value)
        if text.startswith("-") and _INT_TEXT.fullmatch(text):
            return int(text)
        if any(c in text for c in ".eE") and _FLOAT_TEXT.fullmatch(text):
            return float(text)
        if _UINT_TEXT.fullmatch(text):
            return int(text)
    raise _should(typ, value)


def convert(value: Any, typ: str) -> Any:
    """Convert an evaluated value to ``typ``; ``_Mismatch`` says what was wrong,
    and where inside the value."""
    if value is None or typ == "any":
        return value
    if typ.startswith("list(") and typ.endswith(")"):
        inner = typ[5:-1]
        if not isinstance(value, list | tuple):
            raise _should(typ, value)
        out: list[Any] = []
        for i, item in enumerate(value):
            try:
                out.append(convert(item, inner))
            except _Mismatch as exc:
                raise _Mismatch(exc.message, (i, *exc.path)) from None
        return out
    if typ.startswith("map(") and typ.endswith(")"):
        inner = typ[4:-1]
        if not isinstance(value, Mapping) or isinstance(value, Namespace):
            raise _should(typ, value)
        result: dict[str, Any] = {}
        for key, item in value.items():
            try:
                result[key] = convert(item, inner)
            except _Mismatch as exc:
                raise _Mismatch(exc.message, (key, *exc.path)) from None
        return result
    return _convert_scalar(value, typ)


def _convert_scalar(value: Any, typ: str) -> Any:
    if typ == "string":
        if isinstance(value, Secret):
            # Alloy's own words: a secret never turns back into a string.
            raise _Mismatch("secrets may not be converted into strings")
        if isinstance(value, str):
            return value
        if _is_number(value):
            return number_text(value)
        raise _should(typ, value)
    if typ == "secret":
        if isinstance(value, str):
            return Secret(value)
        raise _should(typ, value)
    if typ == "bool":
        if isinstance(value, bool):
            return value
        raise _should(typ, value)
    if typ == "number":
        return _to_number(value, typ)
    if typ in ("int", "uint"):
        num = _to_number(value, typ)
        if isinstance(num, float):
            if not num.is_integer():
                raise _Mismatch(f"should be an integer, got fractional number {num}")
            num = int(num)
        if typ == "uint" and num < 0:
            raise _Mismatch(f"should be an unsigned integer, got negative number {num}")
        return num
    if typ == "duration":
        if isinstance(value, Secret) or not isinstance(value, str):
            raise _should(typ, value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _Mismatch(str(exc)) from None
    if typ == "bytes":
        if _is_number(value):
            if value < 0 or value != int(value):
                raise _Mismatch(f"should be a byte size, got {value}")
            return int(value)
        if isinstance(value, Secret) or not isinstance(value, str):
            raise _should(typ, value)
        try:
            return parse_bytes(value)
        except ValueError as exc:
            raise _Mismatch(str(exc)) from None
    # capsule: any opaque Python object, but not a plain Alloy value.
    if type_name(value) != "capsule":
        raise _should(typ, value)
    return value


# ---------------------------------------------------------------- decoding


def decode_block(
    block: ast.Block | ast.File | Sequence[ast.Stmt],
    schema: Schema,
    scope: Scope,
    *,
    pos: ast.Pos | None = None,
) -> dict[str, Any]:
    """Evaluate a block's body against ``schema``: ``{attr or block name: value}``.

    Every attribute and nested block of the schema appears in the result (defaults
    applied). All problems (unknown names, missing required ones, wrong types,
    duplicates, evaluation errors) are collected and raised together. ``pos`` places
    "missing ..." errors when a bare statement list is passed.
    """
    if isinstance(block, ast.Block):
        body: Sequence[ast.Stmt] = block.body
        where = block.pos
    elif isinstance(block, ast.File):
        body = block.body
        where = ast.Pos(1, 1, 0, block.path)
    else:
        body = block
        where = pos or (body[0].pos if body else ast.Pos(0, 0, 0))
    diags: list[Diagnostic] = []
    result = _decode(body, schema, scope, where, diags)
    if diags:
        diags.sort(key=lambda d: (d.path, d.line, d.column))
        raise ConfigError(diags)
    return result


def _diag(pos: ast.Pos, message: str) -> Diagnostic:
    return Diagnostic(pos.file, pos.line, pos.col, message)


def _supported(kind: str, names: list[str]) -> str:
    return (
        f"supported {kind}: {', '.join(names)}"
        if names
        else f"this block takes no {kind}"
    )


def _decode(
    body: Sequence[ast.Stmt],
    schema: Schema,
    scope: Scope,
    where: ast.Pos,
    diags: list[Diagnostic],
) -> dict[str, Any]:
    attrs = {a.name: a for a in schema.attrs}
    blocks = {b.name: b for b in schema.blocks}
    result: dict[str, Any] = {}
    seen: dict[str, ast.Pos] = {}
    found_blocks: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for stmt in body:
        if isinstance(stmt, ast.Attribute):
            _decode_attr(stmt, attrs, blocks, scope, seen, result, diags)
            continue
        name = stmt.full_name
        spec = blocks.get(name)
        if spec is None:
            if name in attrs:
                message = f'"{name}" must be an attribute, but is used as a block'
            else:
                supported = _supported("blocks", list(blocks))
                message = f'unrecognized block name "{name}"; {supported}'
            diags.append(_diag(stmt.pos, message))
            continue
        if stmt.label is not None:
            diags.append(
                _diag(stmt.pos, f'block "{name}" does not support specifying labels')
            )
        first = seen.get(name)
        if first is not None and not spec.repeated and spec.group is None:
            diags.append(
                _diag(
                    stmt.pos,
                    f'block "{name}" may only be specified once '
                    f"(first at {first.line}:{first.col})",
                )
            )
            continue
        seen.setdefault(name, stmt.pos)
        decoded = _decode(stmt.body, spec.schema, scope, stmt.pos, diags)
        if spec.group is not None:
            groups.setdefault(spec.group, []).append((name, decoded))
        else:
            found_blocks.setdefault(name, []).append(decoded)
    for attr in schema.attrs:
        if attr.name in result:
            continue
        if attr.required and attr.name not in seen:
            diags.append(_diag(where, f'missing required attribute "{attr.name}"'))
        result[attr.name] = (
            None if attr.default is MISSING else copy.deepcopy(attr.default)
        )
    for bspec in schema.blocks:
        if bspec.group is not None:
            if bspec.required and bspec.name not in seen:
                diags.append(_diag(where, f'missing required block "{bspec.name}"'))
            result.setdefault(bspec.group, groups.get(bspec.group, []))
            continue
        values = found_blocks.get(bspec.name, [])
        if bspec.required and not values:
            diags.append(_diag(where, f'missing required block "{bspec.name}"'))
        result[bspec.name] = (
            values if bspec.repeated else (values[0] if values else None)
        )
    return result


def _decode_attr(
    stmt: ast.Attribute,
    attrs: dict[str, Attr],
    blocks: dict[str, BlockSpec],
    scope: Scope,
    seen: dict[str, ast.Pos],
    result: dict[str, Any],
    diags: list[Diagnostic],
) -> None:
    name = stmt.name
    spec = attrs.get(name)
    if spec is None:
        if name in blocks:
            diags.append(
                _diag(
                    stmt.pos, f'"{name}" must be a block, but is used as an attribute'
                )
            )
        else:
            supported = _supported("attributes", list(attrs))
            diags.append(
                _diag(stmt.pos, f'unrecognized attribute name "{name}"; {supported}')
            )
        return
    first = seen.get(name)
    if first is not None:
        diags.append(
            _diag(
                stmt.pos,
                f'attribute "{name}" may only be provided once '
                f"(first at {first.line}:{first.col})",
            )
        )
        return
    seen[name] = stmt.pos
    try:
        value = evaluate(stmt.value, scope)
    except ConfigError as exc:
        diags.extend(exc.diagnostics)
        return
    if value is None:
        # null is assignable to anything: it means "not set".
        return
    try:
        result[name] = convert(value, spec.type)
    except _Mismatch as exc:
        # As Alloy: at the offending element when the value spells it out (a list
        # or object literal), else at the value, after its text and the path to it.
        node, suffix = ast.locate(stmt.value, exc.path)
        diags.append(
            _diag(ast.start_pos(node), f"{ast.render(node)}{suffix} {exc.message}")
        )
