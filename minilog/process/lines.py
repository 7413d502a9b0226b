"""``loki.process`` stages that rewrite the line or its time: ``stage.timestamp``,
``stage.output``, ``stage.decolorize``, ``stage.replace``, ``stage.template``,
``stage.pack``, ``stage.docker`` (pure).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson

from minilog.model import LogEntry
from minilog.process.core import (
    MISSING,
    Segment,
    extracted_value,
    go_string,
    json_string,
    labels_key,
    new_entry,
)
from minilog.process.gotime import TimestampParser
from minilog.process.parsers import (
    Template,
)
from minilog.process.stage import (
    Stage,
    emit_grouped,
    source_text,
)

__all__ = [
    "DecolorizeStage",
    "DockerStage",
    "OutputStage",
    "PackStage",
    "ReplaceStage",
    "TemplateStage",
    "TimestampStage",
]


class TimestampStage(Stage):
    """``stage.timestamp``: the entry time from an extracted value.

    On failure, ``fudge`` uses the stream's last parsed time plus 1 ns (per label set,
    an LRU of 10,000 streams as in Alloy); ``skip`` keeps the entry's time.
    """

    name = "stage.timestamp"
    _MAX_STREAMS: ClassVar[int] = 10_000

    def __init__(
        self, source: str, parsers: Sequence[TimestampParser], fudge: bool
    ) -> None:
        self._source = source
        self._parsers = tuple(parsers)
        self._fudge = fudge
        self._last: dict[tuple[tuple[str, str], ...], int] = {}

    def _parse(self, text: str, now_ns: int) -> int | None:
        for parser in self._parsers:
            ts = parser(text, now_ns)
            if ts is not None:
                return ts
        return None

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        source = self._source
        seed_value = seg.seed.get(source, MISSING)
        ex = seg.extracted
        key = labels_key(seg.labels) if self._fudge else ()
        last = self._last.get(key) if self._fudge else None
        start_last = last
        entries = seg.entries
        new_entries: list[LogEntry] | None = None
        memo_text: str | None = None
        memo_ts: int | None = None
        for i, entry in enumerate(entries):
            value = seed_value if ex is None else ex[i].get(source, seed_value)
            text = None if value is MISSING else go_string(value)
            ts: int | None = None
            if text is not None:
                if text == memo_text:
                    ts = memo_ts
                else:
                    ts = memo_ts = self._parse(text, now_ns)
                    memo_text = text
            if ts is None:
                if last is None:
                    continue  # skip, or fudge with no known time: keep the entry's time
                ts = last + 1
            if self._fudge:
                last = ts
            if ts != entry.timestamp_ns:
                if new_entries is None:
                    new_entries = list(entries)
                new_entries[i] = new_entry((ts, entry.line, entry.structured_metadata))
        if new_entries is not None:
            seg.entries = new_entries
        if self._fudge and last is not None and last != start_last:
            cache = self._last
            cache.pop(key, None)
            cache[key] = last
            if len(cache) > self._MAX_STREAMS:
                del cache[next(iter(cache))]
        out.append(seg)


class OutputStage(Stage):
    """``stage.output``: the line becomes an extracted value."""

    name = "stage.output"

    def __init__(self, source: str) -> None:
        self._source = source

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        source = self._source
        seed_value = seg.seed.get(source, MISSING)
        ex = seg.extracted
        if ex is None:
            text = None if seed_value is MISSING else go_string(seed_value)
            if text is not None:
                seg.entries = [
                    new_entry((e.timestamp_ns, text, e.structured_metadata))
                    for e in seg.entries
                ]
            out.append(seg)
            return
        new_entries: list[LogEntry] = []
        for entry, ov in zip(seg.entries, ex, strict=True):
            text = source_text(ov, source, seed_value)
            if text is None or text == entry.line:
                new_entries.append(entry)
            else:
                new_entries.append(
                    new_entry((entry.timestamp_ns, text, entry.structured_metadata))
                )
        seg.entries = new_entries
        out.append(seg)


class DecolorizeStage(Stage):
    """``stage.decolorize``: strip ANSI colour escape sequences from the line."""

    name = "stage.decolorize"
    _ANSI: ClassVar[re.Pattern[str]] = re.compile(r"\x1b\[[0-9;]*m")

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        sub = self._ANSI.sub
        seg.entries = [
            new_entry((e.timestamp_ns, sub("", e.line), e.structured_metadata))
            if "\x1b" in e.line
            else e
            for e in seg.entries
        ]
        out.append(seg)


class ReplaceStage(Stage):
    """``stage.replace``: every capture group of every match replaced by a template.

    The result replaces the line (or the ``source`` value); named groups are extracted
    with their replaced value. A pattern without groups changes nothing, as in Alloy.
    """

    name = "stage.replace"

    def __init__(
        self,
        regex: re.Pattern[str],
        groups: dict[str, int],
        source: str | None,
        template: Template,
        fields: frozenset[str],
    ) -> None:
        self._regex = regex
        self._groups = tuple(groups.items())
        self._source = source
        self._template = template
        # Only a template naming other extracted fields needs them as strings.
        self._needs_data = bool(fields - {"Value"})

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        source = self._source
        ovs = seg.overlays()
        seed = seg.seed
        seed_value = MISSING if source is None else seed.get(source, MISSING)
        new_entries: list[LogEntry] | None = None
        for i, entry in enumerate(seg.entries):
            ov = ovs[i]
            if source is None:
                text: str | None = entry.line
            else:
                text = source_text(ov, source, seed_value)
            if text is None:
                continue
            matches = list(self._regex.finditer(text))
            if not matches:
                continue
            data: dict[str, str] = self._data(ov, seed) if self._needs_data else {}
            replaced = self._replace(text, matches, data)
            if replaced is None:
                continue  # the template failed, as a Go template can: no change
            result, captured = replaced
            if source is not None:
                ov[source] = result
            elif result != text:
                if new_entries is None:
                    new_entries = list(seg.entries)
                new_entries[i] = new_entry(
                    (entry.timestamp_ns, result, entry.structured_metadata)
                )
            first = matches[0]
            for name, index in self._groups:
                value = captured.get(first.group(index) or "")
                if value is not None:
                    ov[name] = value
        if new_entries is not None:
            seg.entries = new_entries
        out.append(seg)

    def _replace(
        self, text: str, matches: list[re.Match[str]], data: dict[str, str]
    ) -> tuple[str, dict[str, str]] | None:
        parts: list[str] = []
        captured: dict[str, str] = {}
        previous_end = 0
        render = self._template
        for m in matches:
            for index in range(1, (m.re.groups or 0) + 1):
                start, end = m.span(index)
                if start < 0:
                    continue
                value = text[start:end]
                data["Value"] = value
                replaced = render(data)
                if replaced is None:
                    return None
                # Alloy's condition: a group nested in one already replaced is skipped.
                if previous_end == 0 or previous_end <= start:
                    parts.append(text[previous_end:start])
                    parts.append(replaced)
                    previous_end = end
                captured[value] = replaced
        parts.append(text[previous_end:])
        return "".join(parts), captured

    @staticmethod
    def _data(ov: dict[str, Any], seed: Mapping[str, str]) -> dict[str, str]:
        data: dict[str, str] = {}
        for key, value in {**seed, **ov}.items():
            text = go_string(value)
            if text is not None:
                data[key] = text
        return data


class TemplateStage(Stage):
    """``stage.template``: set an extracted value from a template (minilog's subset).

    The data are the extracted values as strings, ``Value`` (the ``source`` value) and
    ``Entry`` (the line); an empty result deletes ``source``, as in Alloy.
    """

    name = "stage.template"

    def __init__(self, source: str, template: Template, fields: frozenset[str]) -> None:
        self._source = source
        self._template = template
        # Only the fields the template names are converted, not the whole map.
        self._fields = tuple(fields - {"Value", "Entry"})

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        source = self._source
        fields = self._fields
        render = self._template
        seed = seg.seed
        ovs = seg.overlays()
        for i, entry in enumerate(seg.entries):
            ov = ovs[i]
            data: dict[str, str] = {"Entry": entry.line}
            for field in fields:
                text = go_string(extracted_value(ov, seed, field))
                if text is not None:
                    data[field] = text
            value = go_string(extracted_value(ov, seed, source))
            if value is not None:
                data["Value"] = value
            result = render(data)
            if result is None:
                continue  # the template failed: Alloy leaves the value as it was
            # An empty result deletes the key; MISSING also hides a seeded label.
            ov[source] = result if result else MISSING
        out.append(seg)


class PackStage(Stage):
    """``stage.pack``: the line becomes a JSON object of chosen values plus ``_entry``.

    Values come from the extracted map (so from labels too); those that are labels are
    removed from the label set. With ``ingest_timestamp`` the time becomes ``now_ns``.
    """

    name = "stage.pack"

    def __init__(self, names: Sequence[str], ingest_timestamp: bool) -> None:
        self._names = tuple(sorted(set(names)))
        self._keys = {name: json_string(name) for name in self._names}
        self._ingest_timestamp = ingest_timestamp

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        seed = seg.seed
        ex = seg.extracted
        names = self._names
        keys = self._keys
        entries: list[LogEntry] = []
        for i, entry in enumerate(seg.entries):
            ov = ex[i] if ex is not None else {}
            fields: list[str] = []
            for name in names:
                text = go_string(extracted_value(ov, seed, name))
                if text is not None:
                    fields.append(keys[name] + ":" + json_string(text))
            fields.append('"_entry":' + json_string(entry.line))
            ts = now_ns if self._ingest_timestamp else entry.timestamp_ns
            line = "{" + ",".join(fields) + "}"
            entries.append(new_entry((ts, line, entry.structured_metadata)))
        seg.entries = entries
        labels = seg.labels
        if any(name in labels for name in names):
            seg.labels = {k: v for k, v in labels.items() if k not in self._keys}
        out.append(seg)


class DockerStage(Stage):
    """``stage.docker``: a Docker json-file record: ``log`` becomes the line.

    ``stream`` becomes a label, ``time`` (RFC 3339) the timestamp; ``output``,
    ``stream`` and ``timestamp`` are extracted. Lines that are not JSON objects pass
    unchanged.
    """

    name = "stage.docker"

    def __init__(self, parse_time: TimestampParser) -> None:
        self._parse_time = parse_time

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        ovs = seg.overlays()
        loads = orjson.loads
        entries = list(seg.entries)
        streams: list[tuple[str | None, ...]] = []
        for i, entry in enumerate(entries):
            try:
                record = loads(entry.line)
            except orjson.JSONDecodeError:
                record = None
            fields = _docker_fields(record)
            if fields is None:
                streams.append((None,))
                continue
            log, stream, time_text = fields
            ov = ovs[i]
            ov["output"] = log
            ov["stream"] = stream
            ov["timestamp"] = time_text
            ts = self._parse_time(time_text, now_ns)
            if ts is None:
                ts = entry.timestamp_ns
            entries[i] = new_entry((ts, log, entry.structured_metadata))
            streams.append((stream,))
        seg.entries = entries
        emit_grouped(seg, streams, ("stream",), out)


def _docker_fields(record: Any) -> tuple[str, str, str] | None:
    """(log, stream, time) of a decoded record, as Go unmarshals it into a struct."""
    if type(record) is not dict:
        return None
    values: list[str] = []
    for key in ("log", "stream", "time"):
        value = record.get(key, "")
        if type(value) is not str:
            return None  # a wrongly typed field fails Go's unmarshal
        values.append(value)
    return values[0], values[1], values[2]
