"""The ``loki.process`` stages, each working on whole segments (one label set each).

Owns the behaviour of Alloy's ``loki/process/stages`` for the supported stages and their
chaining (``run_chain``, ``flush_chain``). Label-only stages run once per segment; only
stages that must read lines loop over them. Arguments are decoded in ``_build.py``.
Pure: the time comes in as ``now_ns``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import orjson
from prometheus_client import Counter

from minilog.model import Delivery, LogEntry, Metadata
from minilog.process._core import (
    MISSING,
    Segment,
    combine_deliveries,
    extracted_value,
    go_string,
    hand_on,
    json_string,
    labels_key,
    new_entry,
)
from minilog.process._gotime import TimestampParser
from minilog.process._parsers import (
    JmesPath,
    Selector,
    Template,
    jmes_search,
    logfmt_scan,
    logfmt_value,
)

__all__ = [
    "CopyLabelStage",
    "DecolorizeStage",
    "DockerStage",
    "DropStage",
    "JsonStage",
    "LabelDropStage",
    "LabelKeepStage",
    "LabelsStage",
    "LimitStage",
    "LogfmtStage",
    "MatchStage",
    "MultilineStage",
    "OutputStage",
    "PackStage",
    "RegexStage",
    "ReplaceStage",
    "SamplingStage",
    "Stage",
    "StaticLabelsStage",
    "StructuredMetadataStage",
    "TemplateStage",
    "TimestampStage",
    "earliest_deadline",
    "flush_chain",
    "run_chain",
]

_SCALARS: Final = (str, int, float, bool, type(None))


class Stage:
    """One stage. ``apply`` appends the resulting segments to ``out``.

    Contract: each segment passed in owns one reference to its delivery; every segment a
    stage appends owns one too (``hand_on`` retains for extra parts, releases for none).
    """

    name: ClassVar[str] = ""

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        raise NotImplementedError

    def flush(self, now_ns: int, force: bool) -> list[Segment]:
        """Entries held back (multiline blocks) that are due; ``force`` flushes all."""
        return []

    def next_deadline_ns(self) -> int | None:
        """When ``flush`` will next have something due, or None if nothing is held."""
        return None


def earliest_deadline(stages: Sequence[Stage]) -> int | None:
    """The earliest ``next_deadline_ns`` of ``stages``, or None."""
    found = [d for d in (s.next_deadline_ns() for s in stages) if d is not None]
    return min(found) if found else None


def run_chain(
    stages: Sequence[Stage], segs: list[Segment], now_ns: int, start: int = 0
) -> list[Segment]:
    """Run ``segs`` through ``stages[start:]``."""
    for stage in stages[start:]:
        if not segs:
            break
        nxt: list[Segment] = []
        for seg in segs:
            stage.apply(seg, now_ns, nxt)
        segs = nxt
    return segs


def flush_chain(stages: Sequence[Stage], now_ns: int, force: bool) -> list[Segment]:
    """Run due held-back entries through the stages after their holder."""
    out: list[Segment] = []
    for i, stage in enumerate(stages):
        due = stage.flush(now_ns, force)
        if due:
            out.extend(run_chain(stages, due, now_ns, i + 1))
    return out


def _emit_without(seg: Segment, dropped: list[int], out: list[Segment]) -> None:
    """Hand ``seg`` on without the entries at ``dropped`` (ascending indices)."""
    if not dropped:
        out.append(seg)
        return
    n = len(seg.entries)
    if len(dropped) == n:
        hand_on(seg.delivery, 0)
        return
    gone = set(dropped)
    out.append(seg.subset([i for i in range(n) if i not in gone]))


def _source_text(ov: dict[str, Any], source: str, seed_value: Any) -> str | None:
    """The string form of extracted ``source`` for one entry, or None."""
    value = ov.get(source, seed_value)
    if value is MISSING:
        return None
    return go_string(value)


# ----------------------------------------------------------------------------- parsers


class JsonStage(Stage):
    """``stage.json``: JMESPath expressions over the line (or a value) as JSON."""

    name = "stage.json"

    def __init__(
        self, expressions: dict[str, JmesPath], source: str | None, drop_malformed: bool
    ) -> None:
        # A one-key path is looked up directly: the common case, no JMESPath walk.
        self._exprs = tuple(
            (name, path[0] if len(path) == 1 and type(path[0]) is str else None, path)
            for name, path in expressions.items()
        )
        self._source = source
        self._drop_malformed = drop_malformed

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        entries = seg.entries
        ovs = seg.overlays()
        source = self._source
        seed_value = MISSING if source is None else seg.seed.get(source, MISSING)
        exprs = self._exprs
        loads = orjson.loads
        dropped: list[int] = []
        for i, entry in enumerate(entries):
            ov = ovs[i]
            if source is None:
                text: str | None = entry.line
            else:
                text = _source_text(ov, source, seed_value)
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
                    result = jmes_search(path, data)
                ov[name] = (
                    result if isinstance(result, _SCALARS) else json_string(result)
                )
        _emit_without(seg, dropped, out)


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
                text = _source_text(ov, source, seed_value)
                if text is None:
                    continue
            for key, raw, stop in logfmt_scan(text):  # type: ignore[arg-type]
                if stop:
                    break  # Alloy keeps what was decoded before a syntax error
                names = inverse.get(key)
                if names is not None:
                    value = logfmt_value(raw)
                    for name in names:
                        ov[name] = value
                if regex is not None and regex.search(key) is not None:
                    ov[key] = logfmt_value(raw)
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
            text = (
                entry.line if source is None else _source_text(ov, source, seed_value)
            )
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
            _emit_grouped(seg, keys, self._label_names, out)
        else:
            out.append(seg)


# ------------------------------------------------------------------------------ labels


def _set_labels(
    labels: dict[str, str], names: tuple[str, ...], values: tuple[str | None, ...]
) -> dict[str, str]:
    """``labels`` with ``names`` set to ``values`` (None: leave, "": remove)."""
    new: dict[str, str] | None = None
    for name, value in zip(names, values, strict=True):
        if value is None:
            continue
        current = labels.get(name) if new is None else new.get(name)
        if value == "":
            # An empty label value is the same as no label in Loki.
            if current is not None:
                if new is None:
                    new = dict(labels)
                del new[name]
        elif current != value:
            if new is None:
                new = dict(labels)
            new[name] = value
    return labels if new is None else new


def _emit_grouped(
    seg: Segment,
    keys: list[tuple[str | None, ...]],
    names: tuple[str, ...],
    out: list[Segment],
) -> None:
    """Hand ``seg`` on, split by the per-entry label values ``keys``."""
    first = keys[0]
    if all(k == first for k in keys):
        seg.labels = _set_labels(seg.labels, names, first)
        out.append(seg)
        return
    groups: dict[tuple[str | None, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    hand_on(seg.delivery, len(groups))
    for key, indices in groups.items():
        out.append(seg.subset(indices, _set_labels(seg.labels, names, key)))


class LabelsStage(Stage):
    """``stage.labels`` (and ``stage.tenant`` with ``source``): labels from values."""

    name = "stage.labels"

    def __init__(self, values: dict[str, str], from_metadata: bool = False) -> None:
        self._names = tuple(values)
        self._sources = tuple(values.values())
        self._from_metadata = from_metadata

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        names, sources = self._names, self._sources
        if self._from_metadata:
            keys = [self._from_sm(e.structured_metadata) for e in seg.entries]
            _emit_grouped(seg, keys, names, out)
            return
        seed = seg.seed
        seed_values = tuple(seed.get(src, MISSING) for src in sources)
        ex = seg.extracted
        if ex is None:
            seg.labels = _set_labels(
                seg.labels, names, tuple(map(go_string, seed_values))
            )
            out.append(seg)
            return
        if len(sources) == 1:
            src, sv = sources[0], seed_values[0]
            keys = [(go_string(ov.get(src, sv)),) for ov in ex]
        else:
            pairs = tuple(zip(sources, seed_values, strict=True))
            keys = [tuple([go_string(ov.get(s, sv)) for s, sv in pairs]) for ov in ex]
        _emit_grouped(seg, keys, names, out)

    def _from_sm(self, metadata: Metadata) -> tuple[str | None, ...]:
        # The first pair of a name wins, as in Alloy's loop.
        found = dict(reversed(metadata))
        return tuple(found.get(src) for src in self._sources)


class StaticLabelsStage(Stage):
    """``stage.static_labels``: fixed labels; empty values are ignored, as in Alloy."""

    name = "stage.static_labels"

    def __init__(self, values: dict[str, str]) -> None:
        kept = {k: v for k, v in values.items() if v}
        self._names = tuple(kept)
        self._values: tuple[str | None, ...] = tuple(kept.values())

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        seg.labels = _set_labels(seg.labels, self._names, self._values)
        out.append(seg)


class CopyLabelStage(Stage):
    """``stage.tenant`` with ``label``: copy one label's value into another label."""

    name = "stage.tenant"

    def __init__(self, target: str, source_label: str) -> None:
        self._target = (target,)
        self._source = source_label

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        value = seg.labels.get(self._source)
        if value:
            seg.labels = _set_labels(seg.labels, self._target, (value,))
        out.append(seg)


class LabelDropStage(Stage):
    """``stage.label_drop``: remove the named labels."""

    name = "stage.label_drop"

    def __init__(self, values: Sequence[str]) -> None:
        self._drop = frozenset(values)

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        labels = seg.labels
        if not self._drop.isdisjoint(labels):
            seg.labels = {k: v for k, v in labels.items() if k not in self._drop}
        out.append(seg)


class LabelKeepStage(Stage):
    """``stage.label_keep``: remove every label not named (``__`` ones too)."""

    name = "stage.label_keep"

    def __init__(self, values: Sequence[str]) -> None:
        self._keep = frozenset(values)

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        labels = seg.labels
        if not self._keep.issuperset(labels):
            seg.labels = {k: v for k, v in labels.items() if k in self._keep}
        out.append(seg)


class StructuredMetadataStage(Stage):
    """``stage.structured_metadata``: extracted values (and labels) as metadata.

    As in Alloy, a configured source that is also a current label is moved from the
    labels into the metadata, as are labels matching ``regex``. Unlike Alloy, a pair
    identical to one already added from the extracted map (a label seeded into it) is
    not added twice.
    """

    name = "stage.structured_metadata"

    def __init__(self, values: dict[str, str], regex: re.Pattern[str] | None) -> None:
        self._items = tuple(values.items())
        self._sources = frozenset(values.values())
        self._regex = regex

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        labels = seg.labels
        label_pairs: list[tuple[str, str]] = []
        moved: set[str] = set()
        for name, src in self._items:
            if src in labels:
                label_pairs.append((name, labels[src]))
                moved.add(src)
        regex = self._regex
        if regex is not None:
            for key, value in labels.items():
                if key not in moved and regex.search(key) is not None:
                    label_pairs.append((key, value))
                    moved.add(key)
        if moved:
            seg.labels = {k: v for k, v in labels.items() if k not in moved}
        seed = seg.seed
        ex = seg.extracted
        if ex is None:
            common = self._pairs_from({}, seed, label_pairs)
            if common:
                seg.entries = [
                    new_entry((e.timestamp_ns, e.line, e.structured_metadata + common))
                    for e in seg.entries
                ]
            out.append(seg)
            return
        if regex is not None or label_pairs:
            adds = [self._pairs_from(ov, seed, label_pairs) for ov in ex]
        else:
            # The common case, inlined: values by name, no regex, no labels moved.
            sourced = tuple(
                (name, src, seed.get(src, MISSING)) for name, src in self._items
            )
            adds = []
            for ov in ex:
                pairs: list[tuple[str, str]] = []
                for name, src, seed_value in sourced:
                    value = ov.get(src, seed_value)
                    if value is MISSING:
                        continue
                    text = value if type(value) is str else go_string(value)
                    if text is not None:
                        pairs.append((name, text))
                adds.append(tuple(pairs))
        seg.entries = [
            new_entry((e.timestamp_ns, e.line, e.structured_metadata + add))
            if add
            else e
            for e, add in zip(seg.entries, adds, strict=True)
        ]
        out.append(seg)

    def _pairs_from(
        self,
        ov: dict[str, Any],
        seed: Mapping[str, str],
        label_pairs: list[tuple[str, str]],
    ) -> Metadata:
        pairs: list[tuple[str, str]] = []
        for name, src in self._items:
            text = go_string(extracted_value(ov, seed, src))
            if text is not None:
                pairs.append((name, text))
        if self._regex is not None:
            search = self._regex.search
            for key, value in {**seed, **ov}.items():
                if search(key) is not None:
                    text = go_string(value)
                    if text is not None:
                        pairs.append((key, text))
        if label_pairs:
            seen = set(pairs)
            pairs.extend(p for p in label_pairs if p not in seen)
        return tuple(pairs)


# -------------------------------------------------------------------------- line, time


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
            text = _source_text(ov, source, seed_value)
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
                text = _source_text(ov, source, seed_value)
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
        _emit_grouped(seg, streams, ("stream",), out)


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


# ----------------------------------------------------------------------------- filters


class DropStage(Stage):
    """``stage.drop``: drop entries meeting every configured condition (an AND)."""

    name = "stage.drop"

    def __init__(
        self,
        *,
        sources: tuple[str, ...],
        separator: str,
        regex: re.Pattern[str] | None,
        value: str | None,
        older_than_ns: int,
        longer_than: int,
        counter: Counter,
        reason: str,
    ) -> None:
        self._sources = sources
        self._separator = separator
        self._regex = regex
        self._value = value
        self._older_than_ns = older_than_ns
        self._longer_than = longer_than
        self._dropped = counter.labels(reason)

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        dropped = [
            i for i, e in enumerate(seg.entries) if self._should_drop(seg, i, e, now_ns)
        ]
        if dropped:
            self._dropped.inc(len(dropped))
        _emit_without(seg, dropped, out)

    def _should_drop(self, seg: Segment, i: int, entry: LogEntry, now_ns: int) -> bool:
        limit = self._longer_than
        if limit:
            line = entry.line
            n = len(line)
            # Go compares the byte length: count UTF-8 bytes only when it can matter.
            if n <= limit and (n * 4 <= limit or len(line.encode()) <= limit):
                return False
        if self._older_than_ns and entry.timestamp_ns >= now_ns - self._older_than_ns:
            return False
        sources = self._sources
        if not sources:
            return self._regex is None or self._regex.search(entry.line) is not None
        ov = seg.extracted[i] if seg.extracted is not None else {}
        seed = seg.seed
        if self._regex is None and self._value is None:
            # Only a source: drop when every named key exists (even with a null value).
            return all(extracted_value(ov, seed, s) is not MISSING for s in sources)
        parts: list[str] = []
        for src in sources:
            value = extracted_value(ov, seed, src)
            if value is MISSING:
                continue
            text = go_string(value)
            if text is None:
                return False
            parts.append(text)
        joined = self._separator.join(parts)
        if self._value is not None:
            return joined == self._value
        assert self._regex is not None
        return self._regex.search(joined) is not None


class SamplingStage(Stage):
    """``stage.sampling``: keep each entry with probability ``rate``; count the rest."""

    name = "stage.sampling"

    def __init__(self, rate: float, dropped: Counter, rng: random.Random) -> None:
        self._rate = rate
        self._dropped = dropped
        self._random = rng.random

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        rate, rnd = self._rate, self._random
        dropped = [i for i in range(len(seg.entries)) if rnd() >= rate]
        if dropped:
            self._dropped.inc(len(dropped))
        _emit_without(seg, dropped, out)


class _TokenBucket:
    """``golang.org/x/time/rate.Limiter``'s ``Allow``, for a batch arriving at once."""

    __slots__ = ("_burst", "_last_ns", "_per_ns", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._per_ns = rate / 1e9
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_ns: int | None = None

    def take(self, wanted: int, now_ns: int) -> int:
        """How many of ``wanted`` entries arriving at ``now_ns`` may pass."""
        if self._last_ns is not None and now_ns > self._last_ns:
            elapsed = now_ns - self._last_ns
            self._tokens = min(self._burst, self._tokens + elapsed * self._per_ns)
        if self._last_ns is None or now_ns > self._last_ns:
            self._last_ns = now_ns
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted


class LimitStage(Stage):
    """``stage.limit`` with ``drop = true``: a token bucket (``rate``/s, ``burst``).

    With ``by_label_name``, one bucket per value of that label (at most
    ``max_distinct_labels`` remembered); entries without the label are not limited.
    Alloy's ``drop = false`` blocks the pipeline instead, which a pure stage cannot do.
    """

    name = "stage.limit"

    def __init__(
        self,
        rate: float,
        burst: int,
        by_label: str,
        max_distinct: int,
        dropped: Counter,
        dropped_by_label: Counter | None,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._by_label = by_label
        self._max_distinct = max_distinct
        self._dropped = dropped
        self._dropped_by_label = dropped_by_label
        self._bucket = _TokenBucket(rate, burst)
        # Loki's generational map: at max size the new generation becomes the old one.
        self._new: dict[str, _TokenBucket] = {}
        self._old: dict[str, _TokenBucket] = {}

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        bucket = self._bucket
        value = ""
        if self._by_label:
            found = seg.labels.get(self._by_label)
            if found is None:
                out.append(seg)
                return
            value = found
            bucket = self._bucket_for(value)
        n = len(seg.entries)
        granted = bucket.take(n, now_ns)
        if granted == n:
            out.append(seg)
            return
        self._dropped.inc(n - granted)
        if self._dropped_by_label is not None:
            self._dropped_by_label.labels(self._by_label, value).inc(n - granted)
        _emit_without(seg, list(range(granted, n)), out)

    def _bucket_for(self, value: str) -> _TokenBucket:
        bucket = self._new.get(value)
        if bucket is None:
            bucket = self._old.get(value) or _TokenBucket(self._rate, self._burst)
            self._new[value] = bucket
            if len(self._new) >= self._max_distinct:
                self._old, self._new = self._new, {}
                if self._dropped_by_label is not None:
                    self._dropped_by_label.clear()
        return bucket


class MatchStage(Stage):
    """``stage.match``: nested stages for, or drop of, entries a selector matches."""

    name = "stage.match"

    def __init__(
        self,
        selector: Selector,
        stages: Sequence[Stage],
        drop_counter: Counter | None,
    ) -> None:
        self._selector = selector
        self._stages = tuple(stages)
        self._dropped = drop_counter

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        selector = self._selector
        if not selector.matches_labels(seg.labels):
            out.append(seg)
            return
        matched, rest = seg, None
        if selector.filters:
            keeps = selector.keeps_line
            hit = [i for i, e in enumerate(seg.entries) if keeps(e.line)]
            if not hit:
                out.append(seg)
                return
            if len(hit) < len(seg.entries):
                hits = set(hit)
                miss = [i for i in range(len(seg.entries)) if i not in hits]
                matched, rest = seg.subset(hit), seg.subset(miss)
                hand_on(seg.delivery, 2)
        if self._dropped is not None:
            self._dropped.inc(len(matched.entries))
            hand_on(matched.delivery, 0)
        else:
            _reseed(matched)
            out.extend(run_chain(self._stages, [matched], now_ns))
        if rest is not None:
            out.append(rest)

    def flush(self, now_ns: int, force: bool) -> list[Segment]:
        return flush_chain(self._stages, now_ns, force)

    def next_deadline_ns(self) -> int | None:
        return earliest_deadline(self._stages)


def _reseed(seg: Segment) -> None:
    """Seed extracted values with the current labels, as Alloy's nested pipeline."""
    labels = seg.labels
    if labels is not seg.seed:
        seg.seed = {**seg.seed, **labels}
    ex = seg.extracted
    if ex is None or not labels:
        return
    for ov in ex:
        if not ov.keys().isdisjoint(labels):
            for key in labels.keys() & ov.keys():
                ov[key] = labels[key]


# --------------------------------------------------------------------------- multiline


class _Block:
    """The multiline state of one stream: the block being built and its start line."""

    __slots__ = (
        "deliveries",
        "extracted",
        "first",
        "labels",
        "last_ns",
        "lines",
        "seed",
    )

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.deliveries: list[Delivery] = []
        self.first: LogEntry | None = None
        self.labels: dict[str, str] = {}
        self.seed: Any = {}
        self.extracted: dict[str, Any] | None = None
        self.last_ns = 0


def _collect(flushed: list[Segment], seg: Segment) -> None:
    """Append a sent block, merged into the previous one when they share everything.

    Merging keeps one segment per stream and delivery instead of one per block.
    """
    if flushed:
        last = flushed[-1]
        if (
            last.labels is seg.labels
            and last.seed is seg.seed
            and last.delivery is seg.delivery
            and (last.extracted is None) == (seg.extracted is None)
        ):
            last.entries.extend(seg.entries)
            if last.extracted is not None and seg.extracted is not None:
                last.extracted.extend(seg.extracted)
            if seg.delivery is not None:
                seg.delivery.release()  # both held one; ``last`` keeps its own
            return
    flushed.append(seg)


class MultilineStage(Stage):
    """``stage.multiline``: merge the lines of a block, per stream, into one entry.

    A line matching ``firstline`` starts a block; others join the current one with
    ``\\n``. Until a stream's first start line, lines pass through. A block is sent on
    at the next start line, at ``max_lines``, or when no line arrived for ``max_wait``
    (``flush``). The block keeps its start line's time, structured metadata and
    extracted values. Entries held in a block keep a reference to their delivery until
    the block is sent.
    """

    name = "stage.multiline"
    #: Streams idle this long are forgotten (Alloy keeps them forever; label churn would
    #: leak).
    IDLE_FORGET_NS: ClassVar[int] = 3600 * 1_000_000_000

    def __init__(
        self, firstline: re.Pattern[str], max_lines: int, max_wait_ns: int
    ) -> None:
        self._firstline = firstline
        self._max_lines = max_lines
        self._max_wait_ns = max_wait_ns
        self._streams: dict[tuple[tuple[str, str], ...], _Block] = {}

    @property
    def pending_lines(self) -> int:
        return sum(len(b.lines) for b in self._streams.values())

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        key = labels_key(seg.labels)
        block = self._streams.get(key)
        search = self._firstline.search
        ex = seg.extracted
        delivery = seg.delivery
        passthrough: list[int] = []
        flushed: list[Segment] = []
        for i, entry in enumerate(seg.entries):
            line = entry.line
            is_first = search(line) is not None
            if block is None:
                if not is_first:
                    passthrough.append(i)
                    continue
                block = self._streams[key] = _Block()
            elif block.lines and now_ns - block.last_ns >= self._max_wait_ns:
                # Alloy's timer would have sent it before this line arrived.
                _collect(flushed, self._send(block))
            if is_first:
                if block.lines:
                    _collect(flushed, self._send(block))
                block.first = entry
                block.labels = seg.labels
                block.seed = seg.seed
                block.extracted = None if ex is None else ex[i]
            block.lines.append(line)
            block.last_ns = now_ns
            if delivery is not None and not any(
                d is delivery for d in block.deliveries
            ):
                delivery.retain()
                block.deliveries.append(delivery)
            if len(block.lines) >= self._max_lines:
                _collect(flushed, self._send(block))
        if len(passthrough) == len(seg.entries):
            out.append(seg)
        elif passthrough:
            out.append(seg.subset(passthrough))
        else:
            hand_on(
                delivery, 0
            )  # every line is in a block, which holds its own reference
        out.extend(flushed)

    def _send(self, block: _Block) -> Segment:
        """The block as a one-entry segment holding the block's delivery references."""
        first = block.first
        assert first is not None
        entry = LogEntry(
            first.timestamp_ns, "\n".join(block.lines), first.structured_metadata
        )
        extracted = None if block.extracted is None else [dict(block.extracted)]
        delivery = combine_deliveries(block.deliveries)
        block.lines = []
        block.deliveries = []
        return Segment(block.labels, [entry], extracted, block.seed, delivery)

    def flush(self, now_ns: int, force: bool) -> list[Segment]:
        due: list[Segment] = []
        idle: list[tuple[tuple[str, str], ...]] = []
        for key, block in self._streams.items():
            waited = now_ns - block.last_ns
            if block.lines:
                if force or waited >= self._max_wait_ns:
                    due.append(self._send(block))
            elif waited >= self.IDLE_FORGET_NS:
                idle.append(key)
        for key in idle:
            del self._streams[key]
        return due

    def next_deadline_ns(self) -> int | None:
        waiting = [b.last_ns for b in self._streams.values() if b.lines]
        return min(waiting) + self._max_wait_ns if waiting else None
