"""AST of the Alloy configuration language: frozen, slotted node classes, a JSON dump.

Owns the node shapes only; producing them is ``_parser``'s job, evaluating them
``_eval``'s. Every node carries the ``Pos`` of its first token, so any later stage can
position an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from minilog._go import go_quote

__all__ = [
    "AccessExpr",
    "ArrayExpr",
    "Attribute",
    "BinaryExpr",
    "Block",
    "CallExpr",
    "Expr",
    "Field",
    "File",
    "Ident",
    "IndexExpr",
    "Literal",
    "Node",
    "ObjectExpr",
    "ParenExpr",
    "Pos",
    "Stmt",
    "UnaryExpr",
    "dump",
    "locate",
    "render",
    "start_pos",
]


@dataclass(frozen=True, slots=True)
class Pos:
    """A source position: ``line`` and ``col`` are 1-based (col counts characters),
    ``offset`` 0-based.

    ``file`` names the source the position belongs to, so nodes from a directory of
    files stay attributable after their bodies are merged.
    """

    line: int
    col: int
    offset: int
    file: str = "<config>"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Literal:
    """A number, string, bool or null literal; ``raw`` is its source text."""

    value: int | float | str | bool | None
    raw: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class ArrayExpr:
    elements: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Field:
    """One ``key = value`` of an object; ``quoted`` says the key was a string."""

    key: str
    quoted: bool
    value: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class ObjectExpr:
    fields: tuple[Field, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class AccessExpr:
    """``value.name``; ``pos`` is that of the name."""

    value: Expr
    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class IndexExpr:
    """``value[index]``; ``pos`` is that of the ``[``."""

    value: Expr
    index: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class CallExpr:
    """``func(args...)``; ``pos`` is that of the ``(``."""

    func: Expr
    args: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class UnaryExpr:
    op: str
    operand: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class BinaryExpr:
    """``left op right``; ``pos`` is that of the operator."""

    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class ParenExpr:
    inner: Expr
    pos: Pos


Expr: TypeAlias = (
    Literal
    | Ident
    | ArrayExpr
    | ObjectExpr
    | AccessExpr
    | IndexExpr
    | CallExpr
    | UnaryExpr
    | BinaryExpr
    | ParenExpr
)


@dataclass(frozen=True, slots=True)
class Attribute:
    """``name = value`` inside a body."""

    name: str
    value: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Block:
    """``a.b "label" { body }``: ``name`` holds the parts, ``label`` may be None."""

    name: tuple[str, ...]
    label: str | None
    body: tuple[Stmt, ...]
    pos: Pos

    @property
    def full_name(self) -> str:
        """The dotted name, e.g. ``"loki.source.docker"``."""
        return ".".join(self.name)

    @property
    def id(self) -> str:
        """The component ID Alloy uses: ``name.label``, or the bare name."""
        return (
            self.full_name if self.label is None else f"{self.full_name}.{self.label}"
        )


Stmt: TypeAlias = Attribute | Block


@dataclass(frozen=True, slots=True)
class File:
    """A parsed file (or a directory of files merged in sorted order)."""

    path: str
    body: tuple[Stmt, ...]


Node: TypeAlias = File | Stmt | Expr | Field


def start_pos(node: Expr) -> Pos:
    """Where an expression's text starts (operators and accesses sit mid-text)."""
    while isinstance(node, AccessExpr | IndexExpr | CallExpr | BinaryExpr):
        node = (
            node.left
            if isinstance(node, BinaryExpr)
            else node.value
            if not isinstance(node, CallExpr)
            else node.func
        )
    return node.pos


def dump(node: Node) -> Any:
    """Render a node as plain JSON-able data, without positions (for the corpus).

    Statements: ``{"block": "a.b", "label": ..., "body": [...]}``, ``{"attr": name,
    "value": expr}``. Expressions: ``{"number"|"float"|"string"|"bool"|"null": v}``,
    ``{"ident": n}``, ``{"array": [...]}``, ``{"object": [[key, expr], ...]}``,
    ``{"access": [expr, name]}``, ``{"index": [expr, expr]}``, ``{"call": [expr,
    [args]]}``, ``{"unary": [op, expr]}``, ``{"binary": [op, l, r]}``, ``{"paren": e}``.
    """
    if isinstance(node, File):
        return {"body": [dump(s) for s in node.body]}
    if isinstance(node, Block):
        return {
            "block": node.full_name,
            "label": node.label,
            "body": [dump(s) for s in node.body],
        }
    if isinstance(node, Attribute):
        return {"attr": node.name, "value": dump(node.value)}
    if isinstance(node, Literal):
        value = node.value
        if value is None:
            return {"null": None}
        if isinstance(value, bool):
            return {"bool": value}
        if isinstance(value, int):
            return {"number": value}
        if isinstance(value, float):
            return {"float": value}
        return {"string": value}
    if isinstance(node, Ident):
        return {"ident": node.name}
    if isinstance(node, ArrayExpr):
        return {"array": [dump(e) for e in node.elements]}
    if isinstance(node, ObjectExpr):
        return {"object": [dump(f) for f in node.fields]}
    if isinstance(node, Field):
        return [node.key, dump(node.value)]
    if isinstance(node, AccessExpr):
        return {"access": [dump(node.value), node.name]}
    if isinstance(node, IndexExpr):
        return {"index": [dump(node.value), dump(node.index)]}
    if isinstance(node, CallExpr):
        return {"call": [dump(node.func), [dump(a) for a in node.args]]}
    if isinstance(node, UnaryExpr):
        return {"unary": [node.op, dump(node.operand)]}
    if isinstance(node, BinaryExpr):
        return {"binary": [node.op, dump(node.left), dump(node.right)]}
    return {"paren": dump(node.inner)}


def render(node: Expr) -> str:
    """An expression as one line of source, as Alloy prints the node an error is
    about (``[0, 1, 2]``, ``key_value.object``, ``f(1, "a")``)."""
    if isinstance(node, Literal):
        return node.raw
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, ArrayExpr):
        return "[" + ", ".join(render(e) for e in node.elements) + "]"
    if isinstance(node, ObjectExpr):
        fields = ", ".join(
            f"{_quote_key(f.key) if f.quoted else f.key} = {render(f.value)}"
            for f in node.fields
        )
        return "{" + fields + "}"
    if isinstance(node, AccessExpr):
        return f"{render(node.value)}.{node.name}"
    if isinstance(node, IndexExpr):
        return f"{render(node.value)}[{render(node.index)}]"
    if isinstance(node, CallExpr):
        return f"{render(node.func)}({', '.join(render(a) for a in node.args)})"
    if isinstance(node, UnaryExpr):
        return f"{node.op}{render(node.operand)}"
    if isinstance(node, BinaryExpr):
        return f"{render(node.left)} {node.op} {render(node.right)}"
    return f"({render(node.inner)})"


def _quote_key(key: str) -> str:
    return go_quote(key)


def locate(expr: Expr, path: tuple[int | str, ...]) -> tuple[Expr, str]:
    """The node of ``expr`` that produced the value at ``path`` (array indices and
    object keys) and the part of ``path`` below it, as Alloy finds the node an error
    is about: through array and object literals as far as they go, then the rest of
    the path written after the node's text (``discovery.x.targets[2]``)."""
    node = expr
    depth = 0
    while depth < len(path):
        inner = node
        while isinstance(inner, ParenExpr):
            inner = inner.inner
        step = path[depth]
        if isinstance(inner, ArrayExpr) and isinstance(step, int):
            if not 0 <= step < len(inner.elements):
                break
            node = inner.elements[step]
        elif isinstance(inner, ObjectExpr) and isinstance(step, str):
            found = [f for f in inner.fields if f.key == step]
            if not found:
                break
            node = found[-1].value  # a repeated key keeps its last value
        else:
            break
        depth += 1
    suffix = "".join(
        f"[{step}]" if isinstance(step, int) else f".{step}" for step in path[depth:]
    )
    return node, suffix
