"""Corpus: each valid file parses to its expected AST dump; each invalid file raises
the diagnostics its ``// ERROR <line>:<col> <regex>`` header lines announce."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from minilog.config import ConfigError, format_source, load, parse
from minilog.config.ast import dump

DATA = Path(__file__).parent / "data"
VALID = sorted((DATA / "valid").glob("*.alloy"))
INVALID = sorted((DATA / "invalid").glob("*.alloy"))
ERROR_LINE = re.compile(r"^// ERROR (\d+):(\d+) (.+)$")


def test_corpus_has_enough_files() -> None:
    assert len(VALID) >= 10
    assert len(INVALID) >= 15
    assert (DATA / "valid" / "seed-config.alloy").exists()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_file_matches_expected_ast(path: Path) -> None:
    expected = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert dump(parse(path.read_text(encoding="utf-8"), str(path))) == expected


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_file_formats_idempotently_to_the_same_ast(path: Path) -> None:
    src = path.read_text(encoding="utf-8")
    once = format_source(src, str(path))
    assert format_source(once, str(path)) == once
    assert dump(parse(once)) == dump(parse(src))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_reports_announced_diagnostics(path: Path) -> None:
    src = path.read_text(encoding="utf-8")
    expected = []
    for line in src.splitlines():
        m = ERROR_LINE.match(line)
        if m is None:
            break
        expected.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    assert expected, f"{path.name} has no // ERROR header"
    with pytest.raises(ConfigError) as info:
        load(path)
    got = info.value.diagnostics
    assert len(got) == len(expected), [str(d) for d in got]
    for diag, (line, col, pattern) in zip(got, expected, strict=True):
        assert diag.path == str(path)
        assert (diag.line, diag.column) == (line, col), str(diag)
        assert re.search(pattern, diag.message), str(diag)
        assert str(diag).startswith(f"{path}:{line}:{col}: ")
