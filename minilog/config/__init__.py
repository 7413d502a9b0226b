"""The Alloy configuration language: parse, load, format, evaluate, decode by schema.

Pure: no component knowledge lives here (the runtime supplies schemas and scopes). Every
problem becomes a positioned ``Diagnostic``; all of a file's problems are raised
together in one ``minilog.errors.ConfigError``.
"""

from __future__ import annotations

from pathlib import Path

from minilog.config import ast
from minilog.config._eval import Reference, Scope, evaluate, references, toposort
from minilog.config._parser import check_components, parse_file
from minilog.config.ast import Attribute, Block, File, Pos
from minilog.config.fmt import format_source
from minilog.config.schema import (
    MISSING,
    Attr,
    BlockSpec,
    Schema,
    decode_block,
    parse_bytes,
    parse_duration,
)
from minilog.config.stdlib import STDLIB_NAMES, Secret
from minilog.errors import ConfigError, Diagnostic

__all__ = [
    "MISSING",
    "STDLIB_NAMES",
    "Attr",
    "Attribute",
    "Block",
    "BlockSpec",
    "ConfigError",
    "File",
    "Pos",
    "Reference",
    "Schema",
    "Scope",
    "Secret",
    "ast",
    "decode_block",
    "evaluate",
    "format_source",
    "load",
    "parse",
    "parse_bytes",
    "parse_duration",
    "references",
    "toposort",
]


def parse(text: str, path: str = "<config>") -> File:
    """Parse one file's text; ``ConfigError`` lists every problem if it is invalid."""
    file, diags = parse_file(text, path)
    if diags:
        raise ConfigError(diags)
    return file


def load(path: str | Path) -> File:
    """Parse a file, or a directory whose ``*.alloy`` files (sorted) form one config.

    Read errors, invalid UTF-8 and components declared in two files are diagnostics
    like any other.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.glob("*.alloy") if p.is_file())
        if not files:
            raise ConfigError(
                Diagnostic(str(root), 0, 0, "directory contains no *.alloy files")
            )
    else:
        files = [root]
    diags: list[Diagnostic] = []
    body: list[ast.Stmt] = []
    for file_path in files:
        name = str(file_path)
        try:
            data = file_path.read_bytes()
        except OSError as exc:
            diags.append(
                Diagnostic(name, 0, 0, f"cannot read config: {exc.strerror or exc}")
            )
            continue
        # Undecodable bytes become lone surrogates, which the scanner reports in place
        # ("illegal UTF-8 encoding") while it goes on checking the rest of the file.
        text = data.decode("utf-8", errors="surrogateescape")
        parsed, file_diags = parse_file(text, name)
        diags += file_diags
        body.extend(parsed.body)
    if len(files) > 1:
        # Each file was checked alone; a component may be declared in two of them.
        seen = set(diags)
        diags += [d for d in check_components(body) if d not in seen]
    if diags:
        raise ConfigError(diags)
    return File(str(root), tuple(body))
