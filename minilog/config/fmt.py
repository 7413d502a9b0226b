"""``alloy fmt`` for minilog: the canonical layout of a valid config, comments kept.

As Alloy's ``syntax/printer``: tabs; ``=`` and trailing comments aligned in runs of
one-line statements (tabwriter rules); a blank line before a block after a statement;
source line breaks kept in lists, objects and calls, trailing comma before a lone
closer; at most one blank line. Idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from minilog._go import go_quote
from minilog.config._lexer import COMMENT, EOF, IDENT, STRING, TERM, Token, tokenize
from minilog.config._parser import BINARY_PRECEDENCE, parse_file
from minilog.errors import ConfigError

__all__ = ["format_source"]

OPENERS: Final = {"[": "]", "(": ")", "{": "}"}
CLOSERS: Final = frozenset({")", "]", "}"})
ENDERS: Final = frozenset({TERM, EOF, ",", *CLOSERS})


@dataclass(slots=True)
class _Line:
    indent: int
    key: str | None  # an attribute or field name, aligned on "=" with its neighbours'
    parts: list[str] = field(default_factory=list)
    comment: str | None = None  # a trailing comment, aligned with its neighbours'
    ff: bool = True  # starts a new alignment section (a tabwriter formfeed)


def _end_line(tok: Token) -> int:
    return tok.pos.line + tok.text.count("\n")


class _Formatter:
    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.lines: list[_Line | None] = []  # None is a blank line
        self.last_line = 0  # source line of the last token written
        self.match: dict[int, int] = {}
        stack: list[int] = []
        for i, tok in enumerate(toks):
            if tok.kind in OPENERS:
                stack.append(i)
            elif tok.kind in CLOSERS and stack:
                self.match[stack.pop()] = i

    # -- output helpers

    def start(self, indent: int, key: str | None = None, *, ff: bool = True) -> _Line:
        line = _Line(indent, key, ff=ff)
        self.lines.append(line)
        return line

    def current(self) -> _Line:
        line = self.lines[-1]
        assert line is not None
        return line

    def add(self, text: str) -> None:
        self.current().parts.append(text)

    def trailing(self, tok: Token) -> None:
        line = self.current()
        line.comment = (
            tok.text if line.comment is None else f"{line.comment} {tok.text}"
        )
        self.note(tok)

    def blank(self) -> None:
        if self.lines and self.lines[-1] is not None:
            self.lines.append(None)

    def note(self, tok: Token) -> None:
        self.last_line = _end_line(tok)

    # -- statements

    def body(self, i: int, level: int) -> int:
        """Format the statements of a body; return the index of its ``}`` or EOF."""
        toks = self.toks
        emitted = False  # anything written in this body yet (no leading blank lines)
        had_stmt = False
        # Whether the previous statement took one line (so it aligns with this one).
        prev_single = False
        after_comment = False
        while True:
            tok = toks[i]
            if tok.kind == TERM:
                i += 1
                continue
            if tok.kind in (EOF, "}"):
                return i
            blank_before = emitted and tok.pos.line > self.last_line + 1
            if blank_before:
                self.blank()
                prev_single = False
            emitted = True
            if tok.kind == COMMENT:
                self.start(level).parts.append(tok.text)
                self.note(tok)
                i += 1
                after_comment = True
                prev_single = False
                continue
            is_block = self._is_block(i)
            if is_block and had_stmt and not after_comment and not blank_before:
                # Alloy always separates a block from the statement before it.
                self.blank()
            count = len(self.lines)
            i = self.statement(i, level, ff=is_block or not prev_single)
            prev_single = len(self.lines) == count + 1 and "\n" not in "".join(
                self.current().parts
            )
            after_comment = False
            # The scanner puts the terminator before a comment that ends the line.
            j = i + 1 if toks[i].kind == TERM and toks[i + 1].kind == COMMENT else i
            if toks[j].kind == COMMENT and toks[j].pos.line == self.last_line:
                self.trailing(toks[j])
                i = j + 1
                # A trailing comment absorbs the blank line Alloy would force after it.
                after_comment = True
            had_stmt = True

    def _is_block(self, i: int) -> bool:
        toks = self.toks
        while toks[i].kind in (IDENT, ".", COMMENT):
            i += 1
        return toks[i].kind != "="

    def statement(self, i: int, level: int, *, ff: bool) -> int:
        toks = self.toks
        name: list[str] = []
        label = ""
        comments: list[str] = []  # comments inside the header stay in it
        while toks[i].kind not in ("=", "{"):
            tok = toks[i]
            if tok.kind == COMMENT:
                comments.append(" " + tok.text)
            elif tok.kind == STRING:
                # Alloy prints an empty label as no label.
                label = f" {go_quote(str(tok.value))}" if tok.value else ""
            else:
                name.append(tok.text)
            i += 1
        if toks[i].kind == "=":
            self.start(level, "".join(name), ff=ff)
            self.note(toks[i])
            if comments:
                self.add("".join(comments).lstrip() + " ")
            return self.expr(i + 1, level)
        header = "".join(name) + label + "".join(comments)
        close = self.match[i]
        line = self.start(level, ff=ff)
        if all(t.kind == TERM for t in toks[i + 1 : close]):
            line.parts.append(header + " { }")
            self.note(toks[close])
            return close + 1
        line.parts.append(header + " {")
        self.note(toks[i])
        i += 1
        if toks[i].kind == COMMENT and toks[i].pos.line == self.last_line:
            self.trailing(toks[i])
            i += 1
        i = self.body(i, level + 1)
        self.start(level).parts.append("}")
        self.note(toks[i])
        return i + 1

    # -- expressions

    def expr(self, i: int, level: int) -> int:
        """Write one expression; return the index of the token ending it (unread)."""
        toks = self.toks
        operand = False
        while True:
            tok = toks[i]
            kind = tok.kind
            if kind in ENDERS:
                return i
            if kind == COMMENT:
                if toks[i + 1].kind in ENDERS:
                    return i  # a trailing comment: the caller places it
                if tok.text.startswith("//") or "\n" in tok.text:
                    self.add(" " + tok.text)
                    self.start(level + 1)
                else:
                    self.add((" " if operand else "") + tok.text + " ")
                self.note(tok)
                i += 1
                continue
            if kind in OPENERS:
                if kind == "{":
                    role = "object"
                elif kind == "[":
                    role = "index" if operand else "list"
                else:
                    role = "call" if operand else "group"
                i = self.bracket(i, level, role)
                operand = True
                continue
            if operand and kind in BINARY_PRECEDENCE:
                self.add(f" {kind} ")
                operand = False
            elif kind in ("!", "-", "."):
                self.add(kind)
                operand = False
            else:
                self.add(tok.text)
                operand = True
            self.note(tok)
            i += 1

    def bracket(self, i: int, level: int, role: str) -> int:
        toks = self.toks
        open_tok = toks[i]
        close_i = self.match[i]
        close_tok = toks[close_i]
        self.add(open_tok.text)
        self.note(open_tok)
        j = i + 1
        if role in ("index", "group"):
            # One expression, laid out on one line as Alloy prints them.
            while j < close_i:
                tok = toks[j]
                if tok.kind == COMMENT:
                    self.add(" " + tok.text)
                    self.note(tok)
                    if tok.text.startswith("//") or "\n" in tok.text:
                        self.start(level + 1)  # the comment ends the line
                if tok.kind in (COMMENT, TERM):
                    j += 1
                    continue
                j = self.expr(j, level)
            self.add(close_tok.text)
            self.note(close_tok)
            return close_i + 1
        is_object = role == "object"
        prev_end = open_tok.pos.line
        count = 0
        prev_single = False
        # Where the last element's text ended (line, part index): the trailing comma
        # goes there, before any comment that follows it.
        elem_end: tuple[_Line, int] | None = None
        spaced = False  # an inline comment already separates the next element
        own_comment = False  # the last thing written is a comment on its own line
        while j < close_i:
            tok = toks[j]
            if tok.kind in (",", TERM):
                j += 1
                continue
            if tok.kind == COMMENT:
                nxt = toks[j + 1]
                inline = tok.text.startswith("/*") and nxt.pos.line == _end_line(tok)
                if tok.pos.line == self.last_line and not own_comment:
                    if inline:
                        self.add(" " + tok.text)
                        self.note(tok)
                        spaced = True
                    else:
                        self.trailing(tok)
                else:
                    if tok.pos.line > self.last_line + 1:
                        self.blank()
                    self.start(level + 1).parts.append(tok.text)
                    self.note(tok)
                    prev_single = False
                    # "/* c */ elem" on a line of its own stays one line, as in Alloy.
                    own_comment = not (inline and nxt.kind not in CLOSERS)
                    spaced = not own_comment
                j += 1
                continue
            key = ""
            if is_object:
                key = tok.text if tok.kind == IDENT else go_quote(str(tok.value))
            if spaced and self.last_line == tok.pos.line:
                inner = level + 1 if is_object or tok.pos.line != prev_end else level
                self.add(" " + (f"{key} = " if is_object else ""))
            elif tok.pos.line != prev_end:
                inner = level + 1
                ff = not (is_object and count and prev_single)
                self.start(inner, key or None, ff=ff)
            else:
                inner = level + 1 if is_object else level
                if count:
                    self.add(" ")
                if is_object:
                    self.add(f"{key} = ")
            spaced = own_comment = False
            if is_object:
                key_line = tok.pos.line
                j += 2
            lines_before = len(self.lines)
            j = self.expr(j, inner)
            elem_line = self.current()
            elem_end = (elem_line, len(elem_line.parts))
            # Judged on the output (Alloy looks at the source), so fmt stays idempotent.
            prev_single = len(self.lines) == lines_before and "\n" not in "".join(
                elem_line.parts
            )
            # Alloy measures an object's closing brace from the last field's *name*.
            prev_end = key_line if is_object else self.last_line
            count += 1
            k = j
            while toks[k].kind in (",", COMMENT, TERM):
                k += 1
            if k != close_i:
                self.add(",")
            if toks[j].kind == ",":
                self.note(toks[j])
                j += 1
        line_comment = (self.current().comment or "").startswith("//")
        if count and close_tok.pos.line != prev_end:
            assert elem_end is not None
            elem_end[0].parts.insert(elem_end[1], ",")
            self.start(level)
        elif own_comment or line_comment:
            self.start(level)
        self.add(close_tok.text)
        self.note(close_tok)
        return close_i + 1

    # -- rendering

    def render(self) -> str:
        lines = self.lines
        while lines and lines[-1] is None:
            lines.pop()
        key_width = _column_widths(lines, lambda ln: ln.key is not None, _key_len)
        code: dict[int, str] = {}
        for k, line in enumerate(lines):
            if line is None:
                continue
            text = "".join(line.parts)
            if line.key is not None:
                text = f"{line.key.ljust(key_width[k])} = {text}"
            code[k] = text
        comment_width = _column_widths(
            lines, lambda ln: ln.comment is not None, lambda ln, k: len(code[k])
        )
        out: list[str] = []
        for k, line in enumerate(lines):
            if line is None:
                out.append("")
                continue
            text = code[k]
            if line.comment is not None:
                text = (
                    f"{text.ljust(comment_width[k])} {line.comment}"
                    if text
                    else line.comment
                )
            out.append(("\t" * line.indent + text).rstrip(" \t"))
        # ``alloy fmt`` ends what the printer wrote with a newline, even nothing.
        return "\n".join(out) + "\n"


def _key_len(line: _Line, _k: int) -> int:
    return len(line.key or "")


def _column_widths(
    lines: list[_Line | None],
    has: Callable[[_Line], bool],
    width: Callable[[_Line, int], int],
) -> dict[int, int]:
    """Elastic tab stops: the widest cell of each run of adjacent lines that have one.

    A run ends at a blank line, a formfeed, an indentation change, a line without the
    cell, or a line whose text spans lines (a raw string).
    """
    widths: dict[int, int] = {}
    run: list[int] = []
    best = 0
    prev: _Line | None = None
    for k, line in enumerate([*lines, None]):
        joined = line is not None and has(line) and not line.ff and prev is not None
        if joined:
            assert line is not None and prev is not None
            joined = prev.indent == line.indent and "\n" not in "".join(prev.parts)
        if not joined:
            for r in run:
                widths[r] = best
            run, best = [], 0
        if line is not None and has(line):
            run.append(k)
            best = max(best, width(line, k))
            prev = line
        else:
            prev = None
    return widths


def format_source(text: str, path: str = "<config>") -> str:
    """Format a config as ``alloy fmt`` does; ``ConfigError`` if it does not parse.

    As ``alloy fmt``, this only parses and prints: a file with two unlabelled blocks
    of one name, or a component without a label, is formatted all the same.
    """
    _, diags = parse_file(text, path, components=False)
    if diags:
        raise ConfigError(diags)
    toks, _ = tokenize(text, path)
    fmt = _Formatter(toks)
    fmt.body(0, 0)
    return fmt.render()
