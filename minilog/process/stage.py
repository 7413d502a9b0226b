"""The stage contract of ``loki.process`` and the chaining of stages.

A stage works on whole segments (runs of entries with one label set): label-only
stages run once per segment, only stages that must read lines loop over them. The
stages themselves are grouped by kind: ``extract``, ``labels``, ``lines``, ``filter``,
``multiline``, ``metrics``; arguments are decoded in ``build``. Pure: the time comes
in as ``now_ns``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Final

from minilog.process.core import (
    MISSING,
    Segment,
    go_string,
    hand_on,
)

__all__ = [
    "SCALARS",
    "Stage",
    "earliest_deadline",
    "emit_grouped",
    "emit_without",
    "flush_chain",
    "run_chain",
    "set_labels",
    "source_text",
]

SCALARS: Final = (str, int, float, bool, type(None))


class Stage:
    """One stage. ``apply`` appends the resulting segments to ``out``.

    Contract: each segment passed in owns one reference to its delivery; every segment a
    stage appends owns one too (``hand_on`` retains for extra parts, releases for none).
    """

    name: ClassVar[str] = ""
    #: Whether the stage can hold entries back until a deadline (``flush``): the
    #: component then runs a timer for it.
    holds: bool = False

    def apply(self, seg: Segment, now_ns: int, out: list[Segment]) -> None:
        raise NotImplementedError

    @property
    def backlog(self) -> int:
        """Entries held back that their sources should wait for (``stage.limit``)."""
        return 0

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


def emit_without(seg: Segment, dropped: list[int], out: list[Segment]) -> None:
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


def source_text(ov: dict[str, Any], source: str, seed_value: Any) -> str | None:
    """The string form of extracted ``source`` for one entry, or None."""
    value = ov.get(source, seed_value)
    if value is MISSING:
        return None
    return go_string(value)


def set_labels(
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


def emit_grouped(
    seg: Segment,
    keys: list[tuple[str | None, ...]],
    names: tuple[str, ...],
    out: list[Segment],
) -> None:
    """Hand ``seg`` on, split by the per-entry label values ``keys``."""
    first = keys[0]
    if all(k == first for k in keys):
        seg.labels = set_labels(seg.labels, names, first)
        out.append(seg)
        return
    groups: dict[tuple[str | None, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    hand_on(seg.delivery, len(groups))
    for key, indices in groups.items():
        out.append(seg.subset(indices, set_labels(seg.labels, names, key)))
