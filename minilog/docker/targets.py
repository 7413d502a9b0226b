"""Targets of ``loki.source.docker``: one label set per container (pure).

Discovery exports a target per container *network* (and port); a container is tailed
once. Owns Prometheus' label-set fingerprint and the dedupe rule that picks the target
Alloy picks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Final

from minilog.labels import DOCKER_CONTAINER_ID

__all__ = ["dedupe_targets", "fingerprint"]

_log = logging.getLogger(__name__)

_FNV_OFFSET: Final = 14695981039346656037
_FNV_PRIME: Final = 1099511628211
_MASK64: Final = (1 << 64) - 1


def fingerprint(labels: Mapping[str, str]) -> int:
    """Prometheus `LabelSet.Fingerprint`: FNV-1a 64 of sorted `name 0xFF value 0xFF`.

    The same value Prometheus computes, so duplicates resolve as in Alloy.
    """
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & _MASK64
            h = ((h ^ 0xFF) * _FNV_PRIME) & _MASK64
    return h


def dedupe_targets(
    targets: Iterable[Mapping[str, str]], labels: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """Targets to ``{container id: labels}``, ``labels`` merged over each target's.

    Several targets of one container (one per network or port) collapse to the one with
    the lowest fingerprint, as Alloy does; targets without
    ``__meta_docker_container_id`` are skipped.
    """
    groups: dict[str, list[dict[str, str]]] = {}
    for target in targets:
        merged = {**target, **(labels or {})}
        cid = merged.get(DOCKER_CONTAINER_ID)
        if not cid:
            _log.debug("target without %s skipped: %s", DOCKER_CONTAINER_ID, target)
            continue
        groups.setdefault(cid, []).append(merged)
    # Fingerprints (a pure-Python hash) only where there is a choice to make.
    return {
        cid: group[0] if len(group) == 1 else min(group, key=fingerprint)
        for cid, group in groups.items()
    }
