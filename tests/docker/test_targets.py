"""Tests for ``minilog.docker.targets``: one target per container, as Alloy picks it."""

from __future__ import annotations

from source_helpers import (
    CID,
    target,
)

from minilog.docker.targets import dedupe_targets, fingerprint


def test_fingerprint_matches_prometheus_vector() -> None:
    # prometheus/common model: LabelsToSignature of this set (separator 0xFF).
    labels = {"name": "garland, briggs", "fear": "love is not enough"}
    assert fingerprint(labels) == 5799056148416392346
    assert fingerprint({}) == 14695981039346656037


def test_dedupe_keeps_lowest_fingerprint_and_merges_labels_over_targets() -> None:
    a = target(__address__="10.0.0.1:80", job="x")
    b = target(__address__="10.0.0.2:80", job="x")
    other = target("d" * 64, job="y")
    got = dedupe_targets([a, b, other, {"job": "no id"}], {"job": "forced"})
    assert set(got) == {CID, "d" * 64}
    winner = min(({**a, "job": "forced"}, {**b, "job": "forced"}), key=fingerprint)
    assert got[CID] == winner
    assert got["d" * 64]["job"] == "forced"
    assert dedupe_targets([b, a]) == dedupe_targets([a, b])
