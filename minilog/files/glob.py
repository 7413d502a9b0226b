"""Doublestar glob patterns, as ``local.file_match`` and ``loki.source.file`` read
``__path__`` and ``__path_exclude__`` (pure: no I/O).

Alloy matches with ``github.com/bmatcuk/doublestar/v4`` (``FilepathGlob``,
``PathMatch``); this module gives the same answers:

- ``*`` any run of characters but ``/`` (dot files included), ``?`` one such character;
- ``**`` as a whole path component: zero or more directories (``a/**/b`` matches
  ``a/b``; ``a/**`` matches ``a`` itself and everything below it); elsewhere it is
  ``*``;
- ``[abc]``, ``[a-z]``, ``[^...]`` and ``[!...]``: one character but ``/``;
- ``{a,b}``: alternatives, nested, empty ones allowed, ``/`` inside them allowed;
- ``\\`` escapes the next character.

An unclosed ``[`` or ``{``, an empty class ``[]`` or a trailing ``\\`` is a bad
pattern (``ValueError``), as doublestar's ``ErrBadPattern``. ``wcmatch`` was measured
against doublestar's own test table and differs in nine of its cases (a lone
alternative ``{a/*}``, ``*`` against the empty name, ``a/**`` against ``a``), hence a
translation of our own.
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["GlobPattern", "compile_glob", "has_meta", "path_match", "split_pattern"]

_META: Final = frozenset("*?[{\\")


def has_meta(pattern: str) -> bool:
    """Whether ``pattern`` has any character with a glob meaning."""
    return any(c in _META for c in pattern)


def split_pattern(pattern: str) -> tuple[str, str]:
    """``(base directory, rest)``: the base is everything up to the last ``/`` before
    the first meta character, unescaped (doublestar's ``SplitPattern``); ``"."`` when
    the pattern starts with a meta character."""
    i = 0
    split = -1
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c in "*?[{":
            break
        if c == "/":
            split = i
        i += 1
    if split == -1:
        return ".", pattern
    base = pattern[:split] if split else "/"
    return re.sub(r"\\(.)", r"\1", base), pattern[split + 1 :]


class _Translator:
    """One pass over a pattern, producing an anchored regular expression."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.out: list[str] = []

    def bad(self, why: str) -> ValueError:
        return ValueError(f"bad glob pattern {self.p!r}: {why}")

    def whole_component(self, i: int) -> bool:
        """``**`` at ``i`` stands alone between separators (or the ends)."""
        p = self.p
        before = i == 0 or p[i - 1] == "/"
        after = i + 2 == len(p) or p[i + 2] == "/"
        return before and after

    def run(self, depth: int = 0) -> str:
        p, out = self.p, self.out
        n = len(p)
        while self.i < n:
            c = p[self.i]
            if c == "\\":
                if self.i + 1 >= n:
                    raise self.bad("trailing backslash")
                out.append(re.escape(p[self.i + 1]))
                self.i += 2
            elif (
                c == "/"
                and p.startswith("**", self.i + 1)
                and (self.whole_component(self.i + 1))
            ):
                rest = self.i + 3
                if rest == n or p[rest:] == "/":
                    # "a/**" is a itself and everything below it.
                    out.append("(?:/.*)?")
                    self.i = n
                else:
                    # "a/**/b": zero or more directories between a and b.
                    out.append("/(?:.*/)?")
                    self.i = rest + 1
            elif c == "*":
                if p.startswith("**", self.i) and self.whole_component(self.i):
                    if self.i + 2 == n:
                        out.append(".*")
                        self.i = n
                    else:
                        out.append("(?:.*/)?")
                        self.i += 3
                else:
                    out.append("[^/]*")
                    while self.i < n and p[self.i] == "*":
                        self.i += 1
            elif c == "?":
                out.append("[^/]")
                self.i += 1
            elif c == "[":
                self.char_class()
            elif c == "{":
                self.i += 1
                out.append("(?:")
                self.run(depth + 1)
                if self.i >= n or p[self.i] != "}":
                    raise self.bad("unclosed {")
                out.append(")")
                self.i += 1
            elif c == "," and depth:
                out.append("|")
                self.i += 1
            elif c == "}" and depth:
                return "".join(out)
            else:
                out.append(re.escape(c))
                self.i += 1
        return "".join(out)

    def char_class(self) -> None:
        p = self.p
        n = len(p)
        i = self.i + 1
        negate = i < n and p[i] in "!^"
        if negate:
            i += 1
        items: list[str] = []
        while True:
            if i >= n:
                raise self.bad("unclosed [")
            c = p[i]
            if c == "]":
                break
            if c == "\\":
                if i + 1 >= n:
                    raise self.bad("unclosed [")
                c = p[i + 1]
                i += 1
            lo = c
            i += 1
            if i + 1 < n and p[i] == "-" and p[i + 1] != "]":
                hi = p[i + 1]
                i += 2
                if hi == "\\":
                    if i >= n:
                        raise self.bad("unclosed [")
                    hi = p[i]
                    i += 1
                if hi < lo:
                    raise self.bad(f"range {lo}-{hi} out of order")
                items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            else:
                items.append(re.escape(lo))
        if not items:
            raise self.bad("empty character class")
        self.i = i + 1
        body = "".join(items)
        self.out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")


class GlobPattern:
    """A compiled doublestar pattern: ``match(path)`` as ``doublestar.PathMatch``."""

    __slots__ = ("_regex", "pattern", "recursive")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        translator = _Translator(pattern)
        body = translator.run()
        self._regex = re.compile(body, re.DOTALL)
        #: Whether a match may lie any number of directories down (``**``).
        self.recursive = "**" in pattern

    def match(self, path: str) -> bool:
        return self._regex.fullmatch(path) is not None

    def depth(self) -> int:
        """Most path components the pattern spans (meaningless when recursive)."""
        return self.pattern.count("/") + 1

    def __repr__(self) -> str:
        return f"GlobPattern({self.pattern!r})"


@functools.lru_cache(maxsize=256)
def compile_glob(pattern: str) -> GlobPattern:
    """The compiled pattern (cached: targets repeat theirs every sync).

    Raises:
        ValueError: a bad pattern.
    """
    return GlobPattern(pattern)


def path_match(pattern: str, path: str) -> bool:
    """``doublestar.PathMatch(pattern, path)`` on a POSIX system.

    Raises:
        ValueError: a bad pattern.
    """
    return compile_glob(pattern).match(path)
