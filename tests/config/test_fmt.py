"""``format_source``: Alloy fmt layout, comments kept, idempotence, bad input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from minilog.config import ConfigError, format_source, parse
from minilog.config._parser import parse_file
from minilog.config.ast import dump

MESSY = """\
// header comment
discovery.docker   "d"   {
  host = "unix:///var/run/docker.sock"
    refresh_interval="5s" // trailing



  filter {
      name = "status"
    values = ["running","exited",]
  }
}
loki.write "w" {
  endpoint {
    url = "http://127.0.0.1:3100/loki/api/v1/push"
    headers = {"X-A" = "1", b=2}
    tenant_id = string.format("%s-%d",sys.env("T"),1+2*-3)
  }
  external_labels = {
    cluster = "dev",
        environment_name = "test", // why
  }
}
"""

EXPECTED = """\
// header comment
discovery.docker "d" {
\thost             = "unix:///var/run/docker.sock"
\trefresh_interval = "5s" // trailing

\tfilter {
\t\tname   = "status"
\t\tvalues = ["running", "exited"]
\t}
}

loki.write "w" {
\tendpoint {
\t\turl       = "http://127.0.0.1:3100/loki/api/v1/push"
\t\theaders   = {"X-A" = "1", b = 2}
\t\ttenant_id = string.format("%s-%d", sys.env("T"), 1 + 2 * -3)
\t}
\texternal_labels = {
\t\tcluster          = "dev",
\t\tenvironment_name = "test", // why
\t}
}
"""


def test_formats_to_alloy_layout() -> None:
    assert format_source(MESSY, "m.alloy") == EXPECTED


def test_formatting_is_idempotent_and_preserves_the_ast() -> None:
    once = format_source(MESSY)
    assert format_source(once) == once
    assert dump(parse(once)) == dump(parse(MESSY))


def test_alignment_runs_break_at_blank_lines_comments_and_blocks() -> None:
    src = "b {\na = 1\nlonger = 2\n\nx = 3\n// c\nyyy = 4\nsub { }\nzz = 5\n}\n"
    assert format_source(src) == (
        "b {\n\ta      = 1\n\tlonger = 2\n\n\tx = 3\n"
        "\t// c\n\tyyy = 4\n\n\tsub { }\n\tzz = 5\n}\n"
    )


def test_blocks_are_separated_from_the_statement_before_them() -> None:
    src = "a {\n}\nb {\nx = 1\ny {\n}\n}\nc = 1\n// about d\nd {\n}\n"
    assert format_source(src) == (
        "a { }\n\nb {\n\tx = 1\n\n\ty { }\n}\nc = 1\n// about d\nd { }\n"
    )


def test_multiline_value_ends_an_alignment_run() -> None:
    """As with Go's tabwriter: the line opening the value aligns, later ones not."""
    src = "b {\n\tlong_name = 1\n\tl = [\n\t\t1,\n\t]\n\tz = 2\n}\n"
    assert format_source(src) == (
        "b {\n\tlong_name = 1\n\tl         = [\n\t\t1,\n\t]\n\tz = 2\n}\n"
    )


def test_trailing_comments_align_across_adjacent_one_line_statements() -> None:
    src = "a = 1 // x\nbbb = 22 // y\nc = 3\nd = 4 // z\n"
    assert format_source(src) == (
        "a   = 1  // x\nbbb = 22 // y\nc   = 3\nd   = 4 // z\n"
    )


def test_elements_keep_their_line_breaks_like_alloy() -> None:
    src = "x = [1, 2,\n  3]\ny = f(a,\n b,\n)\nz = [\n1, 2,\n3,\n\n4]\n"
    assert format_source(src) == (
        "x = [1, 2,\n\t3]\ny = f(a,\n\tb,\n)\nz = [\n\t1, 2,\n\t3,\n\t4]\n"
    )


def test_objects_align_fields_and_take_a_trailing_comma_before_a_lone_brace() -> None:
    src = 'o = { a = 1, "b c" = 2,\n  long_key = 3,\n  k = `raw` }\np = {}\nq = {\n}\n'
    assert format_source(src) == (
        'o = {a = 1, "b c" = 2,\n\tlong_key = 3,\n\tk        = `raw`}\np = {}\nq = {}\n'
    )


def test_quoted_keys_are_requoted_like_go() -> None:
    src = 'a "lbl" {\n\tx = {`k"` = 1, "\\x41" = 2}\n}\n'
    assert format_source(src) == 'a "lbl" {\n\tx = {"k\\"" = 1, "A" = 2}\n}\n'


def test_comments_inside_lists_are_kept() -> None:
    src = "x = [\n  // first\n  1, // one\n\n  /* two */ 2,\n]\n"
    assert format_source(src) == (
        "x = [\n\t// first\n\t1, // one\n\n\t/* two */ 2,\n]\n"
    )


def test_raw_strings_and_block_comments_are_kept_verbatim() -> None:
    src = "/* a\n   b */\nx = `line1\n  line2`\n"
    assert format_source(src) == src


def test_blank_lines_collapse_to_one_and_leading_trailing_ones_go() -> None:
    src = "\n\na = 1\n\n\n\nb = 2\n\n\n"
    assert format_source(src) == "a = 1\n\nb = 2\n"
    assert format_source("blk {\n\n\ta = 1\n\n}\n") == "blk {\n\ta = 1\n}\n"


def test_empty_input_formats_to_empty() -> None:
    # alloy fmt adds a newline to what the printer wrote, even to nothing.
    assert format_source("") == "\n"
    assert format_source("// only\n") == "// only\n"


def test_invalid_input_is_refused_with_diagnostics() -> None:
    with pytest.raises(ConfigError) as info:
        format_source("a = [1\n2]\n", "bad.alloy")
    assert str(info.value.diagnostics[0]).startswith("bad.alloy:1:")


def test_comments_inside_a_header_are_kept_and_an_empty_label_dropped() -> None:
    src = 'foo /* c */ "l" {\n  a /* e */ = /* f */ 1\n}\nbar "" {\n}\n'
    assert format_source(src) == (
        'foo "l" /* c */ {\n\ta = /* e */ /* f */ 1\n}\n\nbar { }\n'
    )


_IDENTS = ["a", "b_c", "long_name", "x1", "héllo"]
_STRINGS = ['"s"', '"with \\"q\\""', "`raw\nline`", '"\\u00e9"', '""']
_OPS = ["+", "-", "*", "/", "%", "^", "==", "!=", "<", ">=", "&&", "||"]


class _RandomConfig:
    """Random valid configs with newlines and comments wherever Alloy allows them."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def gap(self) -> str:
        return self.r.choice([" ", " ", "\n  ", " // note\n  ", " /* b */ ", "\n\n  "])

    def expr(self, depth: int = 0) -> str:
        r = self.r
        kind = r.randrange(10 if depth < 3 else 3)
        if kind == 0:
            return r.choice(["1", "2.5", "010", "true", "null", "1e3"])
        if kind == 1:
            return r.choice(_STRINGS)
        if kind == 2:
            return ".".join(r.choice(_IDENTS) for _ in range(r.randint(1, 4)))
        if kind == 3:
            return self.seq(
                "[", "]", [self.expr(depth + 1) for _ in range(r.randint(0, 3))]
            )
        if kind == 4:
            keys = [r.choice([*_IDENTS, '"q k"']) for _ in range(r.randint(0, 3))]
            return self.seq("{", "}", [f"{k} = {self.expr(depth + 1)}" for k in keys])
        if kind == 5:
            args = [self.expr(depth + 1) for _ in range(r.randint(0, 3))]
            return r.choice(["f", "string.format", "a.b"]) + self.seq("(", ")", args)
        if kind == 6:
            op = r.choice(_OPS)
            return f"{self.expr(depth + 1)} {op}{self.gap()}{self.expr(depth + 1)}"
        if kind == 7:
            return r.choice(["-", "!"]) + self.expr(depth + 1)
        if kind == 8:
            return f"({self.expr(depth + 1)})"
        return f"{self.expr(depth + 1)}[{self.expr(depth + 1)}]"

    def seq(self, opener: str, closer: str, items: list[str]) -> str:
        if not items:
            return opener + closer
        out = opener + (self.gap() if self.r.random() < 0.5 else "")
        for n, item in enumerate(items):
            out += item
            if n < len(items) - 1:
                out += "," + (self.gap() if self.r.random() < 0.5 else " ")
            elif self.r.random() < 0.5:
                out += "," + self.gap()  # a trailing comma, maybe before a newline
        return out + closer

    def body(self, depth: int = 0) -> str:
        r = self.r
        lines = []
        for _ in range(r.randint(0, 4)):
            if r.random() < 0.6 or depth > 2:
                stmt = f"{r.choice(_IDENTS)} = {self.expr()}"
            else:
                name = ".".join(r.choice(_IDENTS) for _ in range(r.randint(1, 3)))
                label = f' "{r.choice(_IDENTS[:4])}"' if r.random() < 0.5 else ""
                stmt = f"{name}{label} {{\n{self.body(depth + 1)}\n}}"
            if r.random() < 0.2:
                stmt += " // trailing"
            lines.append(stmt)
            lines.extend(["// own line"] if r.random() < 0.2 else [])
            lines.extend([""] if r.random() < 0.2 else [])
        return "\n".join(lines)


@pytest.mark.parametrize("seed", range(0, 400, 20), ids=lambda s: f"seed{s}")
def test_random_configs_format_idempotently_and_keep_their_ast(seed: int) -> None:
    for offset in range(20):
        src = "root {\n" + _RandomConfig(seed + offset).body() + "\n}\n"
        once = format_source(src)
        assert format_source(once) == once, src
        assert dump(parse(once)) == dump(parse(src)), src


@pytest.mark.parametrize("seed", range(0, 200, 20), ids=lambda s: f"seed{s}")
def test_mutated_configs_never_crash_and_format_to_valid_configs(seed: int) -> None:
    """Random edits of valid configs: diagnostics are positioned, nothing else raises,
    and whatever still parses formats to something that parses to the same tree."""
    r = random.Random(seed)
    junk = list("{}[](),.=\"`\n #/*!-+'\\|&0e")
    for offset in range(20):
        text = list("root {\n" + _RandomConfig(seed + offset).body() + "\n}\n")
        for _ in range(r.randint(1, 3)):
            at = r.randrange(len(text))
            if r.random() < 0.5:
                del text[at]
            else:
                text.insert(at, r.choice(junk))
        src = "".join(text)
        file, diags = parse_file(src, "m.alloy")
        assert all(d.line >= 1 and d.column >= 1 for d in diags), diags
        if not diags:
            once = format_source(src)
            assert dump(parse(once)) == dump(file), src


# ---------------------------------------------------------------- alloy fmt parity


def test_fmt_only_parses_no_component_checks() -> None:
    # alloy fmt formats what `alloy run` would refuse: two unlabelled blocks of one
    # name, a dotted (component) block without a label, a duplicate component.
    src = (
        'logging {}\nlogging {}\nloki.write {\n}\nloki.echo "a" {}\nloki.echo "a" {}\n'
    )
    assert format_source(src) == (
        "logging { }\n\nlogging { }\n\nloki.write { }\n\n"
        'loki.echo "a" { }\n\nloki.echo "a" { }\n'
    )
    with pytest.raises(ConfigError):
        parse(src)  # the same file is still refused as a config


def test_fmt_removes_carriage_returns_from_comments() -> None:
    # Alloy's scanner drops every \r from a comment's text (a \r between '*' and
    # '/' of a block comment stays, or the comment would end there).
    src = "// a\r b\r\nx = 1 /* c\r\n d *\r/ e */\r\n"
    assert format_source(src) == "// a b\nx = 1 /* c\n d *\r/ e */\n"


def test_fmt_keeps_carriage_returns_in_raw_strings() -> None:
    # The printer writes a literal as written; only its value loses the \r.
    src = "x = `a\r\nb`\r\n"
    assert format_source(src) == "x = `a\r\nb`\n"
    (stmt,) = parse(src).body
    assert dump(stmt)["value"] == {"string": "a\nb"}


def test_fmt_cli_reads_bytes_stdin_and_tests(
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io
    import sys

    from minilog.cli import main

    path = tmp_path / "c.alloy"  # type: ignore[operator]
    path.write_bytes(b'// a\rb\r\nlogging {\r\n  level = "info"\r\n}\r\nlogging {}\r\n')
    assert main(["fmt", "-t", str(path)]) == 1
    assert "is not formatted correctly" in capsys.readouterr().err
    assert main(["fmt", str(path)]) == 0
    formatted = capsys.readouterr().out
    assert formatted == '// ab\nlogging {\n\tlevel = "info"\n}\n\nlogging { }\n'
    assert main(["fmt", "-w", str(path)]) == 0
    assert path.read_bytes() == formatted.encode()
    assert main(["fmt", "--test", str(path)]) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x=1\n")))
    assert main(["format", "-"]) == 0
    assert capsys.readouterr().out == "x = 1\n"
    assert main(["fmt", "-w", "-t", str(path)]) == 1
    assert main(["fmt", str(tmp_path)]) == 1
    assert "cannot format a directory" in capsys.readouterr().err


FMT_CASES = sorted((Path(__file__).parent / "data" / "fmt").glob("*.in.alloy"))


@pytest.mark.parametrize("path", FMT_CASES, ids=lambda p: p.name.split(".")[0])
def test_fmt_corpus(path: Path) -> None:
    """Each ``X.in.alloy`` formats to ``X.out.alloy``, which is its own format."""
    src = path.read_bytes().decode()
    want = path.with_name(path.name.replace(".in.", ".out.")).read_bytes().decode()
    assert format_source(src) == want
    assert format_source(want) == want
    assert dump(parse_file(want, components=False)[0]) == dump(
        parse_file(src, components=False)[0]
    )
