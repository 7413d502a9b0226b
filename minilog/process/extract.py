"""``loki.process`` stages that extract values from the line: ``stage.json``,
``stage.logfmt``, ``stage.regex``, ``stage.pattern`` (Alloy's ``loki/process/stages``;
pure).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from minilog.process.core import (
    MISSING,
    Segment,
    json_string,
)
from minilog.process.parsers import (
    JmesPath,
    Pattern,
    jmes_search,
    logfmt_scan,
    logfmt_value,
)
from minilog.process.stage import (
    SCALARS,
    Stage,
    emit_grouped,
    emit_without,
    source_text,
)

__all__ = ["JsonStage", "LogfmtStage", "PatternStage", "RegexStage"]


class JsonStage(Stage):
    """``stage.json``: JMESPath expressions over the line (or a value) as JSON, and
    (``regex``) the top-level keys whose names match."""

    name = "stage.json"

    def __init__(
        self,
        expressions: dict[str, JmesPath],
        source: str | None,
        drop_malformed: bool,
        regex: re.Pattern[str] | None = None,
    ) -> None:
        # A one-key path is looked up directly: the common case, no JMESPath walk.
        self._exprs = tuple(
            (
                name,
                path[0]
                if type(path) is tuple and len(path) == 1 and type(path[0]) is str
                else None,
                path,
            )
            for name, path in expressions.items()
        )
        self._source = source
        self._drop_malformed = drop_malformed
        self._regex = regex

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        entries = seg.entries
        ovs = seg.overlays()
        source = self._source
        seed_value = MISSING if source is None else seg.seed.get(source, MISSING)
        exprs = self._exprs
        regex = self._regex
        loads = orjson.loads
        dropped: list[int] = []
        for i, entry in enumerate(entries):
            ov = ovs[i]
            if source is None:
                text: str | None = entry.line
            else:
                text = source_text(ov, source, seed_value)
                if text is None:
                    continue  # Alloy: a missing or non-string source is not malformed
            try:
                data = loads(text)  # type: ignore[arg-type]
            except orjson.JSONDecodeError:
                data = MISSING
            if type(data) is not dict and data is not None:
                # Go unmarshals into a map: only an object (or null) is well-formed.
                if self._drop_malformed:
                    dropped.append(i)
                continue
            for name, key, path in exprs:
                if key is not None and data is not None:
                    result = data.get(key)
                else:
                    try:
                        result = jmes_search(path, data)
                    except ValueError:
                        continue  # Alloy skips an expression that fails to search
                ov[name] = result if isinstance(result, SCALARS) else _go_json(result)
            if regex is not None and data is not None:
                search = regex.search
                for key, value in data.items():
                    if search(key) is not None:
                        ov[key] = (
                            value if isinstance(value, SCALARS) else _go_json(value)
                        )
        emit_without(seg, dropped, out)


def _go_json(value: Any) -> str:
    """A decoded object or array as Alloy marshals it back: Go decoded every number
    into a float64, so an integral one prints without a fraction (``1.0`` -> ``1``)."""
    return json_string(_integral_floats(value))


def _integral_floats(value: Any) -> Any:
    if type(value) is float:
        return int(value) if value.is_integer() and abs(value) < 1e21 else value
    if type(value) is dict:
        return {k: _integral_floats(v) for k, v in value.items()}
    if type(value) is list:
        return [_integral_floats(v) for v in value]
    return value


class LogfmtStage(Stage):
    """``stage.logfmt``: mapped (or ``regex``-matching) keys of a logfmt line."""

    name = "stage.logfmt"

    def __init__(
        self, mapping: dict[str, str], source: str | None, regex: re.Pattern[str] | None
    ) -> None:
        inverse: dict[str, list[str]] = {}
        for extracted_name, logfmt_key in mapping.items():
            inverse.setdefault(logfmt_key or extracted_name, []).append(extracted_name)
        self._inverse = inverse
        self._source = source
        self._regex = regex

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        ovs = seg.overlays()
        source = self._source
        seed_value = MISSING if source is None else seg.seed.get(source, MISSING)
        inverse = self._inverse
        regex = self._regex
        for i, entry in enumerate(seg.entries):
            ov = ovs[i]
            if source is None:
                text: str | None = entry.line
            else:
                text = source_text(ov, source, seed_value)
                if text is None:
                    continue
            for key, raw, stop in logfmt_scan(text):  # type: ignore[arg-type]
                if stop:
                    break  # Alloy keeps what was decoded before a syntax error
                names = inverse.get(key)
                matched = regex is not None and regex.search(key) is not None
                if names is None and not matched:
                    continue
                value = logfmt_value(raw)
                if value is None:
                    break  # an invalid quoted value is a syntax error too
                if names is not None:
                    for name in names:
                        ov[name] = value
                if matched:
                    ov[key] = value
        out.append(seg)


class RegexStage(Stage):
    """``stage.regex``: named groups of an RE2 expression into the extracted map.

    With ``labels_from_groups`` the groups whose names are valid label names also set
    labels (a line that does not match keeps its labels).
    """

    name = "stage.regex"

    def __init__(
        self,
        regex: re.Pattern[str],
        groups: dict[str, int],
        source: str | None,
        label_groups: dict[str, int] | None = None,
    ) -> None:
        self._regex = regex
        self._groups = tuple(groups.items())
        self._source = source
        self._label_names = tuple(label_groups or ())
        self._label_indexes = tuple((label_groups or {}).values())

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        ovs = seg.overlays()
        source = self._source
        seed_value = MISSING if source is None else seg.seed.get(source, MISSING)
        search = self._regex.search
        groups = self._groups
        label_indexes = self._label_indexes
        unmatched: tuple[str | None, ...] = (None,) * len(label_indexes)
        keys: list[tuple[str | None, ...]] = []
        for i, entry in enumerate(seg.entries):
            ov = ovs[i]
            text = entry.line if source is None else source_text(ov, source, seed_value)
            m = None if text is None else search(text)
            if m is None:
                keys.append(unmatched)
                continue
            for name, index in groups:
                # Go reports a group that did not take part in the match as "".
                ov[name] = m.group(index) or ""
            if label_indexes:
                keys.append(tuple([m.group(j) or "" for j in label_indexes]))
        if label_indexes:
            emit_grouped(seg, keys, self._label_names, out)
        else:
            out.append(seg)


class PatternStage(Stage):
    """``stage.pattern``: the named captures of a Loki pattern into the extracted map.

    With ``labels_from_groups`` the captures also set labels. A line the pattern's
    leading literal does not start is left alone; one that ends early fills the
    captures it reached, as Loki's matcher does.
    """

    name = "stage.pattern"

    def __init__(
        self, pattern: Pattern, source: str | None, labels_from_groups: bool
    ) -> None:
        self._pattern = pattern
        self._source = source
        self._labels = labels_from_groups

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        ovs = seg.overlays()
        source = self._source
        seed_value = MISSING if source is None else seg.seed.get(source, MISSING)
        matches = self._pattern.matches
        names = self._pattern.names
        keys: list[tuple[str | None, ...]] = []
        unmatched: tuple[str | None, ...] = (None,) * len(names)
        for i, entry in enumerate(seg.entries):
            ov = ovs[i]
            text = entry.line if source is None else source_text(ov, source, seed_value)
            found = None if text is None else matches(text)
            if not found:
                keys.append(unmatched)
                continue
            for name, value in zip(names, found, strict=False):
                ov[name] = value
            keys.append(tuple(found) + (None,) * (len(names) - len(found)))
        if self._labels:
            emit_grouped(seg, keys, names, out)
        else:
            out.append(seg)
