"""``loki.process`` stages that set labels and structured metadata: ``stage.labels``,
``stage.static_labels``, ``stage.tenant`` (a label copy), ``stage.label_drop``,
``stage.label_keep``, ``stage.structured_metadata`` (pure; label-only stages run once
per segment).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from minilog.model import Metadata
from minilog.process.core import (
    MISSING,
    Segment,
    extracted_value,
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
