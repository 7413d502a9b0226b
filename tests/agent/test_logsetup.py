"""The agent's own log under a flood: one line per interval per message template."""

from __future__ import annotations

import io
import logging

from minilog.agent.logsetup import (
    LogfmtFormatter,
    RepeatLimitedHandler,
    RepeatLimiter,
)

__all__: list[str] = []


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("minilog.test", level, __file__, 1, msg, args, None)


def test_the_limiter_admits_one_per_interval_and_reports_the_rest() -> None:
    clock = Clock()
    limiter = RepeatLimiter(10.0, clock=clock)
    assert limiter.admit("k", record("x")) == 0
    assert [limiter.admit("k", record("x")) for _ in range(5)] == [None] * 5
    assert limiter.admit("other", record("y")) == 0
    clock.now = 10.0
    assert limiter.admit("k", record("x")) == 5
    assert list(limiter.due()) == []  # "other" had nothing suppressed


def test_a_flood_that_stops_still_gets_its_count_written() -> None:
    clock = Clock()
    limiter = RepeatLimiter(10.0, clock=clock)
    limiter.admit("k", record("x"))
    last = record("x")
    limiter.admit("k", record("x"))
    limiter.admit("k", last)
    assert list(limiter.due()) == []  # its interval is still running
    clock.now = 11.0
    assert list(limiter.due()) == [(last, 2)]
    assert list(limiter.due()) == []


def test_the_limiter_tracks_a_bounded_number_of_templates() -> None:
    clock = Clock()
    limiter = RepeatLimiter(10.0, clock=clock, max_keys=3)
    for key in range(3):
        limiter.admit(key, record("x"))
        limiter.admit(key, record("x"))
    limiter.admit(99, record("x"))  # a fourth: the oldest goes, its count written
    assert [n for _, n in limiter.due()] == [1]


def handler_with(clock: Clock) -> tuple[RepeatLimitedHandler, io.StringIO]:
    out = io.StringIO()
    handler = RepeatLimitedHandler(out, interval_s=10.0, clock=clock)
    handler.setFormatter(LogfmtFormatter())
    return handler, out


def test_a_hundred_thousand_identical_errors_make_two_lines() -> None:
    clock = Clock()
    handler, out = handler_with(clock)
    for i in range(100_000):
        clock.now = i * 1e-4  # ten seconds in all
        handler.handle(record("socket.accept() out of system resource"))
    clock.now = 10.5
    handler.handle(record("socket.accept() out of system resource"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith('msg="socket.accept() out of system resource"')
    assert lines[1].endswith(
        'msg="socket.accept() out of system resource (99999 similar suppressed)"'
    )


def test_the_template_not_the_text_is_the_key_and_info_always_passes() -> None:
    clock = Clock()
    handler, out = handler_with(clock)
    for port in range(100):
        handler.handle(record("Error handling request from 127.0.0.1:%d", port))
    for i in range(3):
        handler.handle(record("entry %d", i, level=logging.INFO))
    handler.handle(record("another template"))
    lines = out.getvalue().splitlines()
    assert [line.split(" msg=")[1] for line in lines] == [
        '"Error handling request from 127.0.0.1:0"',
        '"entry 0"',
        '"entry 1"',
        '"entry 2"',
        '"another template"',
    ]


def test_closing_writes_the_counts_still_pending() -> None:
    clock = Clock()
    handler, out = handler_with(clock)
    for _ in range(4):
        handler.handle(record("disk full", level=logging.WARNING))
    handler.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].endswith('msg="disk full (3 similar suppressed)"')
    assert "level=warn" in lines[1]


def test_component_loggers_are_limited_per_component() -> None:
    clock = Clock()
    handler, out = handler_with(clock)
    for component in ("loki.source.api.a", "loki.source.api.b", "loki.source.api.a"):
        rec = record("cannot save positions")
        rec.component_id = component
        handler.handle(rec)
    assert len(out.getvalue().splitlines()) == 2
