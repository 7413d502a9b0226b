"""``__path__`` globs to files: ``local.file_match``'s work, and ``loki.source.file``'s
``file_match`` block.

``filepath_glob`` walks the file system as ``doublestar.FilepathGlob`` does (symbolic
links followed, unreadable directories skipped); ``match_targets`` turns path targets
into one target per regular file, with ``__path_exclude__`` and ``ignore_older_than``
applied (Alloy's ``watch.getPaths``). The pattern language is ``glob``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

from minilog.files.glob import compile_glob, has_meta, path_match, split_pattern

__all__ = ["PATH_EXCLUDE_LABEL", "PATH_LABEL", "filepath_glob", "match_targets"]

_log = logging.getLogger(__name__)

#: The target labels Alloy's file components read.
PATH_LABEL: Final = "__path__"
PATH_EXCLUDE_LABEL: Final = "__path_exclude__"


def filepath_glob(pattern: str) -> list[str]:
    """Paths (files and directories) matching ``pattern``, as doublestar's
    ``FilepathGlob``: the pattern is cleaned first, the walk starts at the part
    before the first meta character.

    Raises:
        ValueError: a bad pattern.
    """
    if not pattern:
        return []
    pattern = os.path.normpath(pattern)
    compiled = compile_glob(pattern)
    if not has_meta(pattern):
        return [pattern] if os.path.exists(pattern) else []
    base, rest = split_pattern(pattern)
    max_depth = None if compiled.recursive else rest.count("/") + 1
    prefix = "" if base == "." else base.rstrip("/") + "/"
    return [
        path for path in _walk(base, prefix, max_depth, set()) if compiled.match(path)
    ]


def _walk(
    directory: str, prefix: str, depth: int | None, seen: set[tuple[int, int]]
) -> Iterator[str]:
    """Everything below ``directory`` (named ``prefix`` + relative path), following
    symbolic links to directories, each directory once."""
    try:
        st = os.stat(directory)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        path = prefix + entry.name
        yield path
        if depth is not None and depth <= 1:
            continue
        try:
            is_dir = entry.is_dir()  # follows symbolic links, as doublestar does
        except OSError:
            continue
        if is_dir:
            yield from _walk(
                entry.path, path + "/", None if depth is None else depth - 1, seen
            )
    seen.discard(key)


def match_targets(
    path_targets: Sequence[Mapping[str, str]],
    *,
    ignore_older_than_s: float = 0.0,
    now: float | None = None,
) -> list[dict[str, str]]:
    """One target per regular file matched: the path target's labels with
    ``__path__`` set to the file's absolute path (``__path_exclude__`` kept, as in
    Alloy). A bad pattern is logged and matches nothing."""
    if now is None:
        now = time.time()
    out: list[dict[str, str]] = []
    for target in path_targets:
        pattern = target.get(PATH_LABEL, "")
        exclude = target.get(PATH_EXCLUDE_LABEL, "")
        try:
            matches = filepath_glob(pattern)
        except ValueError as exc:
            _log.error("error getting paths: %s (path %s)", exc, pattern)
            continue
        for match in matches:
            if exclude:
                try:
                    if path_match(exclude, match):
                        continue
                except ValueError:
                    pass  # doublestar's PathMatch error is ignored: not excluded
            path = os.path.abspath(match)
            try:
                st = os.stat(path)
            except OSError as exc:
                _log.debug("error getting os stat of %s: %s", path, exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if ignore_older_than_s and st.st_mtime < now - ignore_older_than_s:
                continue
            out.append({**target, PATH_LABEL: path})
    return out
