"""Evaluation of Alloy expressions to Python values; scopes, references, dependencies.

Owns operator semantics (as Alloy's ``transform.BinaryOp``), field and index access,
calls, the ``Scope`` that resolves identifiers (stdlib namespaces plus component
exports), ``references`` for building the component graph, and ``toposort``.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from minilog.config import ast
from minilog.config.stdlib import (
    ArgError,
    FuncError,
    Namespace,
    Secret,
    alloy_type,
    build_stdlib,
    is_raw,
    type_name,
    values_equal,
)
from minilog.errors import ConfigError, Diagnostic

__all__ = ["Reference", "Scope", "evaluate", "references", "toposort"]

_STDLIB: Namespace | None = None


def _stdlib() -> Namespace:
    # Built on first use, not at import: it reads the hostname and package metadata.
    global _STDLIB
    if _STDLIB is None:
        _STDLIB = build_stdlib()
    return _STDLIB


class Scope:
    """What identifiers resolve to: given variables, then component exports, then the
    stdlib.

    Args:
        variables: top-level names bound directly (values, nested dicts, functions).
        components: exports by component ID, e.g.
            ``{"discovery.docker.containers": {"targets": [...]}}``; a reference to an
            ID that is absent reports "component ... does not exist".
        stdlib: whether the standard library is visible.
    """

    __slots__ = ("_root",)

    def __init__(
        self,
        variables: Mapping[str, Any] | None = None,
        *,
        components: Mapping[str, Any] | None = None,
        stdlib: bool = True,
    ) -> None:
        self._root = Namespace("component")
        if stdlib:
            self._root.update(_stdlib())
        for cid, exports in (components or {}).items():
            self.set_component(cid, exports)
        if variables:
            self._root.update(variables)

    def set_component(self, cid: str, exports: Any) -> None:
        """Bind (or replace) the exports of component ``cid`` (``"loki.write.w"``)."""
        parts = cid.split(".")
        node = self._root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, Namespace):
                child = Namespace("component")
                node[part] = child
            elif child.kind == "stdlib":
                # Copy before writing: the stdlib namespaces are shared between scopes.
                child = Namespace(child.kind, child)
                node[part] = child
            node = child
        node[parts[-1]] = exports

    def lookup(self, name: str) -> Any:
        """The value bound to a top-level identifier; ``KeyError`` if none."""
        return self._root[name]

    def __contains__(self, name: object) -> bool:
        return name in self._root


@dataclass(frozen=True, slots=True)
class Reference:
    """The dotted chain a traversal starts with, e.g. ``("loki", "write", "w")``."""

    path: tuple[str, ...]
    pos: ast.Pos

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _error(pos: ast.Pos, message: str) -> ConfigError:
    return ConfigError(Diagnostic(pos.file, pos.line, pos.col, message))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def evaluate(expr: ast.Expr, scope: Scope) -> Any:
    """Evaluate an expression; ``ConfigError`` is positioned at the failing part."""
    return _eval(expr, scope)


def _eval(node: ast.Expr, scope: Scope) -> Any:
    if isinstance(node, ast.Literal):
        return node.value
    if isinstance(node, ast.Ident | ast.AccessExpr):
        return _eval_traversal(node, scope)
    if isinstance(node, ast.BinaryExpr):
        return _binary(node, scope)
    if isinstance(node, ast.ArrayExpr):
        return [_eval(e, scope) for e in node.elements]
    if isinstance(node, ast.ObjectExpr):
        # A repeated key keeps its last value, as in Alloy.
        return {field.key: _eval(field.value, scope) for field in node.fields}
    if isinstance(node, ast.IndexExpr):
        return _index(node, _eval(node.value, scope), _eval(node.index, scope))
    if isinstance(node, ast.CallExpr):
        return _call(node, scope)
    if isinstance(node, ast.UnaryExpr):
        return _unary(node, _eval(node.operand, scope))
    return _eval(node.inner, scope)


def _chain(node: ast.Expr) -> list[ast.Ident | ast.AccessExpr] | None:
    """The Ident/AccessExpr links of a pure dotted chain, root first, else ``None``."""
    links: list[ast.Ident | ast.AccessExpr] = []
    cur: ast.Expr = node
    while isinstance(cur, ast.AccessExpr):
        links.append(cur)
        cur = cur.value
    if not isinstance(cur, ast.Ident):
        return None
    links.append(cur)
    links.reverse()
    return links


def _name(link: ast.Ident | ast.AccessExpr) -> str:
    return link.name


def _eval_traversal(node: ast.Ident | ast.AccessExpr, scope: Scope) -> Any:
    links = _chain(node)
    if links is None:
        # ``expr.field`` on something other than a name chain (a call, an index...).
        assert isinstance(node, ast.AccessExpr)
        return _field(node, _eval(node.value, scope))
    root = links[0]
    try:
        value = scope.lookup(root.name)
    except KeyError:
        raise _missing(links, len(links), root.pos) from None
    for n, link in enumerate(links[1:], start=2):
        assert isinstance(link, ast.AccessExpr)
        if isinstance(value, Namespace) and link.name not in value:
            raise _missing(links, n, root.pos, value.kind)
        value = _field(link, value)
    return value


def _missing(
    links: list[ast.Ident | ast.AccessExpr],
    upto: int,
    pos: ast.Pos,
    kind: str = "component",
) -> ConfigError:
    dotted = ".".join(_name(link) for link in links)
    if kind == "stdlib":
        partial = ".".join(_name(link) for link in links[:upto])
        return _error(pos, f'"{partial}" does not exist in the standard library')
    if len(links) == 1:
        return _error(pos, f'identifier "{dotted}" does not exist or is out of scope')
    return _error(pos, f'component "{dotted}" does not exist or is out of scope')


def _field(node: ast.AccessExpr, value: Any) -> Any:
    if isinstance(value, Mapping):
        try:
            return value[node.name]
        except KeyError:
            raise _error(node.pos, f'field "{node.name}" does not exist') from None
    raise _error(
        node.pos,
        f'cannot access field "{node.name}" on a value of type {type_name(value)}',
    )


def _index(node: ast.IndexExpr, value: Any, index: Any) -> Any:
    where = ast.start_pos(node.index)
    if isinstance(value, list | tuple):
        if not _is_number(index):
            raise _error(where, f"array index must be a number, got {type_name(index)}")
        i = int(index)  # Alloy truncates a fractional index
        if not 0 <= i < len(value):
            raise _error(
                where, f"index {i} is out of range of array with length {len(value)}"
            )
        return value[i]
    if isinstance(value, Mapping):
        if not isinstance(index, str):
            raise _error(where, f"object key must be a string, got {type_name(index)}")
        # Unlike ``.field``, indexing a missing key yields null.
        return value.get(index)
    raise _error(node.pos, f"cannot index a value of type {type_name(value)}")


def _unary(node: ast.UnaryExpr, value: Any) -> Any:
    if node.op == "!":
        if not isinstance(value, bool):
            raise _error(node.pos, f"operator ! needs a bool, got {type_name(value)}")
        return not value
    if not _is_number(value):
        raise _error(node.pos, f"operator - needs a number, got {type_name(value)}")
    return -value


def _binary(node: ast.BinaryExpr, scope: Scope) -> Any:
    op = node.op
    # Alloy evaluates both operands before applying any operator: no short-circuit.
    left = _eval(node.left, scope)
    right = _eval(node.right, scope)
    if op in ("||", "&&"):
        for side, value in ((node.left, left), (node.right, right)):
            if not isinstance(value, bool):
                raise _error(
                    ast.start_pos(side),
                    f"operator {op} needs bool operands, got {type_name(value)}",
                )
        return (left or right) if op == "||" else (left and right)
    if op == "==":
        return values_equal(left, right)
    if op == "!=":
        return not values_equal(left, right)
    if op == "+" and isinstance(left, str) and isinstance(right, str):
        joined = str.__add__(left, right)
        return (
            Secret(joined)
            if isinstance(left, Secret) or isinstance(right, Secret)
            else joined
        )
    if op in ("<", "<=", ">", ">="):
        return _compare(node, left, right)
    if not (_is_number(left) and _is_number(right)):
        raise _error(
            node.pos,
            f"operator {op} cannot be applied to "
            f"{type_name(left)} and {type_name(right)}",
        )
    return _arith(node, left, right)


def _compare(node: ast.BinaryExpr, left: Any, right: Any) -> bool:
    same = (_is_number(left) and _is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not same:
        raise _error(
            node.pos,
            f"cannot compare {type_name(left)} and {type_name(right)} with {node.op}",
        )
    if isinstance(left, str):
        # Alloy compares strings byte-wise (UTF-8), which code-point order matches.
        left, right = str.__str__(left), str.__str__(right)
    op = node.op
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _arith(node: ast.BinaryExpr, left: int | float, right: int | float) -> int | float:
    op = node.op
    try:
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        both_int = isinstance(left, int) and isinstance(right, int)
        if op == "/":
            if right == 0:
                raise _error(node.pos, "division by zero")
            if both_int:
                # Integers divide as Go's do, truncating toward zero: 7 / 2 == 3.
                quotient = abs(left) // abs(right)
                return -quotient if (left < 0) != (right < 0) else quotient
            return left / right
        if op == "%":
            if right == 0:
                raise _error(node.pos, "division by zero")
            if both_int:
                # Go's % truncates toward zero: the result has the dividend's sign.
                rem = abs(left) % abs(right)
                return -rem if left < 0 else rem
            return math.fmod(left, right)
        if both_int:
            return _int_pow(node, int(left), int(right))
        result: float | complex = float(left) ** float(right)
        if isinstance(result, complex):
            raise _error(node.pos, "operator ^ has no real result for these operands")
        return result
    except (OverflowError, ZeroDivisionError) as exc:
        raise _error(node.pos, f"operator {op}: {exc}") from None


def _int_pow(node: ast.BinaryExpr, base: int, exp: int) -> int:
    """Alloy's integer power (``transform.intPow``), quirks included."""
    if exp == 0 or base == 1:
        return 1
    if base == 0 and exp > 0:
        return 0
    if exp < 0:
        # NOTE: Alloy's loop never runs for a negative exponent and returns the base.
        return base
    if exp > 4096:
        # Bounded so a config cannot ask for a gigantic integer.
        raise _error(node.pos, "operator ^: exponent too large")
    return int(base**exp)


def _call(node: ast.CallExpr, scope: Scope) -> Any:
    """Call a function as Alloy does; its errors are positioned as Alloy's are: an
    argument's at that argument (or the element inside it), the function's own after
    the function's name."""
    fn = _eval(node.func, scope)
    callee = ast.render(node.func)
    where = ast.start_pos(node.func)
    if not callable(fn) or type_name(fn) != "function":
        raise _error(where, f"{callee} should be function, got {alloy_type(fn)}")
    args = [_eval(a, scope) for a in node.args]
    if not is_raw(fn):
        problem = _arity_problem(fn, len(args))
        if problem:
            raise _error(where, f"{callee} {problem}")
    try:
        return fn(*args)
    except ConfigError:
        raise
    except ArgError as exc:
        target, suffix = ast.locate(node.args[exc.index], exc.path)
        raise _error(
            ast.start_pos(target), f"{ast.render(target)}{suffix} {exc.message}"
        ) from None
    except FuncError as exc:
        text = exc.message if exc.bare else f"{callee} {exc.message}"
        raise _error(where, text) from None
    except (ValueError, TypeError, ArithmeticError, LookupError) as exc:
        raise _error(where, f"{callee} {exc}") from None


def _arity_problem(fn: Callable[..., Any], count: int) -> str:
    """Alloy's check of a Go function's argument count, worded as it words it."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except ValueError:
        return ""  # builtins without an introspectable signature
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
    fixed = sum(1 for p in params if p.kind is not p.VAR_POSITIONAL)
    if variadic and count < fixed:
        return f"expected at least {fixed} args, got {count}"
    if not variadic and count != fixed:
        return f"expected {fixed} args, got {count}"
    return ""


def references(node: ast.Node) -> list[Reference]:
    """Every reference in ``node``, in source order: each traversal's leading chain.

    ``discovery.docker.c.targets[0]`` gives ``("discovery", "docker", "c", "targets")``;
    stdlib calls give their names too (``("string", "format")``): callers filter with
    ``STDLIB_NAMES``.
    """
    out: list[Reference] = []
    _collect(node, out)
    return out


def _children(node: ast.Node) -> Iterator[ast.Node]:
    if isinstance(node, ast.File | ast.Block):
        yield from node.body
    elif isinstance(node, ast.Attribute | ast.Field):
        yield node.value
    elif isinstance(node, ast.ArrayExpr):
        yield from node.elements
    elif isinstance(node, ast.ObjectExpr):
        yield from node.fields
    elif isinstance(node, ast.AccessExpr):
        yield node.value
    elif isinstance(node, ast.IndexExpr):
        yield node.value
        yield node.index
    elif isinstance(node, ast.CallExpr):
        yield node.func
        yield from node.args
    elif isinstance(node, ast.UnaryExpr):
        yield node.operand
    elif isinstance(node, ast.BinaryExpr):
        yield node.left
        yield node.right
    elif isinstance(node, ast.ParenExpr):
        yield node.inner


def _collect(node: ast.Node, out: list[Reference]) -> None:
    if isinstance(node, ast.Ident | ast.AccessExpr):
        links = _chain(node)
        if links is not None:
            out.append(Reference(tuple(_name(link) for link in links), links[0].pos))
            return
    for child in _children(node):
        _collect(child, out)


def toposort(nodes: Mapping[str, list[Reference]]) -> list[str]:
    """Order dotted IDs so each comes after the IDs its references point into.

    A reference depends on node ``id`` when its path starts with ``id.split(".")``;
    references matching no node (stdlib, plain values) are ignored. Ties keep the input
    order. A cycle (a self-reference included) raises ``ConfigError`` naming it,
    positioned at each reference in it.
    """
    by_parts = {tuple(nid.split(".")): nid for nid in nodes}
    longest = max((len(p) for p in by_parts), default=0)
    deps: dict[str, dict[str, Reference]] = {}
    for nid, refs in nodes.items():
        edges: dict[str, Reference] = {}
        for ref in refs:
            for n in range(min(len(ref.path), longest), 0, -1):
                target = by_parts.get(ref.path[:n])
                if target is not None:
                    edges.setdefault(target, ref)
                    break
        deps[nid] = edges
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in nodes:
        if state.get(start) == 2:
            continue
        # Iterative DFS so a long dependency chain cannot exhaust the Python stack.
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(deps[start]))]
        state[start] = 1
        while stack:
            nid, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[nid] = 2
                order.append(nid)
                continue
            st = state.get(nxt)
            if st == 2:
                continue
            if st == 1:
                path = [s[0] for s in stack]
                cycle = [*path[path.index(nxt) :], nxt]
                raise _cycle_error(cycle, deps)
            state[nxt] = 1
            stack.append((nxt, iter(deps[nxt])))
    return order


def _cycle_error(
    cycle: list[str], deps: dict[str, dict[str, Reference]]
) -> ConfigError:
    text = " -> ".join(cycle)
    diags: list[Diagnostic] = []
    for src, dst in itertools.pairwise(cycle):
        pos = deps[src][dst].pos
        if len(cycle) == 2:
            message = f"{src} references itself"
        else:
            message = f"cycle detected: {text}"
        diags.append(Diagnostic(pos.file, pos.line, pos.col, message))
    return ConfigError(diags)
