"""The progress display: agent, profile, phase, elapsed time, lines delivered so far.

On a terminal one status line is redrawn in place (at most 4 times a second); into a
file or a pipe a line is written on each phase change and every 10 s.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.agent = ""
        self.profile = ""
        self.phase = ""
        self.t0 = time.monotonic()
        self.bench_t0 = time.monotonic()
        self._last_draw = 0.0
        self._width = 0

    def begin(self, agent: str, profile: str) -> None:
        self.agent, self.profile = agent, profile
        self.t0 = time.monotonic()
        self.set_phase("starting")

    def set_phase(self, phase: str, delivered: int = 0, expected: int = 0) -> None:
        self.phase = phase
        self.update(delivered, expected, force=True)

    def update(self, delivered: int, expected: int = 0, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        interval = 0.25 if self.tty else 10.0
        if not force and now - self._last_draw < interval:
            return
        self._last_draw = now
        of = f"/{expected:,}" if expected else ""
        text = (
            f"[{self.agent} {self.profile}] {self.phase}: "
            f"{now - self.t0:6.1f} s, {delivered:,}{of} lines delivered "
            f"(bench {now - self.bench_t0:5.0f} s)"
        )
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line of its own (a skip, a missed target, a finished profile)."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(message + "\n")
        self.stream.flush()
