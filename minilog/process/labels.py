"""``loki.process`` stages that set labels and structured metadata: ``stage.labels``,
``stage.static_labels``, ``stage.tenant`` (a label copy), ``stage.label_drop``,
``stage.label_keep``, ``stage.structured_metadata``, ``stage.structured_metadata_drop``
(pure; label-only stages run once per segment).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from minilog.model import LogEntry, Metadata
from minilog.process.core import (
    MISSING,
    Segment,
    go_string,
    new_entry,
)
from minilog.process.stage import (
    Stage,
    emit_grouped,
    set_labels,
)

__all__ = [
    "CopyLabelStage",
    "LabelDropStage",
    "LabelKeepStage",
    "LabelsStage",
    "StaticLabelsStage",
    "StructuredMetadataDropStage",
    "StructuredMetadataStage",
]


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
            emit_grouped(seg, keys, names, out)
            return
        seed = seg.seed
        seed_values = tuple(seed.get(src, MISSING) for src in sources)
        ex = seg.extracted
        if ex is None:
            seg.labels = set_labels(
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
        emit_grouped(seg, keys, names, out)

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
        seg.labels = set_labels(seg.labels, self._names, self._values)
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
            seg.labels = set_labels(seg.labels, self._target, (value,))
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

    As Alloy (since v1.16), a name already in the entry's metadata gets the new value in
    place: one value per name reaches Loki. Alloy's order: the configured values from
    the extracted map, extracted keys matching ``regex``, then configured sources that
    are current labels and labels matching ``regex``, which are also removed from the
    label set (so a label seeded into the extracted map ends up once, with the label's
    value).
    """

    name = "stage.structured_metadata"

    def __init__(self, values: dict[str, str], regex: re.Pattern[str] | None) -> None:
        self._items = tuple(values.items())
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
            common = self._pairs_from({}, seed)
            seg.entries = [self._with(e, common, label_pairs) for e in seg.entries]
        else:
            seg.entries = [
                self._with(e, self._pairs_from(ov, seed), label_pairs)
                for e, ov in zip(seg.entries, ex, strict=True)
            ]
        out.append(seg)

    def _pairs_from(
        self, ov: dict[str, Any], seed: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The pairs an entry's extracted values give, in Alloy's order."""
        pairs: list[tuple[str, str]] = []
        for name, src in self._items:
            value = ov.get(src, MISSING) if src in ov else seed.get(src, MISSING)
            if value is MISSING:
                continue
            text = value if type(value) is str else go_string(value)
            if text is not None:
                pairs.append((name, text))
        if self._regex is not None:
            search = self._regex.search
            for key, value in {**seed, **ov}.items():
                if value is not MISSING and search(key) is not None:
                    text = go_string(value)
                    if text is not None:
                        pairs.append((key, text))
        return pairs

    @staticmethod
    def _with(
        entry: LogEntry,
        pairs: list[tuple[str, str]],
        label_pairs: list[tuple[str, str]],
    ) -> LogEntry:
        if not pairs and not label_pairs:
            return entry
        if not entry.structured_metadata and not label_pairs and len(pairs) == 1:
            return new_entry((entry.timestamp_ns, entry.line, (pairs[0],)))
        metadata = list(entry.structured_metadata)
        index: dict[str, int] = {}
        for i, (name, _) in enumerate(metadata):
            index.setdefault(name, i)
        for pair in (*pairs, *label_pairs):
            at = index.get(pair[0])
            if at is None:
                index[pair[0]] = len(metadata)
                metadata.append(pair)
            else:
                metadata[at] = pair
        return new_entry((entry.timestamp_ns, entry.line, tuple(metadata)))


class StructuredMetadataDropStage(Stage):
    """``stage.structured_metadata_drop``: remove the named metadata (every pair)."""

    name = "stage.structured_metadata_drop"

    def __init__(self, values: Sequence[str]) -> None:
        self._drop = frozenset(values)

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        drop = self._drop
        seg.entries = [
            new_entry(
                (
                    e.timestamp_ns,
                    e.line,
                    tuple(p for p in e.structured_metadata if p[0] not in drop),
                )
            )
            if any(p[0] in drop for p in e.structured_metadata)
            else e
            for e in seg.entries
        ]
        out.append(seg)
