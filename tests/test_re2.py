"""RE2 -> Python ``re``: what RE2 patterns mean, and what RE2 refuses (with offsets)."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilog._re2 import MAX_REPEAT, compile_re2, group_index, translate
from minilog.errors import Re2Error

# (id, pattern, strings that fully match, strings that do not)
MATCHES = [
    ("anchored-both-ends", "abc", ["abc"], ["xabc", "abcx", "ab"]),
    ("alternation-anchored-as-a-whole", "a|b", ["a", "b"], ["ab", "ba"]),
    ("leftmost-first-still-full-match", "(a|ab)", ["a", "ab"], ["abb"]),
    ("dot-matches-newline", "foo.bar", ["foo\nbar", "foo-bar"], ["foobar"]),
    ("s-flag-off-dot-skips-newline", "(?-s:a.b)", ["a-b"], ["a\nb"]),
    ("dollar-is-end-of-text", "a$\n", [], ["a\n"]),
    ("dollar-multiline", "(?m)a$\n", ["a\n"], ["a"]),
    ("caret-multiline", "(?m)a\n^b", ["a\nb"], ["ab"]),
    ("backslash-z", "a\\z", ["a"], ["a\n"]),
    ("backslash-A", "\\Aa", ["a"], ["ba"]),
    ("case-insensitive-flag", "(?i)abc", ["ABC", "aBc"], ["abd"]),
    ("case-insensitive-unicode", "(?i)é", ["É", "é"], ["e"]),
    ("flag-lasts-to-group-end-across-bar", "a(?i)b|c", ["ab", "aB", "C", "c"], ["AB"]),
    ("flag-ends-with-group", "(a(?i)b)c", ["aBc"], ["aBC"]),
    ("scoped-flag-group", "(?i:a)b", ["Ab"], ["aB"]),
    ("flag-group-with-negation", "(?i)a(?-i:b)", ["Ab"], ["AB"]),
    ("empty-flag-group", "a(?)b", ["ab"], []),
    ("non-capturing-group", "(?:ab)+", ["abab"], ["aba"]),
    ("lazy-quantifier", "(a+?)(a*)", ["aaa"], ["b"]),
    ("counted-repeat", "a{2,3}", ["aa", "aaa"], ["a", "aaaa"]),
    ("counted-repeat-exact", "a{2}", ["aa"], ["aaa"]),
    ("counted-repeat-open", "a{2,}", ["aaaa"], ["a"]),
    ("brace-without-count-is-literal", "a{,2}", ["a{,2}"], ["a", "aa"]),
    ("brace-literal", "x{y}", ["x{y}"], ["xy"]),
    ("brace-with-non-ascii-digit-is-literal", "a{\u0663}", ["a{\u0663}"], ["aaa"]),
    ("max-repeat-allowed", "a{1000}", ["a" * 1000], ["a" * 999]),
    ("nested-repeat-within-limit", "(a{10}){100}", ["a" * 1000], ["a" * 10]),
    ("star-of-counted-repeat", "(a{1000})*", ["", "a" * 2000], ["a"]),
    ("repeated-assertion", "^*a", ["a"], []),
    ("perl-d-is-ascii", "\\d+", ["0123456789"], ["\u0663", "\u00b2"]),
    ("perl-w-is-ascii", "\\w+", ["az_AZ09"], ["é", "-"]),
    ("perl-s-has-no-vtab", "\\s", [" ", "\t", "\n", "\r", "\f"], ["\v", "\u00a0"]),
    ("perl-negated", "\\D\\W\\S", ["a-x", "a x"], ["1-x", "aax", "a-\t"]),
    ("word-boundary-is-ascii", ".*\\bx", ["éx", " x"], ["ax"]),
    ("not-word-boundary", "a\\Bb", ["ab"], []),
    ("posix-alpha", "[[:alpha:]]+", ["abcXYZ"], ["é", "1"]),
    ("posix-negated", "[[:^digit:]]+", ["ab-"], ["a1"]),
    ("posix-word-and-punct", "[[:word:][:punct:]]+", ["a_!", "Z~"], [" "]),
    ("posix-xdigit", "[[:xdigit:]]+", ["09afAF"], ["g"]),
    ("unicode-letter", "\\pL+", ["héllo", "Ωμέγα"], ["a1"]),
    ("unicode-letter-braces", "\\p{L}+", ["日本"], ["1"]),
    ("unicode-upper", "\\p{Lu}", ["É", "A"], ["é"]),
    ("unicode-negated", "\\PL", ["1", "-"], ["a"]),
    ("unicode-caret-negation", "\\p{^L}", ["1"], ["a"]),
    ("unicode-number", "\\pN+", ["42\u0663\u00b2"], ["x"]),
    ("unicode-decimal", "\\p{Nd}", ["\u0663"], ["\u00b2"]),
    ("unicode-punct-symbol-space", "\\pP\\pS\\pZ", ["!+ "], ["a+ "]),
    ("unicode-any", "\\p{Any}", ["\n", "x"], ["xy"]),
    ("unicode-in-class", "[\\p{Lu}\\d]+", ["A1É"], ["a"]),
    ("negated-unicode-in-class", "[^\\pL]+", ["12-"], ["a"]),
    ("class-leading-bracket", "[]a]+", ["]a]"], ["b"]),
    ("class-trailing-dash", "[a-]+", ["a-"], ["b"]),
    ("class-range", "[a-cx]+", ["abcx"], ["d"]),
    ("class-negated-matches-newline", "[^a]", ["\n"], ["a"]),
    ("class-negated-case-folded", "(?i)[^a]", ["b"], ["A", "a"]),
    ("class-set-operator-lookalikes", "[&&~~|-]+", ["&~|-"], ["a"]),
    ("class-open-bracket-literal", "[[a]+", ["[a"], ["b"]),
    ("class-that-is-empty", "[\\P{Any}]", [], ["a", "\n"]),
    ("negated-empty-class", "[^\\P{Any}]", ["a", "\n"], ["ab"]),
    ("class-escapes", "[\\x41\\n\\]]+", ["A\n]"], ["B"]),
    ("hex-escape", "\\x41\\x{263a}", ["A\u263a"], ["Ax"]),
    ("octal-escape", "\\101\\0", ["A\x00"], ["A"]),
    ("two-digit-octal-not-backreference", "(a)\\12", ["a\n"], ["aa"]),
    ("simple-escapes", "\\t\\a\\f\\v", ["\t\x07\x0c\x0b"], []),
    ("punctuation-escapes", "\\.\\*\\-\\#\\ ", [".*-# "], []),
    ("quoted-literal", "\\Q.*+?\\E", [".*+?"], ["a"]),
    ("quoted-literal-to-end", "x\\Q(a|b", ["x(a|b"], ["xa"]),
    ("literal-metachars-in-text", "a]}", ["a]}"], []),
    ("named-group-P", "(?P<svc>[a-z]+)-\\d+", ["web-1"], ["web-"]),
    ("named-group-angle", "(?<svc>[a-z]+)", ["web"], ["1"]),
]


@pytest.mark.parametrize(
    ("pattern", "good", "bad"), [m[1:] for m in MATCHES], ids=[m[0] for m in MATCHES]
)
def test_matches_like_re2(pattern: str, good: list[str], bad: list[str]) -> None:
    compiled = compile_re2(pattern)
    for text in good:
        assert compiled.fullmatch(text) is not None, text
    for text in bad:
        assert compiled.fullmatch(text) is None, text


# (id, pattern, offset, message fragment)
INVALID = [
    ("lookahead", "ab(?=c)", 2, "lookahead is not RE2"),
    ("negative-lookahead", "(?!a)b", 0, "negative lookahead"),
    ("lookbehind", "x(?<=a)b", 1, "lookbehind is not RE2"),
    ("negative-lookbehind", "(?<!a)b", 0, "negative lookbehind"),
    ("atomic-group", "(?>a)", 0, "atomic groups"),
    ("conditional", "(a)(?(1)b|c)", 3, "conditional groups"),
    ("comment-group", "a(?#x)", 1, "comments"),
    ("named-backreference", "(?P<n>a)(?P=n)", 8, "named backreferences"),
    ("backreference", "(a)\\1", 3, "backreferences are not supported"),
    ("backreference-8", "\\8", 0, "backreferences"),
    ("possessive-plus", "a++", 1, "invalid nested repetition operator: `++`"),
    ("possessive-star", "ab*+", 2, "invalid nested repetition operator: `*+`"),
    ("possessive-question", "a?+", 1, "invalid nested repetition operator"),
    ("possessive-count", "a{2}+", 1, "invalid nested repetition operator"),
    ("double-star", "a**", 1, "invalid nested repetition operator: `**`"),
    ("lazy-then-repeat", "a*?*", 1, "invalid nested repetition operator"),
    ("capital-Z", "a\\Z", 1, "RE2 has no \\Z"),
    ("repeat-over-1000", "a{1001}", 1, "invalid repeat count"),
    ("repeat-max-over-1000", "a{2,1001}", 1, "invalid repeat count"),
    ("repeat-min-over-max", "a{3,2}", 1, "invalid repeat count"),
    ("nested-repeat-product", "(a{100}){11}", 8, "invalid repeat count"),
    ("deeply-nested-repeat-product", "((a{100})b){11}", 11, "invalid repeat count"),
    ("nested-repeat-in-alternation", "(a{2}|b{500}){3}", 13, "invalid repeat count"),
    ("ungreedy-flag", "(?U)a*", 2, "ungreedy"),
    ("unknown-flag", "(?x)a", 0, "invalid or unsupported Perl syntax"),
    ("dangling-negation", "(?i-)a", 0, "invalid or unsupported Perl syntax"),
    ("missing-bracket", "x[ab", 1, "missing closing ]"),
    ("missing-paren", "a(b(c)", 1, "missing closing )"),
    ("unexpected-paren", "ab)", 2, "unexpected )"),
    ("leading-star", "*a", 0, "missing argument to repetition operator: `*`"),
    ("star-after-bar", "a|+", 2, "missing argument to repetition operator"),
    ("star-after-paren", "(*)", 1, "missing argument to repetition operator"),
    ("leading-count", "{2}", 0, "missing argument to repetition operator"),
    ("script-class", "x\\p{Greek}", 1, "not scripts"),
    ("unknown-one-letter-class", "\\pX", 0, "invalid character class range"),
    ("reversed-range", "[az-a]", 2, "invalid character class range: `z-a`"),
    ("reversed-escaped-range", "[\\x7a-a]", 1, "invalid character class range"),
    ("unknown-posix-class", "[[:foo:]]", 1, "invalid character class range"),
    ("any-byte", "\\C", 0, "any byte"),
    ("unknown-letter-escape", "\\G", 0, "invalid escape sequence: `\\G`"),
    ("non-ascii-escape", "\\é", 0, "invalid escape sequence"),
    ("trailing-backslash", "ab\\", 2, "trailing backslash"),
    ("hex-too-large", "\\x{110000}", 0, "invalid escape sequence"),
    ("hex-bad-digits", "\\xZZ", 0, "invalid escape sequence"),
    ("bad-group-name", "(?P<a-b>x)", 0, "invalid named capture"),
    ("empty-group-name", "(?P<>x)", 0, "invalid named capture"),
    ("duplicate-group-name", "(?P<n>a)(?P<n>b)", 8, "duplicate capture group name"),
    ("unterminated-group-name", "a(?P<name", 1, "invalid named capture"),
    ("unterminated-flags", "a(?i", 1, "missing closing )"),
    ("unicode-class-at-end", "a\\p", 1, "invalid character class range"),
    ("unterminated-unicode-class", "\\p{L", 0, "invalid character class range"),
    ("unterminated-hex-braces", "\\x{41", 0, "invalid escape sequence"),
    ("trailing-backslash-in-class", "[a\\", 2, "trailing backslash"),
    ("trailing-backslash-in-range", "[a-\\", 3, "trailing backslash"),
    ("nesting-deeper-than-re2", "(" * 1001 + ")" * 1001, 1000, "nests too deeply"),
    ("nesting-deeper-than-python", "(" * 999 + ")" * 999, 0, "nests too deeply"),
    ("backspace-in-class", "[\\b]", 1, "invalid escape sequence"),
]


@pytest.mark.parametrize(
    ("pattern", "offset", "fragment"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_rejects_what_re2_rejects_with_offset(
    pattern: str, offset: int, fragment: str
) -> None:
    with pytest.raises(Re2Error) as info:
        compile_re2(pattern)
    assert info.value.offset == offset
    assert fragment in info.value.message
    assert isinstance(info.value, ValueError)
    assert f"offset {offset}" in str(info.value)


def test_moderate_nesting_is_fine() -> None:
    assert compile_re2("(" * 100 + "a" + ")" * 100).fullmatch("a") is not None


def test_max_repeat_is_re2s_limit() -> None:
    assert MAX_REPEAT == 1000
    compile_re2(f"a{{{MAX_REPEAT}}}")
    with pytest.raises(Re2Error):
        compile_re2(f"a{{{MAX_REPEAT + 1}}}")


def test_group_numbering_matches_go() -> None:
    """Non-capturing and flag groups do not count; the wrapper adds no group."""
    m = compile_re2("(?:x)(a)(?i:b)(?P<n>c)(d)").fullmatch("xabcd")
    assert m is not None
    assert m.groups() == ("a", "c", "d")


def test_group_index_restores_go_names_python_cannot_spell() -> None:
    pattern = compile_re2("(?P<01>a)(?<svc>b)(?P<1x>c)")
    assert group_index(pattern) == {"01": 1, "svc": 2, "1x": 3}


def test_translate_wraps_in_dotall_scope() -> None:
    assert translate("a.b") == "(?s:a.b)"


def test_class_output_has_no_future_warning() -> None:
    # pytest turns warnings into errors; a '[' or '--' inside a set would warn.
    lookalikes = re.compile(translate("[-&&||~~[]+"))
    assert lookalikes.fullmatch("[-&|~") is not None


def test_compile_is_cached() -> None:
    assert compile_re2("(cached)+") is compile_re2("(cached)+")


def test_c_category_excludes_unassigned_like_go() -> None:
    other = compile_re2("\\pC")
    assert other.fullmatch("\x00") is not None  # Cc
    assert other.fullmatch("\u0378") is None  # Cn, unassigned


@given(st.characters(max_codepoint=0x2FFFF))
def test_unicode_categories_agree_with_unicodedata(ch: str) -> None:
    category = unicodedata.category(ch)
    for major in "LNPSZM":
        expected = category.startswith(major)
        assert (compile_re2(f"\\p{major}").fullmatch(ch) is not None) == expected
    assert (compile_re2("\\p{Lu}").fullmatch(ch) is not None) == (category == "Lu")


@given(st.text(max_size=30).filter(lambda s: "\\E" not in s))
def test_quoted_text_matches_only_itself(text: str) -> None:
    pattern = compile_re2("\\Q" + text + "\\E")
    assert pattern.fullmatch(text) is not None
    assert pattern.fullmatch(text + "x") is None
