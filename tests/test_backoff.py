"""Tests for ``minilog.backoff``: dskit's jittered exponential backoff."""

from __future__ import annotations

import pytest

from minilog.backoff import Backoff


class Sequence01:
    """A random source returning the given values in turn."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


def test_backoff_doubles_its_range_up_to_max() -> None:
    backoff = Backoff(0.5, 300.0, random=lambda: 0.0)
    lows = [backoff.next_delay() for _ in range(12)]
    assert lows == [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256]
    top = Backoff(0.5, 300.0, random=lambda: 0.999999)
    highs = [top.next_delay() for _ in range(11)]
    assert highs[:9] == pytest.approx([1, 2, 4, 8, 16, 32, 64, 128, 256], rel=1e-5)
    assert highs[9:] == pytest.approx([300, 300], rel=1e-5)


def test_backoff_is_uniform_between_bounds() -> None:
    backoff = Backoff(1.0, 10.0, random=Sequence01(0.5, 0.25))
    assert backoff.next_delay() == 1.5  # [1, 2)
    assert backoff.next_delay() == 2.5  # [2, 4)


def test_backoff_with_min_not_below_max_is_constant() -> None:
    backoff = Backoff(5.0, 5.0, random=lambda: 0.7)
    assert [backoff.next_delay() for _ in range(3)] == [5.0, 5.0, 5.0]


def test_backoff_counts_retries_against_the_limit() -> None:
    backoff = Backoff(0.1, 1.0, 3)
    assert backoff.ongoing()
    for _ in range(3):
        backoff.next_delay()
    assert not backoff.ongoing()
    backoff.reset()
    assert backoff.ongoing()
    forever = Backoff(0.1, 1.0, 0)
    for _ in range(100):
        forever.next_delay()
    assert forever.ongoing()
