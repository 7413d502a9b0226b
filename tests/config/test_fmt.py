"""``format_source``: Alloy fmt layout, comments kept, idempotence, bad input."""

from __future__ import annotations

import pytest

from minilog.config import ConfigError, format_source, parse
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
    assert format_source("") == ""
    assert format_source("// only\n") == "// only\n"


def test_invalid_input_is_refused_with_diagnostics() -> None:
    with pytest.raises(ConfigError) as info:
        format_source("a = [1\n2]\n", "bad.alloy")
    assert str(info.value.diagnostics[0]).startswith("bad.alloy:1:")
