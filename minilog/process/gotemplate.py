"""Go ``text/template``, as ``stage.template`` and ``stage.replace`` run it.

Owns the lexer, the parser and the evaluator of Go's template language (actions and
their ``{{-``/``-}}`` trim markers, comments, pipelines, variables, ``if``/``else
if``/``with``/``range`` with ``break``/``continue``, ``define``/``template``/``block``,
and Go's builtin functions), following ``text/template`` and ``text/template/parse``:
the same parse errors at configuration time, the same execution errors (a missing map
key prints ``<no value>``, but is an error as a ``string`` argument) and the same
printing of values. The function table (Alloy's and sprig's functions) is passed in;
``templatefuncs`` owns it. Pure.

Values are Python ones: ``str``, ``int``, ``float``, ``bool``, ``None`` (Go's nil),
``list``, ``dict``; ``NO_VALUE`` is Go's invalid value (a missing map key).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from minilog._go import go_type as gocompat_type
from minilog._go import go_value, unquote_char
from minilog.errors import EscapeError

__all__ = [
    "NO_VALUE",
    "ExecError",
    "FuncError",
    "GoFunc",
    "GoTemplate",
    "go_sprint",
    "go_type",
    "parse_template",
]


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __str__(self) -> str:
        # How fmt prints an invalid reflect.Value nested in a slice or map.
        return "<invalid reflect.Value>"


#: Go's invalid ``reflect.Value``: what a missing map key evaluates to.
NO_VALUE: Final = _NoValue()


class _Final:
    __slots__ = ()


# Go's ``missingVal``: no value piped in from a previous command.
_NO_FINAL: Final = _Final()


class ExecError(Exception):
    """A template failed while executing (Go's ``ExecError``); the message is Go's."""


class FuncError(Exception):
    """A template function returned an error (the message is the function's)."""


#: Parameter kinds of template functions: Go parameter types, as far as they matter.
#: ``s`` string, ``i`` int, ``f`` float64, ``b`` bool, ``a`` interface{} (a missing
#: value becomes nil), ``v`` reflect.Value (gets ``NO_VALUE`` as is).
_KIND_NAMES: Final = {
    "s": "string",
    "i": "int",
    "f": "float64",
    "b": "bool",
    "a": "interface {}",
    "v": "reflect.Value",
}


@dataclass(frozen=True, slots=True)
class GoFunc:
    """A template function: Go parameter kinds (see ``_KIND_NAMES``), an optional
    variadic kind, and the implementation. ``fn`` raises ``FuncError`` for a returned
    error; any other exception is a panic, which Go's template turns into an error."""

    params: str
    fn: Callable[..., Any]
    variadic: str | None = None


# ---------------------------------------------------------------- printing


def go_type(value: Any) -> str:
    """The Go type name of a value, for error messages."""
    return "<invalid reflect.Value>" if value is NO_VALUE else gocompat_type(value)


def _fmt_v(value: Any) -> str:
    """``%v`` of a value nested in a slice or map (strings unquoted)."""
    return "<invalid reflect.Value>" if value is NO_VALUE else go_value(value)


def go_sprint(*values: Any) -> str:
    """``fmt.Sprint``: operands joined, a space between two that are not strings."""
    out: list[str] = []
    previous_string = True
    for i, value in enumerate(values):
        is_string = isinstance(value, str)
        if i > 0 and not is_string and not previous_string:
            out.append(" ")
        out.append(_fmt_v(value))
        previous_string = is_string
    return "".join(out)


def _printable(value: Any) -> str:
    if value is NO_VALUE:
        return "<no value>"
    if type(value) is str:
        return value
    return _fmt_v(value)


# ---------------------------------------------------------------- truth


def is_true(value: Any) -> bool:
    """Go's template truth: the zero value of its type is false."""
    if value is NO_VALUE or value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


# ---------------------------------------------------------------- lexer

_SPACE: Final = " \t\r\n"
_KEYWORDS: Final = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "nil"}
    | {"template", "with"}
)

# Token types.
_TEXT = "text"
_COMMENT = "comment"
_LEFT = "{{"
_RIGHT = "}}"
_SPACE_T = "space"
_ASSIGN = "="
_DECLARE = ":="
_PIPE = "|"
_STRING = "string"
_RAW = "raw"
_CHAR = "char"  # a character constant: 'x'
_NUMBER = "number"
_IDENT = "ident"
_FIELD = "field"
_VARIABLE = "variable"
_DOT = "."
_BOOL = "bool"
_LPAREN = "("
_RPAREN = ")"
_PUNCT = "punct"  # a printable ASCII character such as ','
_KEYWORD = "keyword"
_EOF = "eof"


@dataclass(slots=True)
class _Tok:
    typ: str
    val: str
    line: int


class TemplateSyntaxError(ValueError):
    """A template Go's parser refuses; the message is Go's."""


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdecimal()


def _left_trim_len(text: str) -> int:
    return len(text) - len(text.lstrip(_SPACE))


class _Lexer:
    """Go's ``parse/lex.go`` for the ``{{``/``}}`` delimiters."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.pos = 0
        self.line = 1
        self.tokens: list[_Tok] = []
        self.paren_depth = 0

    def error(self, message: str) -> TemplateSyntaxError:
        return TemplateSyntaxError(f"template: {self.name}:{self.line}: {message}")

    def emit(self, typ: str, val: str) -> None:
        self.tokens.append(_Tok(typ, val, self.line))
        self.line += val.count("\n")

    def run(self) -> list[_Tok]:
        text = self.text
        n = len(text)
        while True:
            start = text.find("{{", self.pos)
            if start < 0:
                if self.pos < n:
                    self.emit(_TEXT, text[self.pos :])
                break
            after = start + 2
            trim = text[after : after + 1] == "-" and text[after + 1 : after + 2] in (
                " ",
                "\t",
                "\r",
                "\n",
            )
            chunk = text[self.pos : start]
            if trim:
                chunk = chunk.rstrip(_SPACE)
            if chunk:
                self.emit(_TEXT, chunk)
            self.line += text[self.pos + len(chunk) : start].count("\n")
            self.pos = after + (2 if trim else 0)
            if text.startswith("/*", self.pos):
                self._comment()
                continue
            self.emit(_LEFT, "{{")
            self._inside_action()
        self.emit(_EOF, "")
        return self.tokens

    def _at_right_delim(self) -> tuple[bool, bool]:
        text, pos = self.text, self.pos
        if (
            text[pos : pos + 1] in (" ", "\t", "\r", "\n")
            and text[pos + 1 : pos + 2] == "-"
            and text.startswith("}}", pos + 2)
        ):
            return True, True
        return text.startswith("}}", pos), False

    def _right_delim(self, trim: bool) -> None:
        self.pos += 4 if trim else 2
        self.emit(_RIGHT, "}}")
        if trim:
            skipped = _left_trim_len(self.text[self.pos :])
            self.line += self.text[self.pos : self.pos + skipped].count("\n")
            self.pos += skipped

    def _comment(self) -> None:
        end = self.text.find("*/", self.pos + 2)
        if end < 0:
            raise self.error("unclosed comment")
        body = self.text[self.pos : end + 2]
        self.pos = end + 2
        delim, trim = self._at_right_delim()
        if not delim:
            raise self.error("comment ends before closing delimiter")
        self.emit(_COMMENT, body)
        self.pos += 4 if trim else 2
        if trim:
            skipped = _left_trim_len(self.text[self.pos :])
            self.line += self.text[self.pos : self.pos + skipped].count("\n")
            self.pos += skipped

    def _at_terminator(self) -> bool:
        text, pos = self.text, self.pos
        if pos >= len(text):
            return True
        ch = text[pos]
        if ch in _SPACE or ch in ".,|:)(":
            return True
        return text.startswith("}}", pos)

    def _inside_action(self) -> None:
        text = self.text
        n = len(text)
        while True:
            delim, trim = self._at_right_delim()
            if delim:
                if self.paren_depth == 0:
                    self._right_delim(trim)
                    return
                raise self.error("unclosed left paren")
            if self.pos >= n:
                raise self.error("unclosed action")
            ch = text[self.pos]
            if ch in _SPACE:
                self._space()
            elif ch == "=":
                self.pos += 1
                self.emit(_ASSIGN, "=")
            elif ch == ":":
                if text[self.pos + 1 : self.pos + 2] != "=":
                    raise self.error("expected :=")
                self.pos += 2
                self.emit(_DECLARE, ":=")
            elif ch == "|":
                self.pos += 1
                self.emit(_PIPE, "|")
            elif ch == '"':
                self._quote()
            elif ch == "`":
                end = text.find("`", self.pos + 1)
                if end < 0:
                    raise self.error("unterminated raw quoted string")
                self.emit(_RAW, text[self.pos : end + 1])
                self.pos = end + 1
            elif ch == "$":
                self._field_or_variable(_VARIABLE)
            elif ch == "'":
                self._char()
            elif ch == "." and not text[self.pos + 1 : self.pos + 2].isdigit():
                self._field_or_variable(_FIELD)
            elif ch in "+-." or "0" <= ch <= "9":
                self._number()
            elif _is_alnum(ch):
                self._identifier()
            elif ch == "(":
                self.pos += 1
                self.emit(_LPAREN, "(")
                self.paren_depth += 1
            elif ch == ")":
                self.pos += 1
                self.paren_depth -= 1
                if self.paren_depth < 0:
                    raise self.error("unexpected right paren")
                self.emit(_RPAREN, ")")
            elif ch.isascii() and ch.isprintable():
                self.pos += 1
                self.emit(_PUNCT, ch)
            else:
                raise self.error(f"unrecognized character in action: {_sharp_u(ch)}")

    def _space(self) -> None:
        text = self.text
        start = self.pos
        while self.pos < len(text) and text[self.pos] in _SPACE:
            self.pos += 1
        # A space followed by "-}}" belongs to the trim marker of the delimiter.
        if text[self.pos : self.pos + 1] == "-" and text.startswith("}}", self.pos + 1):
            self.pos -= 1
            if self.pos == start:
                return
        self.emit(_SPACE_T, text[start : self.pos])

    def _quote(self) -> None:
        text = self.text
        i = self.pos + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.error("unterminated quoted string")
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                break
            i += 1
        self.emit(_STRING, text[self.pos : i + 1])
        self.pos = i + 1

    def _char(self) -> None:
        text = self.text
        i = self.pos + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.error("unterminated character constant")
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == "'":
                break
            i += 1
        self.emit(_CHAR, text[self.pos : i + 1])
        self.pos = i + 1

    def _field_or_variable(self, typ: str) -> None:
        text = self.text
        start = self.pos
        self.pos += 1
        if self._at_terminator():
            self.emit(_VARIABLE if typ == _VARIABLE else _DOT, text[start : self.pos])
            return
        while self.pos < len(text) and _is_alnum(text[self.pos]):
            self.pos += 1
        if not self._at_terminator():
            raise self.error(f"bad character {_sharp_u(text[self.pos])}")
        self.emit(typ, text[start : self.pos])

    def _identifier(self) -> None:
        text = self.text
        start = self.pos
        while self.pos < len(text) and _is_alnum(text[self.pos]):
            self.pos += 1
        word = text[start : self.pos]
        if not self._at_terminator():
            raise self.error(f"bad character {_sharp_u(text[self.pos])}")
        if word in _KEYWORDS:
            self.emit(_KEYWORD, word)
        elif word in ("true", "false"):
            self.emit(_BOOL, word)
        else:
            self.emit(_IDENT, word)

    def _number(self) -> None:
        text = self.text
        start = self.pos
        if not self._scan_number():
            raise self.error(f"bad number syntax: {text[start : self.pos]!r}")
        # A sign right after a number makes a complex constant such as 1+2i.
        if text[self.pos : self.pos + 1] in ("+", "-") and (
            not self._scan_number() or text[self.pos - 1] != "i"
        ):
            raise self.error(f"bad number syntax: {text[start : self.pos]!r}")
        self.emit(_NUMBER, text[start : self.pos])

    def _accept(self, chars: str) -> bool:
        if self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
            return True
        return False

    def _accept_run(self, chars: str) -> None:
        while self._accept(chars):
            pass

    def _scan_number(self) -> bool:
        self._accept("+-")
        digits = "0123456789_"
        if self._accept("0"):
            if self._accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self._accept("oO"):
                digits = "01234567_"
            elif self._accept("bB"):
                digits = "01_"
        self._accept_run(digits)
        if self._accept("."):
            self._accept_run(digits)
        if len(digits) == 11 and self._accept("eE"):
            self._accept("+-")
            self._accept_run("0123456789_")
        if len(digits) == 23 and self._accept("pP"):
            self._accept("+-")
            self._accept_run("0123456789_")
        self._accept("i")
        if self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1
            return False
        return True


def _sharp_u(ch: str) -> str:
    text = f"U+{ord(ch):04X}"
    if ch.isprintable():
        text += f" '{ch}'"
    return text


# ---------------------------------------------------------------- parse tree


@dataclass(slots=True)
class _Number:
    text: str
    is_int: bool
    is_float: bool
    int_value: int
    float_value: float
    is_char: bool = False
    is_complex: bool = False


@dataclass(slots=True)
class _Node:
    """An operand: kind is one of field, variable, dot, nil, bool, number, string,
    ident, pipe, chain."""

    kind: str
    line: int
    idents: tuple[str, ...] = ()  # field/variable chain; ident name in [0]
    value: Any = None  # bool, string, _Number, or _Pipe for pipe/chain
    text: str = ""  # how it was written, for error messages


@dataclass(slots=True)
class _Command:
    args: list[_Node]


@dataclass(slots=True)
class _Pipe:
    line: int
    decl: list[str] = field(default_factory=list)
    is_assign: bool = False
    cmds: list[_Command] = field(default_factory=list)


@dataclass(slots=True)
class _Action:
    pipe: _Pipe


@dataclass(slots=True)
class _Control:
    kind: str  # "if", "with" or "range"
    pipe: _Pipe
    body: list[Any]
    else_body: list[Any] | None


@dataclass(slots=True)
class _Include:
    name: str
    pipe: _Pipe | None
    line: int


class _Break:
    pass


class _Continue:
    pass


_BREAK: Final = _Break()
_CONTINUE: Final = _Continue()


@dataclass(slots=True)
class _End:
    line: int


@dataclass(slots=True)
class _Else:
    line: int


def _parse_number(
    text: str, line_error: Callable[[str], TemplateSyntaxError]
) -> _Number:
    """``parse.NumberNode``: which Go kinds a number constant can be."""
    if text.startswith("'"):
        try:
            body = text[1:-1]
            if body.startswith("\\"):
                value, end, _ = unquote_char(body, 1, "'")
                if end != len(body):
                    raise EscapeError("unknown", "", "", 0)
            elif len(body) == 1:
                value = body
            else:
                raise EscapeError("unknown", "", "", 0)
        except EscapeError:
            raise line_error(f"malformed character constant: {text}") from None
        code = ord(value)
        return _Number(text, True, True, code, float(code), is_char=True)
    if text.endswith("i"):
        return _Number(text, False, False, 0, 0.0, is_complex=True)
    int_value: int | None = None
    try:
        int_value = int(text, 0)
    except ValueError:
        # Go also reads a leading 0 as octal ("017"); Python's int(..., 0) does not.
        body = text.lstrip("+-")
        if len(body) > 1 and body[0] == "0" and body.replace("_", "").isdigit():
            try:
                int_value = int(text.replace("0", "0o", 1), 0)
            except ValueError:
                int_value = None
    if int_value is not None:
        is_int = -(1 << 63) <= int_value < (1 << 63)
        if not is_int and not 0 <= int_value < (1 << 64):
            raise line_error(f"illegal number syntax: {text!r}")
        return _Number(text, is_int, True, int_value, float(int_value))
    try:
        if text.lower().startswith(("0x", "+0x", "-0x")):
            value_f = float.fromhex(text.replace("_", ""))
        else:
            if "__" in text or text.startswith("_") or text.endswith("_"):
                raise ValueError(text)
            value_f = float(text.replace("_", ""))
    except ValueError:
        raise line_error(f"illegal number syntax: {text!r}") from None
    if math.isinf(value_f):
        raise line_error(f"illegal number syntax: {text!r}")
    is_int = value_f.is_integer() and abs(value_f) < 2**63
    return _Number(text, is_int, True, int(value_f) if is_int else 0, value_f)


class _Parser:
    """Go's ``parse/parse.go``: a list of nodes per template, with Go's errors."""

    def __init__(self, tokens: list[_Tok], name: str, funcs: Mapping[str, GoFunc]):
        self.tokens = tokens
        self.i = 0
        self.name = name
        self.funcs = funcs
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.defined: dict[str, list[Any]] = {}
        self.line = 1

    def error(self, message: str) -> TemplateSyntaxError:
        return TemplateSyntaxError(f"template: {self.name}:{self.line}: {message}")

    def next(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        self.line = tok.line
        return tok

    def backup(self, count: int = 1) -> None:
        self.i -= count

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def next_non_space(self) -> _Tok:
        tok = self.next()
        while tok.typ == _SPACE_T:
            tok = self.next()
        return tok

    def peek_non_space(self) -> _Tok:
        tok = self.next_non_space()
        self.backup()
        return tok

    def expect(self, typ: str, context: str) -> _Tok:
        tok = self.next_non_space()
        if tok.typ != typ:
            raise self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: _Tok, context: str) -> TemplateSyntaxError:
        if tok.typ == _EOF:
            return self.error(f"unexpected EOF in {context}")
        shown = "<" + tok.val + ">" if tok.typ in (_KEYWORD,) else repr(tok.val)
        if tok.typ == _RIGHT:
            shown = '"}}"'
        return self.error(f"unexpected {shown} in {context}")

    def parse(self) -> list[Any]:
        root: list[Any] = []
        while self.peek().typ != _EOF:
            if self.peek().typ == _LEFT:
                self.next()
                tok = self.next_non_space()
                if tok.typ == _KEYWORD and tok.val == "define":
                    self._define()
                    continue
                # Back up to the left delimiter.
                while self.tokens[self.i - 1].typ != _LEFT:
                    self.i -= 1
                self.i -= 1
            node = self._text_or_action()
            if isinstance(node, _End | _Else):
                raise self.error(
                    f"unexpected {{{{{'end' if isinstance(node, _End) else 'else'}}}}}"
                )
            if node is not None:
                root.append(node)
        return root

    def _define(self) -> None:
        name_tok = self.next_non_space()
        if name_tok.typ not in (_STRING, _RAW):
            raise self.unexpected(name_tok, "define clause")
        name = self._unquote(name_tok)
        self.expect(_RIGHT, "define clause")
        saved_vars = self.vars
        self.vars = ["$"]
        body, end = self._item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            raise self.error("unexpected {{else}} in define clause")
        self.defined[name] = body

    def _item_list(self) -> tuple[list[Any], _End | _Else]:
        body: list[Any] = []
        while self.peek_non_space().typ != _EOF:
            node = self._text_or_action()
            if isinstance(node, _End | _Else):
                return body, node
            if node is not None:
                body.append(node)
        raise self.error("unexpected EOF")

    def _text_or_action(self) -> Any:
        tok = self.next_non_space()
        if tok.typ == _TEXT:
            return tok.val
        if tok.typ == _LEFT:
            return self._action()
        if tok.typ == _COMMENT:
            return None
        raise self.unexpected(tok, "input")

    def _action(self) -> Any:
        tok = self.next_non_space()
        if tok.typ == _KEYWORD:
            word = tok.val
            if word == "block":
                return self._block()
            if word == "break":
                return self._loop_control(_BREAK, "break")
            if word == "continue":
                return self._loop_control(_CONTINUE, "continue")
            if word == "else":
                return self._else()
            if word == "end":
                self.expect(_RIGHT, "end")
                return _End(tok.line)
            if word in ("if", "range", "with"):
                return self._control(word)
            if word == "template":
                return self._include("template clause")
        self.backup()
        return _Action(self._pipeline("command", _RIGHT))

    def _loop_control(self, node: Any, word: str) -> Any:
        tok = self.next_non_space()
        if tok.typ != _RIGHT:
            raise self.unexpected(tok, f"{{{{{word}}}}}")
        if self.range_depth == 0:
            raise self.error(f"{{{{{word}}}}} outside {{{{range}}}}")
        return node

    def _else(self) -> _Else:
        tok = self.peek_non_space()
        if tok.typ == _KEYWORD and tok.val in ("if", "with"):
            return _Else(tok.line)
        self.expect(_RIGHT, "else")
        return _Else(tok.line)

    def _control(self, context: str) -> _Control:
        mark = len(self.vars)
        try:
            pipe = self._pipeline(context, _RIGHT)
            if context == "range":
                self.range_depth += 1
            body, nxt = self._item_list()
            if context == "range":
                self.range_depth -= 1
            else_body: list[Any] | None = None
            if isinstance(nxt, _Else):
                tok = self.peek()
                if (
                    context in ("if", "with")
                    and tok.typ == _KEYWORD
                    and tok.val == context
                ):
                    self.next()
                    else_body = [self._control(context)]
                else:
                    else_body, end = self._item_list()
                    if not isinstance(end, _End):
                        raise self.error("expected end; found {{else}}")
            return _Control(context, pipe, body, else_body)
        finally:
            del self.vars[mark:]

    def _include(self, context: str) -> _Include:
        tok = self.next_non_space()
        if tok.typ not in (_STRING, _RAW):
            raise self.unexpected(tok, context)
        name = self._unquote(tok)
        pipe: _Pipe | None = None
        if self.next_non_space().typ != _RIGHT:
            self.backup()
            pipe = self._pipeline(context, _RIGHT)
        return _Include(name, pipe, tok.line)

    def _block(self) -> _Include:
        include = self._include("block clause")
        saved_vars = self.vars
        self.vars = ["$"]
        body, end = self._item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            raise self.error("unexpected {{else}} in block clause")
        self.defined[include.name] = body
        return include

    def _pipeline(self, context: str, end: str) -> _Pipe:
        pipe = _Pipe(self.peek_non_space().line)
        while True:
            tok = self.peek_non_space()
            if tok.typ != _VARIABLE:
                break
            self.next_non_space()
            after = self.peek()
            nxt = self.peek_non_space()
            if nxt.typ in (_ASSIGN, _DECLARE):
                pipe.is_assign = nxt.typ == _ASSIGN
                self.next_non_space()
                pipe.decl.append(tok.val)
                self.vars.append(tok.val)
                break
            if nxt.typ == _PUNCT and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(tok.val)
                self.vars.append(tok.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (_VARIABLE, _RIGHT, _RPAREN):
                        continue
                    raise self.error("range can only initialize variables")
                raise self.error(f"too many declarations in {context}")
            # "$x foo": $x is an argument, not a declaration.
            self.backup(2 if after.typ == _SPACE_T else 1)
            break
        while True:
            tok = self.next_non_space()
            if tok.typ == end:
                self._check_pipeline(pipe, context)
                return pipe
            if tok.typ in (
                _BOOL,
                _CHAR,
                _DOT,
                _FIELD,
                _IDENT,
                _NUMBER,
                _RAW,
                _STRING,
                _VARIABLE,
                _LPAREN,
            ) or (tok.typ == _KEYWORD and tok.val == "nil"):
                self.backup()
                pipe.cmds.append(self._command())
            else:
                raise self.unexpected(tok, context)

    def _check_pipeline(self, pipe: _Pipe, context: str) -> None:
        if not pipe.cmds:
            raise self.error(f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:]):
            if cmd.args[0].kind in ("bool", "dot", "nil", "number", "string"):
                raise self.error(f"non executable command in pipeline stage {i + 2}")

    def _command(self) -> _Command:
        cmd = _Command([])
        while True:
            self.peek_non_space()
            operand = self._operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.typ == _SPACE_T:
                continue
            if tok.typ in (_RIGHT, _RPAREN):
                self.backup()
            elif tok.typ != _PIPE:
                raise self.unexpected(tok, "operand")
            break
        if not cmd.args:
            raise self.error("empty command")
        return cmd

    def _operand(self) -> _Node | None:
        node = self._term()
        if node is None:
            return None
        if self.peek().typ == _FIELD:
            fields: list[str] = []
            while self.peek().typ == _FIELD:
                fields.append(self.next().val[1:])
            if node.kind == "field":
                return _Node("field", node.line, node.idents + tuple(fields))
            if node.kind == "variable":
                return _Node("variable", node.line, node.idents + tuple(fields))
            if node.kind in ("bool", "string", "number", "nil", "dot"):
                raise self.error(f"unexpected . after term {node.text!r}")
            return _Node("chain", node.line, tuple(fields), node)
        return node

    def _term(self) -> _Node | None:
        tok = self.next_non_space()
        typ = tok.typ
        if typ == _IDENT:
            if tok.val not in self.funcs and tok.val not in _BUILTIN_SPECIAL:
                raise self.error(f'function "{tok.val}" not defined')
            return _Node("ident", tok.line, (tok.val,), text=tok.val)
        if typ == _DOT:
            return _Node("dot", tok.line, text=".")
        if typ == _KEYWORD and tok.val == "nil":
            return _Node("nil", tok.line, text="nil")
        if typ == _VARIABLE:
            name, *rest = tok.val.split(".")
            if name not in self.vars:
                raise self.error(f'undefined variable "{name}"')
            return _Node("variable", tok.line, (name, *rest), text=tok.val)
        if typ == _FIELD:
            return _Node("field", tok.line, (tok.val[1:],), text=tok.val)
        if typ == _BOOL:
            return _Node("bool", tok.line, value=tok.val == "true", text=tok.val)
        if typ in (_NUMBER, _CHAR):
            number = _parse_number(tok.val, self.error)
            return _Node("number", tok.line, value=number, text=tok.val)
        if typ == _LPAREN:
            pipe = self._pipeline("parenthesized pipeline", _RPAREN)
            return _Node("pipe", tok.line, value=pipe, text="(...)")
        if typ in (_STRING, _RAW):
            return _Node("string", tok.line, value=self._unquote(tok), text=tok.val)
        self.backup()
        return None

    def _unquote(self, tok: _Tok) -> str:
        if tok.typ == _RAW:
            return tok.val[1:-1].replace("\r", "")
        body = tok.val[1:-1]
        if "\\" not in body:
            return body
        out: list[str] = []
        i = 0
        try:
            while i < len(body):
                j = body.find("\\", i)
                if j < 0:
                    out.append(body[i:])
                    break
                out.append(body[i:j])
                value, i, _ = unquote_char(body, j + 1, '"')
                out.append(value)
        except EscapeError:
            raise self.error(f"invalid syntax: {tok.val}") from None
        return "".join(out)


#: Builtins evaluated by the engine itself (they need unevaluated arguments or the
#: engine's value model) rather than through the function table.
_BUILTIN_SPECIAL: Final = frozenset({"and", "or"})


# ---------------------------------------------------------------- execution


class _State:
    __slots__ = ("depth", "out", "vars")

    def __init__(self, data: Any) -> None:
        self.vars: list[tuple[str, Any]] = [("$", data)]
        self.out: list[str] = []
        self.depth = 0


class _LoopBreak(Exception):
    pass


class _LoopContinue(Exception):
    pass


def _kind_error(value: Any, kind: str) -> ExecError:
    return ExecError(
        f"wrong type for value; expected {_KIND_NAMES[kind]}; got {go_type(value)}"
    )


def _check_kind(value: Any, kind: str) -> Any:
    """Go's ``validateType`` for one parameter kind."""
    if value is NO_VALUE:
        if kind == "a":
            return None
        if kind == "v":
            return NO_VALUE
        raise ExecError(f"invalid value; expected {_KIND_NAMES[kind]}")
    if kind in ("a", "v"):
        return value
    if kind == "s":
        if isinstance(value, str):
            return value
    elif kind == "i":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "f":
        if isinstance(value, float):
            return value
    elif kind == "b" and isinstance(value, bool):
        return value
    raise _kind_error(value, kind)


def _ideal(number: _Number) -> Any:
    """``idealConstant``: a number constant with no type context."""
    if number.is_complex:
        raise ExecError("complex constants are not supported")
    text = number.text
    hex_int = text[:2].lower() == "0x" and "p" not in text.lower()
    if (
        number.is_float
        and not hex_int
        and not number.is_char
        and any(c in text for c in ".eEpP")
    ):
        return number.float_value
    if number.is_int:
        return number.int_value
    raise ExecError(f"{text} overflows int")


class GoTemplate:
    """A parsed template; ``execute(data)`` returns the text or raises ``ExecError``.

    ``fields`` names the keys of the data the template can read, or is None when it
    may read any (it uses ``.`` or ``$`` whole, ``with``, ``range`` or ``template``):
    the stages build only those keys.
    """

    __slots__ = ("_funcs", "_root", "_templates", "fields", "text")

    def __init__(
        self,
        text: str,
        root: list[Any],
        templates: dict[str, list[Any]],
        funcs: Mapping[str, GoFunc],
    ) -> None:
        self.text = text
        self._root = root
        self._templates = templates
        self._funcs = funcs
        self.fields = _fields_of(root, templates)

    def execute(self, data: Any) -> str:
        state = _State(data)
        try:
            self._walk(state, data, self._root)
        except (_LoopBreak, _LoopContinue):  # pragma: no cover - the parser prevents it
            pass
        except RecursionError:
            raise ExecError("exceeded maximum template depth") from None
        return "".join(state.out)

    # -- walking

    def _walk(self, state: _State, dot: Any, nodes: Sequence[Any]) -> None:
        out = state.out
        for node in nodes:
            if type(node) is str:
                out.append(node)
            elif type(node) is _Action:
                value = self._pipeline(state, dot, node.pipe)
                if not node.pipe.decl:
                    out.append(_printable(value))
            elif type(node) is _Control:
                self._control(state, dot, node)
            elif node is _BREAK:
                raise _LoopBreak
            elif node is _CONTINUE:
                raise _LoopContinue
            elif type(node) is _Include:
                self._include(state, dot, node)

    def _control(self, state: _State, dot: Any, node: _Control) -> None:
        mark = len(state.vars)
        try:
            value = self._pipeline(state, dot, node.pipe)
            if node.kind == "range":
                self._range(state, dot, node, value)
                return
            if is_true(value):
                self._walk(state, value if node.kind == "with" else dot, node.body)
            elif node.else_body is not None:
                self._walk(state, dot, node.else_body)
        finally:
            del state.vars[mark:]

    def _range(self, state: _State, dot: Any, node: _Control, value: Any) -> None:
        items: list[tuple[Any, Any]]
        if isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [(i, i) for i in range(value)]
        elif value is NO_VALUE or value is None:
            items = []
        else:
            raise ExecError(f"range can't iterate over {_fmt_v(value)}")
        if not items:
            if node.else_body is not None:
                self._walk(state, dot, node.else_body)
            return
        decl = node.pipe.decl
        mark = len(state.vars)
        for index, elem in items:
            if decl:
                if node.pipe.is_assign:
                    self._set_var(state, decl[0], index if len(decl) > 1 else elem)
                    if len(decl) > 1:
                        self._set_var(state, decl[1], elem)
                elif len(decl) > 1:
                    state.vars[-2] = (decl[0], index)
                    state.vars[-1] = (decl[1], elem)
                else:
                    state.vars[-1] = (decl[0], elem)
            try:
                self._walk(state, elem, node.body)
            except _LoopContinue:
                pass
            except _LoopBreak:
                break
            finally:
                del state.vars[mark:]

    def _include(self, state: _State, dot: Any, node: _Include) -> None:
        body = self._templates.get(node.name)
        if body is None:
            raise ExecError(f'template "{node.name}" not defined')
        value = dot if node.pipe is None else self._pipeline(state, dot, node.pipe)
        inner = _State(value)
        inner.out = state.out
        inner.depth = state.depth + 1
        if inner.depth > 10_000:
            raise ExecError("exceeded maximum template depth (100000)")
        self._walk(inner, value, body)

    # -- evaluation

    def _set_var(self, state: _State, name: str, value: Any) -> None:
        for i in range(len(state.vars) - 1, -1, -1):
            if state.vars[i][0] == name:
                state.vars[i] = (name, value)
                return
        raise ExecError(f"undefined variable: {name}")

    def _var(self, state: _State, name: str) -> Any:
        for i in range(len(state.vars) - 1, -1, -1):
            if state.vars[i][0] == name:
                return state.vars[i][1]
        raise ExecError(f"undefined variable: {name}")

    def _pipeline(self, state: _State, dot: Any, pipe: _Pipe) -> Any:
        value: Any = _NO_FINAL
        for cmd in pipe.cmds:
            value = self._command(state, dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self._set_var(state, name, value)
            else:
                state.vars.append((name, value))
        return value

    def _command(self, state: _State, dot: Any, cmd: _Command, final: Any) -> Any:
        first = cmd.args[0]
        kind = first.kind
        if kind == "field":
            return self._field_chain(state, dot, dot, first.idents, cmd.args, final)
        if kind == "ident":
            return self._call(state, dot, first.idents[0], cmd.args[1:], final)
        if kind == "variable":
            value = self._var(state, first.idents[0])
            if len(first.idents) == 1:
                _not_a_function(cmd.args, final)
                return value
            return self._field_chain(
                state, dot, value, first.idents[1:], cmd.args, final
            )
        if kind == "chain":
            receiver = self._arg(state, dot, "a_raw", first.value)
            return self._field_chain(
                state, dot, receiver, first.idents, cmd.args, final
            )
        _not_a_function(cmd.args, final)
        if kind == "pipe":
            return self._pipeline(state, dot, first.value)
        if kind == "bool":
            return first.value
        if kind == "dot":
            return dot
        if kind == "nil":
            raise ExecError("nil is not a command")
        if kind == "number":
            return _ideal(first.value)
        return first.value  # string

    def _field_chain(
        self,
        state: _State,
        dot: Any,
        receiver: Any,
        idents: Sequence[str],
        args: Sequence[_Node],
        final: Any,
    ) -> Any:
        for name in idents[:-1]:
            receiver = _field(receiver, name, False)
        has_args = len(args) > 1 or final is not _NO_FINAL
        return _field(receiver, idents[-1], has_args)

    def _arg(self, state: _State, dot: Any, kind: str, node: _Node) -> Any:
        """Go's ``evalArg``: an argument for a parameter of ``kind``."""
        nk = node.kind
        if nk in ("field", "variable", "pipe", "ident", "chain", "dot"):
            if nk == "field":
                value = self._field_chain(
                    state, dot, dot, node.idents, (node,), _NO_FINAL
                )
            elif nk == "variable":
                value = self._var(state, node.idents[0])
                if len(node.idents) > 1:
                    value = self._field_chain(
                        state, dot, value, node.idents[1:], (node,), _NO_FINAL
                    )
            elif nk == "pipe":
                value = self._pipeline(state, dot, node.value)
            elif nk == "ident":
                value = self._call(state, dot, node.idents[0], (), _NO_FINAL)
            elif nk == "chain":
                receiver = self._arg(state, dot, "a_raw", node.value)
                value = self._field_chain(
                    state, dot, receiver, node.idents, (node,), _NO_FINAL
                )
            else:
                value = dot
            if kind == "a_raw":
                return value
            return _check_kind(value, kind)
        if nk == "nil":
            if kind in ("a", "a_raw"):
                return None
            if kind == "v":
                return NO_VALUE
            raise ExecError(f"cannot assign nil to {_KIND_NAMES[kind]}")
        if kind in ("a", "v", "a_raw"):
            if nk == "number":
                return _ideal(node.value)
            return node.value  # bool or string
        if kind == "s":
            if nk == "string":
                return node.value
            raise ExecError(f"expected string; found {node.text}")
        if kind == "b":
            if nk == "bool":
                return node.value
            raise ExecError(f"expected bool; found {node.text}")
        if kind == "i":
            if nk == "number" and node.value.is_int:
                return node.value.int_value
            raise ExecError(f"expected integer; found {node.text}")
        if kind == "f":
            if nk == "number" and node.value.is_float:
                return node.value.float_value
            raise ExecError(f"expected float; found {node.text}")
        raise ExecError(f"can't handle {node.text} for arg of type {kind}")

    def _call(
        self,
        state: _State,
        dot: Any,
        name: str,
        args: Sequence[_Node],
        final: Any,
    ) -> Any:
        if name in _BUILTIN_SPECIAL:
            return self._and_or(state, dot, name, args, final)
        func = self._funcs[name]
        params = func.params
        n_in = len(args) + (0 if final is _NO_FINAL else 1)
        n_fixed = len(params)
        if func.variadic is not None:
            if n_in < n_fixed:
                raise ExecError(
                    f"wrong number of args for {name}: want at least {n_fixed} "
                    f"got {len(args)}"
                )
        elif n_in != n_fixed:
            raise ExecError(
                f"wrong number of args for {name}: want {n_fixed} got {n_in}"
            )
        argv: list[Any] = []
        for i, node in enumerate(args):
            kind = params[i] if i < n_fixed else func.variadic
            assert kind is not None
            argv.append(self._arg(state, dot, kind, node))
        if final is not _NO_FINAL:
            i = len(args)
            kind = params[i] if i < n_fixed else func.variadic
            assert kind is not None
            argv.append(_check_kind(final, kind))
        try:
            return func.fn(*argv)
        except ExecError:
            raise
        except FuncError as exc:
            raise ExecError(f"error calling {name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a Go panic, recovered by the engine
            raise ExecError(f"error calling {name}: {exc}") from None

    def _and_or(
        self, state: _State, dot: Any, name: str, args: Sequence[_Node], final: Any
    ) -> Any:
        if len(args) + (0 if final is _NO_FINAL else 1) < 1:
            raise ExecError(f"wrong number of args for {name}: want at least 1 got 0")
        want = name == "or"
        value: Any = NO_VALUE
        for node in args:
            value = self._arg(state, dot, "v", node)
            if is_true(value) == want:
                return value
        if final is not _NO_FINAL:
            value = final
        return value


def _not_a_function(args: Sequence[_Node], final: Any) -> None:
    if len(args) > 1 or final is not _NO_FINAL:
        raise ExecError(f"can't give argument to non-function {args[0].text}")


def _field(receiver: Any, name: str, has_args: bool) -> Any:
    """Go's ``evalField`` on our values: map keys; nothing has methods."""
    if receiver is NO_VALUE:
        return NO_VALUE
    if isinstance(receiver, dict):
        if has_args:
            raise ExecError(f"{name} is not a method but has arguments")
        return receiver.get(name, NO_VALUE)
    if receiver is None:
        raise ExecError(f"nil pointer evaluating interface {{}}.{name}")
    raise ExecError(f"can't evaluate field {name} in type {go_type(receiver)}")


def _fields_of(
    root: list[Any], templates: Mapping[str, list[Any]]
) -> frozenset[str] | None:
    """The data keys a template reads, or None when it may read any."""
    found: set[str] = set()

    def node(n: _Node) -> bool:
        kind = n.kind
        if kind == "field":
            found.add(n.idents[0])
            return True
        if kind == "dot":
            return False
        if kind == "variable":
            if n.idents[0] != "$":
                return True
            if len(n.idents) == 1:
                return False
            found.add(n.idents[1])
            return True
        if kind in ("pipe", "chain"):
            return pipe(n.value) if kind == "pipe" else node(n.value)
        return True

    def pipe(p: _Pipe) -> bool:
        return all(node(arg) for cmd in p.cmds for arg in cmd.args)

    def nodes(items: Sequence[Any]) -> bool:
        for item in items:
            if type(item) is _Action:
                if not pipe(item.pipe):
                    return False
            elif type(item) is _Control:
                if item.kind != "if":
                    return False
                if not pipe(item.pipe) or not nodes(item.body):
                    return False
                if item.else_body is not None and not nodes(item.else_body):
                    return False
            elif type(item) is _Include:
                return False
        return True

    if templates or not nodes(root):
        return None
    return frozenset(found)


def parse_template(
    text: str, funcs: Mapping[str, GoFunc], name: str = "pipeline_template"
) -> GoTemplate:
    """Parse ``text`` as Go's ``template.New(name).Funcs(funcs).Parse(text)`` does.

    Raises:
        TemplateSyntaxError: Go's parse error (a ``ValueError``).
    """
    tokens = _Lexer(text, name).run()
    parser = _Parser(tokens, name, funcs)
    root = parser.parse()
    return GoTemplate(text, root, parser.defined, funcs)
