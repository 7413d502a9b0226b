"""Doublestar patterns (``files.glob``) and the file walk (``files.match``), with
doublestar v4's answers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from minilog.files.glob import path_match, split_pattern
from minilog.files.match import filepath_glob, match_targets


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*", "", True),
        ("*", "/", False),
        ("/*", "/", True),
        ("*", ".hidden", True),
        ("a*/b", "abc/b", True),
        ("a*/b", "a/c/b", False),
        ("a/**", "a", True),
        ("a/**", "a/b/c", True),
        ("a/**/c", "a/c", True),
        ("a/**/c", "a/b/x/c", True),
        ("**/c", "c", True),
        ("**/c", "a/b/c", True),
        ("a/**.txt", "a/x.txt", True),
        ("a/**.txt", "a/b/x.txt", False),
        ("ab[^c]", "abc", False),
        ("ab[!e-g]", "abc", True),
        ("a?b", "a/b", False),
        ("a?b", "a☺b", True),
        ("[\\]a]", "]", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("{a/*}", "a/b", True),
        ("some{thing{new,},}", "some", True),
        ("some{thing{new,},}", "somethingnew", True),
        ("some{thing{new,},}", "somethingold", False),
        ("/var/log/{nginx,apache}/*.{log,txt}", "/var/log/apache/x.txt", True),
        ("/var/log/{nginx,apache}/*.{log,txt}", "/var/log/caddy/x.txt", False),
        ("a}b", "a}b", True),
    ],
)
def test_path_match_answers_as_doublestar(
    pattern: str, path: str, matches: bool
) -> None:
    assert path_match(pattern, path) is matches


@pytest.mark.parametrize("pattern", ["[", "a[", "[]a]", "\\", "ab{c,d}[", "{a,b"])
def test_bad_patterns_are_errors(pattern: str) -> None:
    with pytest.raises(ValueError, match="bad glob pattern"):
        path_match(pattern, "a")


def test_split_pattern() -> None:
    assert split_pattern("../../path/to/meta*/**") == ("../../path/to", "meta*/**")
    assert split_pattern("meta*/**") == (".", "meta*/**")
    assert split_pattern("/var/log/*.log") == ("/var/log", "*.log")
    assert split_pattern("/*.log") == ("/", "*.log")
    assert split_pattern("/a\\*b/*.log") == ("/a*b", "*.log")


def _tree(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")


def test_filepath_glob_walks_with_doublestar(tmp_path: Path) -> None:
    _tree(tmp_path, "a.log", "b.txt", "d/c.log", "d/e/f.log", ".h.log", "d/.x/g.log")
    found = filepath_glob(f"{tmp_path}/**/*.log")
    assert sorted(os.path.relpath(p, tmp_path) for p in found) == [
        ".h.log",
        "a.log",
        "d/.x/g.log",
        "d/c.log",
        "d/e/f.log",
    ]
    assert filepath_glob(f"{tmp_path}/*.log") == [
        f"{tmp_path}/.h.log",
        f"{tmp_path}/a.log",
    ]
    assert filepath_glob(f"{tmp_path}/d/../a.log") == [f"{tmp_path}/a.log"]
    assert filepath_glob(f"{tmp_path}/missing/*.log") == []


def test_symlinked_directories_are_followed_once(tmp_path: Path) -> None:
    _tree(tmp_path, "real/x.log")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")
    found = sorted(
        os.path.relpath(p, tmp_path) for p in filepath_glob(f"{tmp_path}/**/*.log")
    )
    assert "link/x.log" in found and "real/x.log" in found
    assert len(found) == len(set(found)) < 10


def test_match_targets_excludes_skips_directories_and_old_files(tmp_path: Path) -> None:
    _tree(tmp_path, "a.log", "old.log", "skip/b.log", "keep/c.log")
    (tmp_path / "dir.log").mkdir()
    old = time.time() - 3600
    os.utime(tmp_path / "old.log", (old, old))
    targets = match_targets(
        [
            {
                "__path__": f"{tmp_path}/**/*.log",
                "__path_exclude__": f"{tmp_path}/skip/*",
                "job": "j",
            }
        ],
        ignore_older_than_s=60,
    )
    assert sorted(t["__path__"] for t in targets) == [
        f"{tmp_path}/a.log",
        f"{tmp_path}/keep/c.log",
    ]
    assert all(t["job"] == "j" and t["__path_exclude__"] for t in targets)


def test_a_bad_pattern_matches_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert match_targets([{"__path__": f"{tmp_path}/[*.log"}]) == []
    assert "bad glob pattern" in caplog.text
