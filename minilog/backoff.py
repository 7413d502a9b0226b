"""The one retry backoff: dskit's jittered exponential backoff.

Every retry in minilog waits with it: ``loki.write`` between attempts (as Alloy's
client does, through dskit), Docker discovery between failed refreshes, a tailer
between failed log streams, the tailer supervisor between crashes, the HTTP servers
between failed ``accept()`` calls. Pure: the random source is a parameter.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """dskit's backoff: each delay is uniform in ``[lo, hi)``, both bounds doubling up
    to ``max``.

    The first delay is in ``[min, 2*min)``; once ``hi`` reaches ``max`` the range stays
    fixed. With ``min >= max`` every delay is ``min``. ``max_retries`` bounds the
    attempts (0 = forever): :meth:`ongoing` is false once ``max_retries`` delays were
    taken.

    Args:
        random: source of floats in ``[0, 1)``, injectable for tests.
    """

    __slots__ = (
        "_hi",
        "_lo",
        "_random",
        "max_period",
        "max_retries",
        "min_period",
        "retries",
    )

    def __init__(
        self,
        min_period: float,
        max_period: float,
        max_retries: int = 0,
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.min_period = min_period
        self.max_period = max_period
        self.max_retries = max_retries
        self.retries = 0
        self._random = random
        self._lo = min_period
        self._hi = min(2 * min_period, max_period)

    def ongoing(self) -> bool:
        return self.max_retries == 0 or self.retries < self.max_retries

    def reset(self) -> None:
        self.retries = 0
        self._lo = self.min_period
        self._hi = min(2 * self.min_period, self.max_period)

    def next_delay(self) -> float:
        """The next sleep in seconds; counts one retry."""
        self.retries += 1
        if self.min_period >= self.max_period:
            return self.min_period
        delay = self._lo + self._random() * (self._hi - self._lo)
        if self._hi < self.max_period:
            self._lo = min(2 * self._lo, self.max_period)
            self._hi = min(2 * self._hi, self.max_period)
        return delay
