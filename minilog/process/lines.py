"""``loki.process`` stages that rewrite the line or its time: ``stage.timestamp``,
``stage.output``, ``stage.decolorize``, ``stage.replace``, ``stage.template``,
``stage.pack``, ``stage.docker``, ``stage.luhn``, ``stage.truncate`` (pure).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import orjson
from prometheus_client import Counter

from minilog.model import LogEntry
from minilog.process.core import (
    MISSING,
    Segment,
    extracted_value,
    go_find_all,
    go_string,
    json_string,
    labels_key,
    new_entry,
)
from minilog.process.gotemplate import ExecError, GoTemplate
from minilog.process.gotime import TimestampParser
from minilog.process.stage import (
    Stage,
    emit_grouped,
    source_text,
)

__all__ = [
    "DecolorizeStage",
    "DockerStage",
    "LuhnStage",
    "OutputStage",
    "PackStage",
    "ReplaceStage",
    "TemplateStage",
    "TimestampStage",
    "TruncateRule",
    "TruncateStage",
    "truncate_bytes",
]


class TimestampStage(Stage):
    """``stage.timestamp``: the entry time from an extracted value.

    Per stream (label set, an LRU of 10,000 as in Alloy) it remembers the last parsed
    time and the last time it gave. ``action_on_failure``: ``fudge`` gives an entry
    whose value is missing or does not parse the last given time plus 1 ns; ``skip``
    keeps the entry's time. ``action_on_duplicate_timestamp`` (Alloy v1.17): ``fudge``
    gives an entry whose parsed time equals the stream's last parsed one the last given
    time plus 1 ns, so Loki keeps them apart and in order; ``keep`` leaves it.
    """

    name = "stage.timestamp"
    _MAX_STREAMS: ClassVar[int] = 10_000

    def __init__(
        self,
        source: str,
        parsers: Sequence[TimestampParser],
        fudge: bool,
        fudge_duplicates: bool = True,
    ) -> None:
        self._source = source
        self._parsers = tuple(parsers)
        self._fudge = fudge
        self._fudge_duplicates = fudge_duplicates
        self._remember = fudge or fudge_duplicates
        # labels -> (last parsed, last given) in ns.
        self._last: dict[tuple[tuple[str, str], ...], tuple[int, int]] = {}

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
        remember = self._remember
        key = labels_key(seg.labels) if remember else ()
        state = self._last.get(key) if remember else None
        # The stream's last parsed time and last given time (-1: none known yet).
        last_parsed, last_given = state if state is not None else (-1, -1)
        fudge, fudge_duplicates = self._fudge, self._fudge_duplicates
        entries = seg.entries
        new_entries: list[LogEntry] | None = None
        memo_text: str | None = None
        memo_ts: int | None = None
        for i, entry in enumerate(entries):
            value = seed_value if ex is None else ex[i].get(source, seed_value)
            text = None if value is MISSING else go_string(value)
            parsed: int | None = None
            if text is not None:
                if text == memo_text:
                    parsed = memo_ts
                else:
                    parsed = memo_ts = self._parse(text, now_ns)
                    memo_text = text
            if parsed is None:
                if not fudge or last_given < 0:
                    continue  # skip, or fudge with no known time: keep the entry's
                ts = last_given = last_given + 1
            else:
                ts = parsed
                if fudge_duplicates and parsed == last_parsed and last_given >= 0:
                    ts = last_given + 1
                last_parsed, last_given = parsed, ts
            if ts != entry.timestamp_ns:
                if new_entries is None:
                    new_entries = list(entries)
                new_entries[i] = new_entry((ts, entry.line, entry.structured_metadata))
        if new_entries is not None:
            seg.entries = new_entries
        if remember and last_given >= 0 and state != (last_parsed, last_given):
            cache = self._last
            cache.pop(key, None)
            cache[key] = (last_parsed, last_given)
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
    # Alloy's pattern (from the ansi-regex package), RE2's ASCII \d spelled out.
    _ANSI: ClassVar[re.Pattern[str]] = re.compile(
        "[\x1b\x9b][\\[\\]()#;?]*(?:(?:(?:[a-zA-Z0-9]*(?:;[a-zA-Z0-9]*)*)?\x07)"
        "|(?:(?:[0-9]{1,4}(?:;[0-9]{0,4})*)?[0-9A-PRZcf-ntqry=><~]))"
    )

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        sub = self._ANSI.sub
        seg.entries = [
            new_entry((e.timestamp_ns, sub("", e.line), e.structured_metadata))
            if "\x1b" in e.line or "\x9b" in e.line
            else e
            for e in seg.entries
        ]
        out.append(seg)


def _template_data(
    ov: Mapping[str, Any], seed: Mapping[str, str], fields: frozenset[str] | None
) -> dict[str, Any]:
    """The extracted values as strings, as Alloy gives them to a template: all of
    them, or only ``fields`` when the template reads no others."""
    data: dict[str, Any] = {}
    if fields is None:
        for key, value in {**seed, **ov}.items():
            text = None if value is MISSING else go_string(value)
            if text is not None:
                data[key] = text
        return data
    for key in fields:
        text = go_string(extracted_value(ov, seed, key))
        if text is not None:
            data[key] = text
    return data


class ReplaceStage(Stage):
    """``stage.replace``: every capture group of every match replaced by a template.

    The result replaces the line (or the ``source`` value); named groups are extracted
    with their replaced value. A pattern without groups changes nothing, as in Alloy.
    The template sees the extracted values and ``.Value`` (the group's text); if it
    fails for any group, the entry is left as it was.
    """

    name = "stage.replace"

    def __init__(
        self,
        regex: re.Pattern[str],
        groups: dict[str, int],
        source: str | None,
        template: GoTemplate,
    ) -> None:
        self._regex = regex
        self._groups = tuple(groups.items())
        self._source = source
        self._template = template
        fields = template.fields
        # Only a template naming other extracted fields needs them as strings.
        self._fields = None if fields is None else fields - {"Value"}
        self._needs_data = fields is None or bool(fields - {"Value"})

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
            matches = go_find_all(self._regex, text)
            if not matches:
                continue
            data = _template_data(ov, seed, self._fields) if self._needs_data else {}
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
        self, text: str, matches: list[re.Match[str]], data: dict[str, Any]
    ) -> tuple[str, dict[str, str]] | None:
        parts: list[str] = []
        captured: dict[str, str] = {}
        previous_end = 0
        execute = self._template.execute
        for m in matches:
            for index in range(1, (m.re.groups or 0) + 1):
                start, end = m.span(index)
                if start < 0:
                    continue
                value = text[start:end]
                data["Value"] = value
                try:
                    replaced = execute(data)
                except ExecError:
                    return None
                # Alloy's condition: a group nested in one already replaced is skipped.
                if previous_end == 0 or previous_end <= start:
                    parts.append(text[previous_end:start])
                    parts.append(replaced)
                    previous_end = end
                captured[value] = replaced
        parts.append(text[previous_end:])
        return "".join(parts), captured


class TemplateStage(Stage):
    """``stage.template``: set an extracted value from a Go template.

    The data are the extracted values as strings, ``Value`` (the ``source`` value) and
    ``Entry`` (the line); an empty result deletes ``source``, and a template that fails
    leaves it as it was, as in Alloy.
    """

    name = "stage.template"

    def __init__(self, source: str, template: GoTemplate) -> None:
        self._source = source
        self._template = template
        fields = template.fields
        # Only the fields the template names are converted, not the whole map.
        self._fields = None if fields is None else fields - {"Value", "Entry"}

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        source = self._source
        fields = self._fields
        execute = self._template.execute
        seed = seg.seed
        ovs = seg.overlays()
        for i, entry in enumerate(seg.entries):
            ov = ovs[i]
            data = _template_data(ov, seed, fields)
            value = go_string(extracted_value(ov, seed, source))
            if value is not None:
                data["Value"] = value
            data["Entry"] = entry.line
            try:
                result = execute(data)
            except ExecError:
                continue  # the template failed: Alloy leaves the value as it was
            # An empty result deletes the key; MISSING also hides a seeded label.
            ov[source] = result if result else MISSING
        out.append(seg)


class PackStage(Stage):
    """``stage.pack``: the line becomes a JSON object of chosen values plus ``_entry``.

    Values come from the extracted map (so from labels too); the labels among the values
    packed are removed from the label set. With ``ingest_timestamp`` the time becomes
    ``now_ns``.
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
        labels = seg.labels
        label_names = tuple(name for name in names if name in labels)
        entries: list[LogEntry] = []
        removed: list[tuple[str | None, ...]] = []
        for i, entry in enumerate(seg.entries):
            ov = ex[i] if ex is not None else {}
            fields: list[str] = []
            packed: set[str] = set()
            for name in names:
                text = go_string(extracted_value(ov, seed, name))
                if text is not None:
                    fields.append(keys[name] + ":" + json_string(text))
                    packed.add(name)
            fields.append('"_entry":' + json_string(entry.line))
            ts = now_ns if self._ingest_timestamp else entry.timestamp_ns
            line = "{" + ",".join(fields) + "}"
            entries.append(new_entry((ts, line, entry.structured_metadata)))
            removed.append(tuple("" if n in packed else None for n in label_names))
        seg.entries = entries
        if label_names:
            emit_grouped(seg, removed, label_names, out)
        else:
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


_DOCKER_KEYS: Final = ("log", "stream", "time")


def _docker_fields(record: Any) -> tuple[str, str, str] | None:
    """(log, stream, time) of a decoded record, as Go's ``encoding/json`` fills the
    struct: keys match case-insensitively, ``null`` leaves a field empty, a wrong type
    fails; None when it fails or ``log`` is empty (Alloy leaves such lines alone)."""
    if type(record) is not dict:
        return None
    values = {"log": "", "stream": "", "time": ""}
    for key, value in record.items():
        name = key if key in values else key.lower()
        if name not in values or value is None:
            continue
        if type(value) is not str:
            return None  # a wrongly typed field fails Go's unmarshal
        values[name] = value
    if not values["log"]:
        return None
    return values["log"], values["stream"], values["time"]


@dataclass(frozen=True, slots=True)
class TruncateRule:
    """One ``rule`` of ``stage.truncate``: ``limit`` bytes (the suffix included)."""

    limit: int
    suffix: str
    sources: tuple[str, ...]
    source_type: str  # line, label, structured_metadata or extracted


def truncate_bytes(text: str, limit: int, suffix: str = "") -> str | None:
    """``text`` cut to ``limit`` UTF-8 bytes less the suffix, plus the suffix; None
    when it fits. A character the cut splits is dropped (Go keeps its first bytes)."""
    if len(text) <= limit - len(suffix) and len(text) * 4 <= limit - len(suffix):
        return None
    data = text.encode()
    keep = limit - len(suffix.encode())
    if len(data) <= keep:
        return None
    return data[:keep].decode(errors="ignore") + suffix


class TruncateStage(Stage):
    """``stage.truncate``: lines, label values, metadata values or extracted strings
    longer than a rule's limit are cut (suffix included). Each truncation counts in
    ``loki_process_truncated_fields_total{field}``, and the entry's extracted
    ``truncated`` lists the kinds of fields cut (``label,line``), merged with an earlier
    truncate stage's.
    """

    name = "stage.truncate"

    def __init__(self, rules: Sequence[TruncateRule], counter: Counter) -> None:
        self._rules = tuple(rules)
        self._counters = {
            field: counter.labels(field)
            for field in ("line", "label", "structured_metadata", "extracted")
        }

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        labels = seg.labels
        # Labels are the same for every entry: cut them once, per rule.
        label_cuts: list[int] = []
        for rule in self._rules:
            if rule.source_type != "label":
                label_cuts.append(0)
                continue
            names = rule.sources or tuple(labels)
            cut = 0
            for name in names:
                value = labels.get(name)
                if value is None:
                    continue
                short = truncate_bytes(value, rule.limit, rule.suffix)
                if short is not None:
                    labels = {**labels, name: short}
                    cut += 1
            label_cuts.append(cut)
        seg.labels = labels
        ovs = seg.overlays()
        seed = seg.seed
        entries = list(seg.entries)
        counters = self._counters
        for i, entry in enumerate(entries):
            ov = ovs[i]
            done: set[str] = set()
            line, metadata = entry.line, entry.structured_metadata
            for r, rule in enumerate(self._rules):
                kind = rule.source_type
                if kind == "line":
                    short = truncate_bytes(line, rule.limit, rule.suffix)
                    if short is not None:
                        line = short
                        counters["line"].inc()
                        done.add("line")
                elif kind == "label":
                    if label_cuts[r]:
                        counters["label"].inc(label_cuts[r])
                        done.add("label")
                elif kind == "structured_metadata":
                    pairs = list(metadata)
                    for j, (name, value) in enumerate(pairs):
                        if rule.sources and name not in rule.sources:
                            continue
                        short = truncate_bytes(value, rule.limit, rule.suffix)
                        if short is not None:
                            pairs[j] = (name, short)
                            counters["structured_metadata"].inc()
                            done.add("structured_metadata")
                    metadata = tuple(pairs)
                else:
                    self._extracted(rule, ov, seed, done)
                if done:
                    previous = extracted_value(ov, seed, "truncated")
                    if type(previous) is str:
                        done.update(previous.split(","))
                    ov["truncated"] = ",".join(sorted(done))
            if line is not entry.line or metadata is not entry.structured_metadata:
                entries[i] = new_entry((entry.timestamp_ns, line, metadata))
        seg.entries = entries
        out.append(seg)

    def _extracted(
        self,
        rule: TruncateRule,
        ov: dict[str, Any],
        seed: Mapping[str, str],
        done: set[str],
    ) -> None:
        names = rule.sources or tuple({**seed, **ov})
        for name in names:
            value = extracted_value(ov, seed, name)
            if type(value) is not str:
                continue
            short = truncate_bytes(value, rule.limit, rule.suffix)
            if short is not None:
                ov[name] = short
                self._counters["extracted"].inc()
                done.add("extracted")


class LuhnStage(Stage):
    """``stage.luhn``: numbers passing the Luhn check (credit cards, IMEIs) replaced.

    A candidate is a run of digits (Unicode decimal digits, as Go's ``unicode.IsDigit``)
    at least ``min_length`` bytes long that Go's ``strconv.Atoi`` reads (ASCII, fits an
    int64); with ``delimiters`` the run may contain those characters after its first
    digit, and a trailing delimiter is kept after the replacement. With ``source`` the
    extracted string is read and, as in Alloy, the result replaces the line.
    """

    name = "stage.luhn"

    def __init__(
        self, replacement: str, source: str | None, min_length: int, delimiters: str
    ) -> None:
        self._replacement = replacement
        self._source = source
        self._min_length = min_length
        self._delimiters = delimiters
        self._needle = b""
        if delimiters:
            cls = "".join("\\" + c if c in "\\]^-[" else c for c in delimiters)
            self._candidate = re.compile(rf"\d[\d{cls}]*")
        else:
            self._candidate = re.compile(r"\d+")
            # In ASCII text a digit is a byte: a line without min_length digits in a
            # row has nothing to replace (bytes.translate finds that fastest).
            self._needle = b"0" * max(min_length, 1)

    def _replace(self, m: re.Match[str]) -> str:
        run = m.group(0)
        delimiters = self._delimiters
        digits = "".join(c for c in run if c not in delimiters) if delimiters else run
        if (
            len(digits.encode()) >= self._min_length
            and digits.isascii()
            and int(digits) < (1 << 63)
            and _luhn_valid(digits)
        ):
            trailing = run[-1] if delimiters and run[-1] in delimiters else ""
            return self._replacement + trailing
        return run

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        source = self._source
        ovs = seg.extracted
        seed = seg.seed
        sub = self._candidate.sub
        new_entries: list[LogEntry] | None = None
        for i, entry in enumerate(seg.entries):
            if source is None:
                text = entry.line
            else:
                value = extracted_value(ovs[i] if ovs is not None else {}, seed, source)
                if type(value) is not str:
                    continue
                text = value
            if text.isascii():
                needle = self._needle
                if needle and needle not in text.encode().translate(_DIGITS_AS_ZERO):
                    result = text
                else:
                    result = sub(self._replace, text)
            else:
                result = sub(self._replace, text) if _has_digit(text) else text
            if result != entry.line:
                if new_entries is None:
                    new_entries = list(seg.entries)
                new_entries[i] = new_entry(
                    (entry.timestamp_ns, result, entry.structured_metadata)
                )
        if new_entries is not None:
            seg.entries = new_entries
        out.append(seg)


_DIGIT: Final = re.compile(r"\d")
#: bytes.translate table: ASCII digits to "0", every other byte to "-".
_DIGITS_AS_ZERO: Final = bytes(48 if 48 <= b <= 57 else 45 for b in range(256))


def _has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0
