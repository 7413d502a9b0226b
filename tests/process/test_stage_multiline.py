"""Tests for ``minilog.process``: ``stage.multiline`` (blocks held until the next
first line or ``max_wait_time``)."""

from __future__ import annotations

from typing import Any

import pytest
from process_helpers import (
    FIRSTLINE,
    LABELS,
    NOW,
    TRACE,
    S,
    batch,
    lines_of,
    multiline,
    only,
)

from minilog.errors import StageError
from minilog.model import LogEntry
from minilog.process import build_pipeline

# --------------------------------------------------------------------------- multiline


def test_multiline_merges_a_stack_trace_and_holds_the_last_block() -> None:
    pipeline = multiline()
    source = batch(*TRACE)
    out = only(pipeline.process(source, NOW))
    assert out.entries == [
        LogEntry(source.entries[0].timestamp_ns, "\n".join(TRACE[:4]))
    ]
    assert pipeline.next_deadline_ns() == NOW + 3 * S
    assert pipeline.flush_expired(NOW + 2 * S) == []
    held = only(pipeline.flush_expired(NOW + 3 * S))
    assert held.entries == [LogEntry(source.entries[4].timestamp_ns, TRACE[4])]
    assert held.labels == LABELS
    assert pipeline.next_deadline_ns() is None
    assert pipeline.flush_expired(NOW + 10 * S) == []


def test_multiline_block_spans_batches_and_the_wait_restarts_with_each_line() -> None:
    pipeline = multiline(max_wait_time=5.0)
    assert pipeline.process(batch(*TRACE[:2]), NOW) == []
    assert pipeline.process(batch(*TRACE[2:4], ts=NOW + S), NOW + 4 * S) == []
    assert pipeline.flush_expired(NOW + 8 * S) == []  # only 4 s since the last line
    out = only(pipeline.flush_expired(NOW + 9 * S))
    assert lines_of([out]) == ["\n".join(TRACE[:4])]
    assert out.entries[0].timestamp_ns == NOW


def test_multiline_stale_block_is_sent_before_a_late_continuation_line() -> None:
    pipeline = multiline()
    assert pipeline.process(batch(TRACE[0]), NOW) == []
    out = pipeline.process(batch("late continuation", ts=NOW + 10 * S), NOW + 10 * S)
    # Alloy's timer sends the block and forgets the stream after max_wait_time, so the
    # continuation that comes later passes through on its own.
    assert sorted(lines_of(out)) == sorted([TRACE[0], "late continuation"])
    assert pipeline.flush_all(NOW + 10 * S) == []


def test_multiline_passes_lines_through_until_the_first_start_line() -> None:
    pipeline = multiline()
    out = pipeline.process(batch("preamble 1", "preamble 2", *TRACE[:2]), NOW)
    assert lines_of(out) == ["preamble 1", "preamble 2"]
    assert lines_of(pipeline.flush_all(NOW)) == ["\n".join(TRACE[:2])]


def test_multiline_max_lines_starts_a_new_block() -> None:
    pipeline = multiline(max_lines=2)
    out = pipeline.process(batch(*TRACE[:4]), NOW)
    assert lines_of(out) == ["\n".join(TRACE[:2]), "\n".join(TRACE[2:4])]
    assert pipeline.flush_all(NOW) == []


def test_multiline_keeps_streams_apart() -> None:
    pipeline = multiline()
    assert pipeline.process(batch(TRACE[0], labels={"c": "a"}), NOW) == []
    assert pipeline.process(batch(TRACE[0], labels={"c": "b"}), NOW) == []
    assert pipeline.process(batch("  a detail", labels={"c": "a"}), NOW) == []
    out = pipeline.flush_all(NOW)
    assert {b.labels["c"]: lines_of([b]) for b in out} == {
        "a": [TRACE[0] + "\n  a detail"],
        "b": [TRACE[0]],
    }


def test_multiline_inside_match_flushes_through_later_stages() -> None:
    pipeline = build_pipeline(
        [
            (
                "stage.match",
                {
                    "selector": '{job="docker"}',
                    "stages": [("stage.multiline", {"firstline": FIRSTLINE})],
                },
            ),
            ("stage.static_labels", {"values": {"merged": "yes"}}),
        ]
    )
    assert pipeline.holds_entries
    assert pipeline.next_deadline_ns() is None
    assert pipeline.process(batch(*TRACE[:2]), NOW) == []
    assert pipeline.next_deadline_ns() == NOW + 3 * S
    out = only(pipeline.flush_expired(NOW + 3 * S))
    assert out.labels == {**LABELS, "merged": "yes"}
    assert lines_of([out]) == ["\n".join(TRACE[:2])]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "firstline"),
        ({"firstline": "("}, "invalid firstline"),
        ({"firstline": "x", "max_wait_time": 0}, "max_wait_time"),
        ({"firstline": "x", "max_wait_time": "-1s"}, "max_wait_time"),
        ({"firstline": "x", "max_lines": -1}, "max_lines"),
    ],
)
def test_multiline_validation(args: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.multiline", args)])


def test_multiline_max_lines_zero_means_no_limit() -> None:
    """Alloy compares the line count with max_lines for equality: 0 never matches."""
    pipeline = multiline(max_lines=0)
    lines = [TRACE[0], *(f"at frame {i}" for i in range(300))]
    assert pipeline.process(batch(*lines), NOW) == []
    assert lines_of(pipeline.flush_all(NOW)) == ["\n".join(lines)]
