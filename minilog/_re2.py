"""RE2 (Go ``regexp``) patterns compiled with Python's ``re``, as relabelling uses them.

Owns the translation of RE2 syntax into an equivalent Python pattern, and the rejection,
with the offset of the offending construct, of what RE2 refuses (lookaround,
backreferences, possessive quantifiers, ...). ``$`` template expansion lives in
``relabel.py``.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from dataclasses import dataclass, field

from minilog.errors import Re2Error

__all__ = ["MAX_REPEAT", "Re2Error", "compile_re2", "group_index", "translate"]

#: RE2's cap on ``{n,m}`` counts (and on their product when nested).
MAX_REPEAT = 1000
#: RE2's cap on group nesting.
_MAX_DEPTH = 1000
#: Go group names that are not Python identifiers (``(?P<1x>..)``) get this prefix in
#: Python: a non-ASCII letter, which no (ASCII-only) RE2 name can contain, so decoding
#: is unambiguous.
_NAME_PREFIX = "\u014b_"
_MAX_RUNE = sys.maxunicode


_Ranges = list[tuple[int, int]]

# Go's Perl classes are ASCII-only (RE2 syntax doc), unlike Python's Unicode \d \w \s.
_DIGIT: _Ranges = [(0x30, 0x39)]
_WORD: _Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE: _Ranges = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]
_PERL: dict[str, _Ranges] = {"d": _DIGIT, "w": _WORD, "s": _SPACE}

_POSIX: dict[str, _Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": _WORD,
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}

# Go's unicode.Categories: one-letter classes are unions of their two-letter members,
# and "C" leaves out Cn (unassigned), as Go's table does.
_CATEGORY_GROUPS: dict[str, tuple[str, ...]] = {
    "C": ("Cc", "Cf", "Co", "Cs"),
    "L": ("Lu", "Ll", "Lt", "Lm", "Lo"),
    "M": ("Mn", "Mc", "Me"),
    "N": ("Nd", "Nl", "No"),
    "P": ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"),
    "S": ("Sm", "Sc", "Sk", "So"),
    "Z": ("Zs", "Zl", "Zp"),
}
_CATEGORIES = frozenset(_CATEGORY_GROUPS) | frozenset(
    c for members in _CATEGORY_GROUPS.values() for c in members
)


@functools.cache
def _category_table() -> dict[str, _Ranges]:
    """Code point ranges per two-letter general category, built once (about 0.2 s)."""
    table: dict[str, _Ranges] = {}
    category = unicodedata.category
    start, current = 0, category("\x00")
    for cp in range(1, _MAX_RUNE + 2):
        cat = category(chr(cp)) if cp <= _MAX_RUNE else ""
        if cat != current:
            table.setdefault(current, []).append((start, cp - 1))
            start, current = cp, cat
    return table


def _unicode_class(name: str) -> _Ranges | None:
    if name == "Any":
        return [(0, _MAX_RUNE)]
    if name not in _CATEGORIES:
        return None
    table = _category_table()
    members = _CATEGORY_GROUPS.get(name, (name,))
    return _merge([r for member in members for r in table.get(member, [])])


def _merge(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _negate(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    nxt = 0
    for lo, hi in _merge(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


def _class_char(cp: int) -> str:
    # Escape every ASCII non-alphanumeric: Python would otherwise read '[', '&&', '--'
    # or '~~' inside a set as (future) set operations, and warn.
    if cp < 0x80:
        ch = chr(cp)
        if ch.isalnum():
            return ch
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def _render_class(ranges: _Ranges, negated: bool) -> str:
    ranges = _merge(ranges)
    if not ranges:
        # An empty class matches nothing; its negation matches any character.
        return "[\\x00-\\U0010ffff]" if negated else "[^\\x00-\\U0010ffff]"
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_class_char(lo))
        elif hi == lo + 1:
            parts.append(_class_char(lo) + _class_char(hi))
        else:
            parts.append(f"{_class_char(lo)}-{_class_char(hi)}")
    return ("[^" if negated else "[") + "".join(parts) + "]"


def _literal(cp: int) -> str:
    ch = chr(cp)
    if ch in ".^$*+?{}[]\\|()":
        return "\\" + ch
    if cp < 0x20 or 0xD800 <= cp <= 0xDFFF:
        return _class_char(cp)
    return ch


_FLAG_CHARS = "ims"
# ASCII digits only: Python's \d would also take "{\u0663}" as a count.
_REPEAT = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")
_GO_NAME = re.compile(r"[A-Za-z0-9_]+")
_OCTAL = "01234567"
_SIMPLE_ESCAPES = {"a": 7, "f": 12, "t": 9, "n": 10, "r": 13, "v": 11}
_ASSERTIONS = {"A": "\\A", "z": "\\Z", "b": "(?a:\\b)", "B": "(?a:\\B)"}


#: Perl/Python group syntax RE2 refuses, by what follows "(?".
_UNSUPPORTED_GROUPS = {
    "=": "lookahead",
    "!": "negative lookahead",
    "<=": "lookbehind",
    "<!": "negative lookbehind",
    ">": "atomic groups",
    "(": "conditional groups",
    "#": "comments",
    "P=": "named backreferences",
    "P>": "recursion",
}


@dataclass
class _Frame:
    """An open group: its start, its flags, and the scoped flag groups opened in it."""

    offset: int
    flags: frozenset[str]
    reopen: list[str] = field(default_factory=list)
    max_factor: int = 1


@dataclass
class _Atom:
    """The last repeatable item: its output index and its nested repeat factor."""

    start: int
    factor: int
    assertion: bool = False


class _Translator:
    """One pass over the RE2 pattern, emitting Python pieces with source offsets."""

    def __init__(self, pattern: str) -> None:
        self.src = pattern
        self.pos = 0
        self.out: list[str] = []
        self.origin: list[int] = []
        self.frames = [_Frame(0, frozenset("s"))]
        self.atom: _Atom | None = None
        self.names: set[str] = set()

    # -- output

    def emit(self, text: str, offset: int) -> None:
        self.out.append(text)
        self.origin.append(offset)

    def emit_atom(
        self, text: str, offset: int, *, factor: int = 1, assertion: bool = False
    ) -> None:
        self.atom = _Atom(len(self.out), factor, assertion)
        self.emit(text, offset)

    def error(self, message: str, offset: int) -> Re2Error:
        return Re2Error(message, offset)

    # -- driver

    def run(self) -> str:
        src = self.src
        while self.pos < len(src):
            ch = src[self.pos]
            start = self.pos
            if ch == "(":
                self.open_group()
            elif ch == ")":
                self.close_group()
            elif ch == "|":
                self.alternate()
            elif ch in "*+?":
                self.repeat(start, ch, 1)
            elif ch == "{" and (m := _REPEAT.match(src, start)) is not None:
                self.repeat(start, m.group(0), m.end() - start)
            elif ch == "[":
                ranges, negated = self.parse_class()
                self.emit_atom(_render_class(ranges, negated), start)
            elif ch == "\\":
                self.escape()
            elif ch == ".":
                self.pos += 1
                self.emit_atom(".", start)
            elif ch == "^":
                self.pos += 1
                self.emit_atom("^", start, assertion=True)
            elif ch == "$":
                self.pos += 1
                # Go's '$' without (?m) is end of text; Python's would also match
                # before a final newline, so use \Z.
                text = "$" if "m" in self.frames[-1].flags else "\\Z"
                self.emit_atom(text, start, assertion=True)
            else:
                self.pos += 1
                self.emit_atom(_literal(ord(ch)), start)
        if len(self.frames) > 1:
            raise self.error(
                f"missing closing ): `{src[self.frames[-1].offset :]}`",
                self.frames[-1].offset,
            )
        self.emit(")" * len(self.frames[0].reopen), len(src))
        return "".join(self.out)

    # -- groups and flags

    def open_group(self) -> None:
        src, start = self.src, self.pos
        if len(self.frames) > _MAX_DEPTH:
            raise self.error("expression nests too deeply", start)
        if not src.startswith("(?", start):
            self.pos += 1
            self.push(start, "(", self.frames[-1].flags)
            return
        rest = src[start + 2 : start + 4]
        if rest.startswith(("P<", "<")) and not rest.startswith(("<=", "<!")):
            self.named_group(start)
            return
        for prefix, what in _UNSUPPORTED_GROUPS.items():
            if rest.startswith(prefix):
                construct = src[start : start + 2 + len(prefix)]
                verb = "are" if what.endswith("s") else "is"
                raise self.error(
                    f"invalid or unsupported Perl syntax: `{construct}` "
                    f"({what} {verb} not RE2)",
                    start,
                )
        self.flag_group(start)

    def named_group(self, start: int) -> None:
        src = self.src
        name_start = start + (4 if src.startswith("(?P<", start) else 3)
        end = src.find(">", name_start)
        if end < 0:
            raise self.error(f"invalid named capture: `{src[start:]}`", start)
        name = src[name_start:end]
        if _GO_NAME.fullmatch(name) is None:
            raise self.error(f"invalid named capture: `{src[start : end + 1]}`", start)
        py_name = name if name.isidentifier() else _NAME_PREFIX + name
        if py_name in self.names:
            raise self.error(
                f"duplicate capture group name: `{src[start : end + 1]}`", start
            )
        self.names.add(py_name)
        self.pos = end + 1
        self.push(start, f"(?P<{py_name}>", self.frames[-1].flags)

    def flag_group(self, start: int) -> None:
        src = self.src
        i = start + 2
        on: set[str] = set()
        off: set[str] = set()
        negate = False
        saw_flag = False
        while True:
            if i >= len(src):
                raise self.error(f"missing closing ): `{src[start:]}`", start)
            c = src[i]
            if c in _FLAG_CHARS:
                (off if negate else on).add(c)
                saw_flag = True
            elif c == "U":
                raise self.error("ungreedy flag (?U) is not supported", i)
            elif c == "-" and not negate:
                negate, saw_flag = True, False
            elif c in ":)" and (saw_flag or not negate):
                break
            else:
                raise self.error(
                    f"invalid or unsupported Perl syntax: `{src[start : i + 1]}`", start
                )
            i += 1
        self.pos = i + 1
        frame = self.frames[-1]
        flags = (frame.flags | on) - off
        opener = _flag_opener(frame.flags, flags)
        if src[i] == ":":
            self.push(start, opener or "(?:", flags)
            return
        # (?flags) lasts to the end of the enclosing group. Python 3.11 takes global
        # flags only at the very start, so open a scoped group, closed (and reopened
        # around '|') with the enclosing group.
        frame.flags = flags
        if opener:
            frame.reopen.append(opener)
            self.emit(opener, start)
        self.atom = None

    def push(self, offset: int, opener: str, flags: frozenset[str]) -> None:
        self.emit(opener, offset)
        self.frames.append(_Frame(offset, flags))
        self.atom = None

    def close_group(self) -> None:
        start = self.pos
        if len(self.frames) == 1:
            raise self.error("unexpected ): `" + self.src[: start + 1] + "`", start)
        frame = self.frames.pop()
        parent = self.frames[-1]
        parent.max_factor = max(parent.max_factor, frame.max_factor)
        self.pos += 1
        opener_index = self.find_opener(frame.offset)
        self.emit(")" * (len(frame.reopen) + 1), start)
        self.atom = _Atom(opener_index, frame.max_factor)

    def find_opener(self, offset: int) -> int:
        for index in range(len(self.origin) - 1, -1, -1):
            if self.origin[index] == offset and self.out[index].startswith("("):
                return index
        raise AssertionError("group opener not emitted")  # pragma: no cover - invariant

    def alternate(self) -> None:
        start = self.pos
        self.pos += 1
        frame = self.frames[-1]
        closing = ")" * len(frame.reopen)
        self.emit(closing + "|" + "".join(frame.reopen), start)
        self.atom = None

    # -- repetition

    def repeat(self, start: int, op: str, length: int) -> None:
        src = self.src
        if self.atom is None:
            raise self.error(f"missing argument to repetition operator: `{op}`", start)
        end = start + length
        lazy = src.startswith("?", end)
        if lazy:
            end += 1
        following = src[end : end + 1]
        if following in ("*", "+", "?") or (
            following == "{" and _REPEAT.match(src, end) is not None
        ):
            raise self.error(
                f"invalid nested repetition operator: `{src[start : end + 1]}`", start
            )
        factor = self.atom.factor
        if op.startswith("{"):
            m = _REPEAT.fullmatch(op)
            assert m is not None
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else -1)
            if lo > MAX_REPEAT or hi > MAX_REPEAT or (hi >= 0 and lo > hi):
                raise self.error(f"invalid repeat count: `{op}`", start)
            count = hi if hi >= 0 else lo
            if count > 0:
                factor *= count
                if factor > MAX_REPEAT:
                    raise self.error(f"invalid repeat count: `{op}`", start)
        if self.atom.assertion:
            # Go repeats an empty-width assertion; Python needs it inside a group.
            self.out[self.atom.start] = "(?:" + self.out[self.atom.start]
            self.out[-1] += ")"
        frame = self.frames[-1]
        frame.max_factor = max(frame.max_factor, factor)
        self.emit(op + ("?" if lazy else ""), start)
        self.pos = end
        self.atom = None

    # -- escapes and classes

    def escape(self) -> None:
        src, start = self.src, self.pos
        if start + 1 >= len(src):
            raise self.error("trailing backslash at end of expression", start)
        c = src[start + 1]
        if c in _ASSERTIONS:
            self.pos += 2
            self.emit_atom(_ASSERTIONS[c], start, assertion=True)
            return
        if c == "Q":
            end = src.find("\\E", start + 2)
            text = src[start + 2 :] if end < 0 else src[start + 2 : end]
            self.pos = len(src) if end < 0 else end + 2
            for i, ch in enumerate(text):
                self.emit_atom(_literal(ord(ch)), start + 2 + i)
            return
        if c == "C":
            raise self.error(
                "invalid escape sequence: `\\C` (any byte is not supported)", start
            )
        ranges = self.class_escape()
        if ranges is not None:
            self.emit_atom(_render_class(*ranges), start)
            return
        cp = self.char_escape()
        self.emit_atom(_literal(cp), start)

    def class_escape(self) -> tuple[_Ranges, bool] | None:
        """Parse a ``\\d``- or ``\\p``-style escape at ``pos``; ``None`` if not one."""
        src, start = self.src, self.pos
        c = src[start + 1]
        if c.lower() in _PERL:
            self.pos += 2
            return _PERL[c.lower()], c.isupper()
        if c not in "pP":
            return None
        negated = c == "P"
        if start + 2 >= len(src):
            raise self.error(f"invalid character class range: `{src[start:]}`", start)
        if src[start + 2] == "{":
            end = src.find("}", start + 3)
            if end < 0:
                raise self.error(
                    f"invalid character class range: `{src[start:]}`", start
                )
            name = src[start + 3 : end]
            self.pos = end + 1
        else:
            name = src[start + 2]
            self.pos = start + 3
        if name.startswith("^"):
            negated, name = not negated, name[1:]
        ranges = _unicode_class(name)
        if ranges is None:
            raise self.error(
                f"invalid character class range: `{src[start : self.pos]}` (only "
                "Unicode general categories such as L, Lu, Nd, P, S, Z and Any are "
                "supported, not scripts)",
                start,
            )
        return ranges, negated

    def char_escape(self) -> int:
        """Parse a one-character escape at ``pos``; return its code point."""
        src, start = self.src, self.pos
        c = src[start + 1]
        self.pos = start + 2
        if c in _OCTAL:
            if c != "0" and (start + 2 >= len(src) or src[start + 2] not in _OCTAL):
                raise self.error(
                    f"invalid escape sequence: `\\{c}` "
                    "(backreferences are not supported)",
                    start,
                )
            end = start + 2
            while end < len(src) and end < start + 4 and src[end] in _OCTAL:
                end += 1
            self.pos = end
            return int(src[start + 1 : end], 8)
        if c == "x":
            return self.hex_escape(start)
        if c in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[c]
        if c < "\x80" and not c.isalnum():
            return ord(c)
        hint = ""
        if c in "89":
            hint = " (backreferences are not supported)"
        elif c == "Z":
            hint = " (RE2 has no \\Z; use \\z)"
        raise self.error(f"invalid escape sequence: `\\{c}`{hint}", start)

    def hex_escape(self, start: int) -> int:
        src = self.src
        if src.startswith("{", start + 2):
            end = src.find("}", start + 3)
            digits = src[start + 3 : end] if end > 0 else ""
            if not digits or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(
                    f"invalid escape sequence: `{src[start : end + 1]}`", start
                )
            value = int(digits, 16)
            if value > _MAX_RUNE:
                raise self.error(
                    f"invalid escape sequence: `{src[start : end + 1]}`", start
                )
            self.pos = end + 1
            return value
        digits = src[start + 2 : start + 4]
        if len(digits) != 2 or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.error(
                f"invalid escape sequence: `{src[start : start + 4]}`", start
            )
        self.pos = start + 4
        return int(digits, 16)

    def parse_class(self) -> tuple[_Ranges, bool]:
        src, start = self.src, self.pos
        i = start + 1
        negated = src.startswith("^", i)
        if negated:
            i += 1
        ranges: _Ranges = []
        first = True
        while True:
            if i >= len(src):
                raise self.error(f"missing closing ]: `{src[start:]}`", start)
            if src[i] == "]" and not first:
                self.pos = i + 1
                return ranges, negated
            first = False
            if src.startswith("[:", i):
                end = src.find(":]", i + 2)
                if end >= 0:
                    name = src[i + 2 : end]
                    neg = name.startswith("^")
                    posix = _POSIX.get(name[1:] if neg else name)
                    if posix is None:
                        raise self.error(
                            f"invalid character class range: `{src[i : end + 2]}`", i
                        )
                    ranges.extend(_negate(posix) if neg else posix)
                    i = end + 2
                    continue
            if src[i] == "\\":
                if i + 1 >= len(src):
                    raise self.error("trailing backslash at end of expression", i)
                self.pos = i
                perl = self.class_escape()
                if perl is not None:
                    cls, neg = perl
                    ranges.extend(_negate(cls) if neg else cls)
                    i = self.pos
                    continue
            range_start = i
            lo, i = self.class_char(i)
            hi = lo
            if src.startswith("-", i) and i + 1 < len(src) and src[i + 1] != "]":
                hi, i = self.class_char(i + 1)
                if hi < lo:
                    raise self.error(
                        f"invalid character class range: `{src[range_start:i]}`",
                        range_start,
                    )
            ranges.append((lo, hi))

    def class_char(self, i: int) -> tuple[int, int]:
        src = self.src
        if src[i] != "\\":
            return ord(src[i]), i + 1
        if i + 1 >= len(src):
            raise self.error("trailing backslash at end of expression", i)
        if src[i + 1] in _ASSERTIONS or src[i + 1] in "QC":
            raise self.error(f"invalid escape sequence: `{src[i : i + 2]}`", i)
        self.pos = i
        cp = self.char_escape()
        return cp, self.pos


def _flag_opener(current: frozenset[str], wanted: frozenset[str]) -> str:
    on = "".join(sorted(wanted - current))
    off = "".join(sorted(current - wanted))
    if not on and not off:
        return ""
    return f"(?{on}-{off}:" if off else f"(?{on}:"


def _compile(pattern: str) -> re.Pattern[str]:
    full = "(?s:" + _Translator(pattern).run() + ")"
    try:
        return re.compile(full)
    except RecursionError:
        # Python's parser recurses per group: it gives up somewhat before RE2's limit.
        raise Re2Error("expression nests too deeply for Python's re", 0) from None
    except re.error as exc:  # pragma: no cover - defensive: translation emits valid re
        raise Re2Error(f"invalid regexp: {exc.msg}", 0) from None


def translate(pattern: str) -> str:
    """Translate an RE2 pattern into the Python pattern for ``(?s:pattern)``.

    Raises:
        Re2Error: the pattern is invalid RE2, or RE2 that minilog cannot translate.
    """
    return compile_re2(pattern).pattern


@functools.lru_cache(maxsize=512)
def compile_re2(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 pattern with Prometheus relabel semantics: ``^(?s:pattern)$``.

    Use ``fullmatch`` on the result (anchoring is the caller's); ``.`` matches ``\\n``
    unless the pattern turns ``s`` off. Go group names that are not Python identifiers
    are renamed: use ``group_index`` to look groups up by their RE2 name.

    Raises:
        Re2Error: with the offset of the offending construct in ``pattern``.
    """
    return _compile(pattern)


def group_index(pattern: re.Pattern[str]) -> dict[str, int]:
    """Map RE2 group names to group numbers for a pattern from ``compile_re2``."""
    return {
        name[len(_NAME_PREFIX) :] if name.startswith(_NAME_PREFIX) else name: index
        for name, index in pattern.groupindex.items()
    }
