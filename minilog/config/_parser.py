"""Parser for the Alloy configuration language: tokens -> ``ast.File``, all errors kept.

Hand-written recursive descent over ``(tokens, index)``. A failed statement is reported
and skipped up to the next terminator, so one run reports all the errors of a file.
Missing commas in lists and objects are reported and parsed on as if the comma were
there, as Go's parser does.
"""

from __future__ import annotations

from typing import Final, NoReturn

from minilog.config import ast
from minilog.config._lexer import (
    BOOL,
    COMMENT,
    EOF,
    FLOAT,
    IDENT,
    NULL,
    NUMBER,
    STRING,
    TERM,
    Token,
    describe,
    tokenize,
)
from minilog.errors import Diagnostic, MinilogError

__all__ = ["MAX_DEPTH", "check_components", "is_identifier", "parse_file"]

#: Nesting cap for blocks, brackets and unary/``^`` chains. Each level costs about six
#: Python frames in the parser (and a few more in the evaluator and formatter), so 100
#: levels stay well inside the default recursion limit of 1000, even when called from
#: deep inside a test runner.
MAX_DEPTH: Final = 100

BINARY_PRECEDENCE: Final = {
    "||": 1,
    "&&": 2,
    "==": 3,
    "!=": 3,
    "<": 3,
    "<=": 3,
    ">": 3,
    ">=": 3,
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
    "^": 6,
}
LITERAL_KINDS: Final = frozenset({NUMBER, FLOAT, STRING, BOOL, NULL})
OPENERS: Final = frozenset("([{")
EXPR_STARTS: Final = LITERAL_KINDS | {IDENT, "(", "[", "{", "!", "-"}
FIELD_STARTS: Final = frozenset({IDENT, STRING})
CLOSERS: Final = frozenset(")]}")


class _Fail(MinilogError):
    """Abandons the current statement, carrying the diagnostic and where it stopped."""

    def __init__(self, diag: Diagnostic, index: int) -> None:
        super().__init__(diag.message)
        self.diag = diag
        self.index = index


class _Ctx:
    __slots__ = ("diags", "open", "path", "toks")

    def __init__(self, toks: list[Token], path: str) -> None:
        self.toks = toks
        self.path = path
        self.open = 0  # brackets open in the current statement, for error recovery
        self.diags: list[Diagnostic] = []

    def report(self, diag: Diagnostic) -> None:
        # Like Alloy's parser: one error per line; the rest are usually its echoes.
        if not self.diags or self.diags[-1].line != diag.line:
            self.diags.append(diag)

    def diag(self, pos: ast.Pos, message: str) -> Diagnostic:
        return Diagnostic(self.path, pos.line, pos.col, message)

    def fail(self, i: int, message: str) -> NoReturn:
        raise _Fail(self.diag(self.toks[i].pos, message), i)

    def check_depth(self, i: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail(i, f"nesting too deep (limit {MAX_DEPTH} levels)")


def is_identifier(text: str) -> bool:
    """Whether ``text`` is a valid Alloy identifier (block labels must be)."""
    if not text or not (text[0].isalpha() or text[0] == "_"):
        return False
    return all(c.isalpha() or c.isdecimal() or c == "_" for c in text)


def parse_file(
    src: str, path: str = "<config>", *, components: bool = True
) -> tuple[ast.File, list[Diagnostic]]:
    """Parse a whole file: the (maybe partial) tree and every diagnostic, sorted.

    ``components`` adds the checks of the top-level blocks as components
    (``check_components``); ``alloy fmt`` parses without them.
    """
    toks, lex_diags = tokenize(src, path)
    ctx = _Ctx([t for t in toks if t.kind != COMMENT], path)
    body, _ = _parse_body(ctx, 0, None, 0)
    # A lexer error usually derails the parser on its line: report only the cause.
    lex_lines = {d.line for d in lex_diags}
    diags = lex_diags + [d for d in ctx.diags if d.line not in lex_lines]
    file = ast.File(path, tuple(body))
    if components:
        diags += check_components(file.body)
    diags.sort(key=lambda d: (d.line, d.column))
    return file, diags


def check_components(body: tuple[ast.Stmt, ...] | list[ast.Stmt]) -> list[Diagnostic]:
    """Top level: dotted (component) blocks need a label; block IDs are unique."""
    diags: list[Diagnostic] = []
    seen: dict[str, ast.Pos] = {}
    for stmt in body:
        if not isinstance(stmt, ast.Block):
            continue
        pos = stmt.pos
        if stmt.label is None and len(stmt.name) > 1:
            diags.append(
                Diagnostic(
                    pos.file,
                    pos.line,
                    pos.col,
                    f'component "{stmt.full_name}" must have a label',
                )
            )
            continue
        first = seen.get(stmt.id)
        if first is not None:
            what = "component" if stmt.label is not None else "block"
            diags.append(
                Diagnostic(
                    pos.file,
                    pos.line,
                    pos.col,
                    f'{what} "{stmt.id}" already declared at {first}',
                )
            )
        else:
            seen[stmt.id] = pos
    return diags


def _parse_body(
    ctx: _Ctx, i: int, opener: ast.Block | None, depth: int
) -> tuple[list[ast.Stmt], int]:
    """Statements up to EOF or the ``}`` closing ``opener``; returns the index after."""
    toks = ctx.toks
    stmts: list[ast.Stmt] = []
    while True:
        tok = toks[i]
        kind = tok.kind
        if kind == TERM:
            i += 1
            continue
        if kind == EOF:
            if opener is not None:
                ctx.report(
                    ctx.diag(
                        tok.pos,
                        f"expected '}}' to close block {opener.full_name} opened at "
                        f"{opener.pos.line}:{opener.pos.col}, found end of file",
                    )
                )
            return stmts, i
        if kind == "}":
            if opener is not None:
                return stmts, i + 1
            ctx.report(ctx.diag(tok.pos, "unexpected '}' outside a block"))
            i += 1
            continue
        try:
            stmt, i = _parse_stmt(ctx, i, depth)
            stmts.append(stmt)
            tok = toks[i]
            if tok.kind == TERM:
                i += 1
            elif not (tok.kind == EOF or (tok.kind == "}" and opener is not None)):
                what = (
                    f"attribute {stmt.name}"
                    if isinstance(stmt, ast.Attribute)
                    else "block"
                )
                ctx.fail(i, f"expected newline after {what}, found {describe(tok)}")
        except _Fail as exc:
            ctx.report(exc.diag)
            i = _recover(ctx, exc.index)


def _recover(ctx: _Ctx, i: int) -> int:
    """Skip to just after the next terminator, or to the enclosing ``}`` or EOF.

    Brackets the failed statement left open (``ctx.open``) are closed by the first
    closers met; a terminator inside them still ends the statement, since valid code
    never has one there. Brackets opened while skipping (a block body after a broken
    header) are skipped whole.
    """
    toks = ctx.toks
    pending = ctx.open
    ctx.open = 0
    depth = 0
    while True:
        kind = toks[i].kind
        if kind == EOF:
            return i
        if kind == TERM and depth == 0:
            return i + 1
        if kind in OPENERS:
            depth += 1
        elif kind in CLOSERS:
            if depth > 0:
                depth -= 1
            elif pending > 0:
                pending -= 1
            elif kind == "}":
                return i
        i += 1


def _parse_stmt(ctx: _Ctx, i: int, depth: int) -> tuple[ast.Stmt, int]:
    toks = ctx.toks
    first = toks[i]
    if first.kind != IDENT:
        ctx.fail(i, f"expected attribute or block, found {describe(first)}")
    name = [first.text]
    i += 1
    while toks[i].kind == ".":
        if toks[i + 1].kind != IDENT:
            ctx.fail(
                i + 1, f"expected identifier after '.', found {describe(toks[i + 1])}"
            )
        name.append(toks[i + 1].text)
        i += 2
    dotted = ".".join(name)
    tok = toks[i]
    if tok.kind == "=":
        if len(name) > 1:
            ctx.fail(i, f"attribute name must be a single identifier, found {dotted}")
        value, i = _parse_expr(ctx, i + 1, depth + 1)
        nxt = toks[i]
        if nxt.kind == "{" or (nxt.kind == STRING and toks[i + 1].kind == "{"):
            raise _Fail(
                ctx.diag(ast.start_pos(value), "cannot use a block as an expression"), i
            )
        return ast.Attribute(first.text, value, first.pos), i
    label: str | None = None
    if tok.kind == STRING:
        if not tok.text.startswith('"'):
            ctx.fail(i, f"block label must be a double-quoted string, found {tok.text}")
        # As in Alloy, an empty label is no label.
        label = str(tok.value) or None
        if label is not None and not is_identifier(label):
            ctx.fail(i, f"block label {tok.text} must be a valid identifier")
        i += 1
        tok = toks[i]
        if tok.kind == "=":
            ctx.fail(i - 1, "attribute names may not have labels")
        if tok.kind != "{":
            ctx.fail(
                i,
                f"expected '{{' after block label {toks[i - 1].text}, "
                f"found {describe(tok)}",
            )
    if tok.kind != "{":
        ctx.fail(i, f"expected '=' or '{{' after '{dotted}', found {describe(tok)}")
    ctx.check_depth(i, depth + 1)
    header = ast.Block(tuple(name), label, (), first.pos)
    body, i = _parse_body(ctx, i + 1, header, depth + 1)
    return ast.Block(header.name, label, tuple(body), first.pos), i


def _parse_expr(
    ctx: _Ctx, i: int, depth: int, min_prec: int = 1
) -> tuple[ast.Expr, int]:
    """Precedence climbing: left-associative except ``^``."""
    toks = ctx.toks
    left, i = _parse_unary(ctx, i, depth)
    while True:
        optok = toks[i]
        prec = BINARY_PRECEDENCE.get(optok.kind)
        if prec is None or prec < min_prec:
            return left, i
        if optok.kind == "^":
            ctx.check_depth(i, depth + 1)
            right, i = _parse_expr(ctx, i + 1, depth + 1, prec)
        else:
            right, i = _parse_expr(ctx, i + 1, depth, prec + 1)
        left = ast.BinaryExpr(optok.kind, left, right, optok.pos)


def _parse_unary(ctx: _Ctx, i: int, depth: int) -> tuple[ast.Expr, int]:
    tok = ctx.toks[i]
    if tok.kind in ("!", "-"):
        ctx.check_depth(i, depth + 1)
        operand, i = _parse_unary(ctx, i + 1, depth + 1)
        return ast.UnaryExpr(tok.kind, operand, tok.pos), i
    return _parse_postfix(ctx, i, depth)


def _parse_postfix(ctx: _Ctx, i: int, depth: int) -> tuple[ast.Expr, int]:
    toks = ctx.toks
    expr, i = _parse_primary(ctx, i, depth)
    while True:
        tok = toks[i]
        if tok.kind == ".":
            name = toks[i + 1]
            if name.kind != IDENT:
                ctx.fail(
                    i + 1, f"expected identifier after '.', found {describe(name)}"
                )
            expr = ast.AccessExpr(expr, name.text, name.pos)
            i += 2
        elif tok.kind == "[":
            ctx.check_depth(i, depth + 1)
            ctx.open += 1
            index, i = _parse_expr(ctx, i + 1, depth + 1)
            if toks[i].kind != "]":
                ctx.fail(i, f"expected ']' after index, found {describe(toks[i])}")
            ctx.open -= 1
            expr = ast.IndexExpr(expr, index, tok.pos)
            i += 1
        elif tok.kind == "(":
            ctx.check_depth(i, depth + 1)
            ctx.open += 1
            args, i = _parse_list(ctx, i + 1, ")", "argument list", depth + 1)
            ctx.open -= 1
            expr = ast.CallExpr(expr, tuple(args), tok.pos)
        else:
            return expr, i


def _parse_primary(ctx: _Ctx, i: int, depth: int) -> tuple[ast.Expr, int]:
    toks = ctx.toks
    tok = toks[i]
    kind = tok.kind
    if kind == IDENT:
        return ast.Ident(tok.text, tok.pos), i + 1
    if kind in LITERAL_KINDS:
        return ast.Literal(tok.value, tok.text, tok.pos), i + 1
    if kind == "(":
        ctx.check_depth(i, depth + 1)
        ctx.open += 1
        inner, i = _parse_expr(ctx, i + 1, depth + 1)
        if toks[i].kind != ")":
            ctx.fail(i, f"expected ')', found {describe(toks[i])}")
        ctx.open -= 1
        return ast.ParenExpr(inner, tok.pos), i + 1
    if kind == "[":
        ctx.check_depth(i, depth + 1)
        ctx.open += 1
        elements, i = _parse_list(ctx, i + 1, "]", "expression list", depth + 1)
        ctx.open -= 1
        return ast.ArrayExpr(tuple(elements), tok.pos), i
    if kind == "{":
        ctx.check_depth(i, depth + 1)
        ctx.open += 1
        fields, i = _parse_fields(ctx, i + 1, depth + 1)
        ctx.open -= 1
        return ast.ObjectExpr(tuple(fields), tok.pos), i
    ctx.fail(i, f"expected expression, found {describe(tok)}")


def _parse_list(
    ctx: _Ctx, i: int, closing: str, what: str, depth: int
) -> tuple[list[ast.Expr], int]:
    """Comma-separated expressions up to ``closing``; returns the index after it."""
    toks = ctx.toks
    items: list[ast.Expr] = []
    while True:
        if toks[i].kind == closing:
            return items, i + 1
        item, i = _parse_expr(ctx, i, depth)
        items.append(item)
        i = _after_item(ctx, i, closing, what)
        if i < 0:
            return items, -i


def _parse_fields(ctx: _Ctx, i: int, depth: int) -> tuple[list[ast.Field], int]:
    toks = ctx.toks
    fields: list[ast.Field] = []
    while True:
        tok = toks[i]
        if tok.kind == "}":
            return fields, i + 1
        if tok.kind not in (IDENT, STRING):
            ctx.fail(
                i, f"expected field name (identifier or string), found {describe(tok)}"
            )
        if toks[i + 1].kind != "=":
            ctx.fail(
                i + 1,
                f"expected '=' after field name {tok.text}, "
                f"found {describe(toks[i + 1])}",
            )
        value, i = _parse_expr(ctx, i + 2, depth)
        fields.append(ast.Field(str(tok.value), tok.kind == STRING, value, tok.pos))
        i = _after_item(ctx, i, "}", "field list")
        if i < 0:
            return fields, -i


def _after_item(ctx: _Ctx, i: int, closing: str, what: str) -> int:
    """After an item: the next item's index, or minus the index after ``closing``."""
    tok = ctx.toks[i]
    if tok.kind == ",":
        return i + 1
    if tok.kind == closing:
        return -(i + 1)
    if tok.kind == TERM and tok.text:
        # Go's parser reports the missing comma and carries on as if it were there.
        ctx.report(ctx.diag(tok.pos, f"missing ',' in {what}"))
        return i + 1
    if tok.kind in (FIELD_STARTS if what == "field list" else EXPR_STARTS):
        # "[1 2]": the next item has started; report the comma and parse on.
        ctx.report(ctx.diag(tok.pos, f"missing ',' in {what}"))
        return i
    ctx.fail(i, f"expected ',' or '{closing}' in {what}, found {describe(tok)}")
