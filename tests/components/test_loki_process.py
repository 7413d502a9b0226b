"""The ``loki.process`` component: decoding, stages end to end, flush timer, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from minilog.agent.logsetup import component_logger
from minilog.agent.runtime import Agent
from minilog.components import COMPONENT_TYPES, ComponentOptions
from minilog.components.loki_process import LokiProcess
from minilog.config import Scope, parse
from minilog.config.ast import Block
from minilog.errors import ConfigError
from minilog.model import Delivery, LogEntry, StreamBatch

_T0 = 1_764_216_000_000_000_000  # 2025-11-27T04:00:00Z


class Recorder:
    """A ``LogsReceiver`` that keeps what it gets and signals each arrival."""

    def __init__(self) -> None:
        self.batches: list[StreamBatch] = []
        self.got = asyncio.Event()

    async def send(self, batch: StreamBatch) -> None:
        self.batches.append(batch)
        self.got.set()

    async def next(self) -> StreamBatch:
        """The next batch to arrive after the ones already taken (5 s at most)."""
        async with asyncio.timeout(5.0):
            while not self.batches:
                self.got.clear()
                await self.got.wait()
        return self.batches.pop(0)


class Gate:
    """A receiver that holds every send until ``open`` is set (backpressure)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()
        self.batches: list[StreamBatch] = []

    async def send(self, batch: StreamBatch) -> None:
        self.entered.set()
        await self.open.wait()
        self.batches.append(batch)


def _block(text: str) -> Block:
    stmt = parse(text, "test.alloy").body[0]
    assert isinstance(stmt, Block)
    return stmt


def prepare(text: str, exports: Mapping[str, Any] | None = None) -> dict[str, Any]:
    block = _block(text)
    cls = COMPONENT_TYPES[block.full_name]
    raw = cls.decode(block, Scope(components=dict(exports or {})))
    return cls.parse_args(raw, block)


def build(
    text: str,
    exports: Mapping[str, Any] | None = None,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> LokiProcess:
    args = prepare(text, exports)
    opts_registry = (
        registry if registry is not None else CollectorRegistry(auto_describe=True)
    )
    opts = ComponentOptions(
        id="loki.process.p",
        data_path=Path("/nonexistent"),
        registry=opts_registry,
        logger=component_logger("loki.process.p"),
    )
    return LokiProcess(opts, args, clock=clock)


def batch(
    labels: dict[str, str], *lines: str, delivery: Delivery | None = None
) -> StreamBatch:
    return StreamBatch(
        labels,
        [LogEntry(_T0 + i, line) for i, line in enumerate(lines)],
        delivery,
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


FULL_CONFIG = """loki.process "p" {
  forward_to = [sink.s.receiver]

  stage.multiline {
    firstline     = "^[{]"
    max_wait_time = "%(wait)s"
  }
  stage.json {
    expressions = {level = "", ts = "time", msg = ""}
  }
  stage.labels {
    values = {level = ""}
  }
  stage.timestamp {
    source = "ts"
    format = "RFC3339Nano"
  }
  stage.metrics {
    metric.counter {
      name      = "lines"
      match_all = true
      action    = "inc"
    }
    metric.counter {
      name   = "errors"
      source = "level"
      value  = "error"
      action = "inc"
    }
    metric.histogram {
      name    = "msg_len"
      source  = "msg"
      buckets = [1, 10]
    }
  }
}"""

INFO = '{"level":"info","time":"2025-11-27T04:00:00.5Z","msg":"12"}'
ERROR_HEAD = '{"level":"error","time":"2025-11-27T04:00:01.25Z",'
ERROR_TAIL = ' "msg":"multi"}'


def _ts(text: str) -> int:
    """Unix nanoseconds of an RFC 3339 time in 2025-11-27T04:00 UTC (whole ms)."""
    seconds = float(text.removeprefix("2025-11-27T04:00:").removesuffix("Z"))
    return _T0 + round(seconds * 1_000_000_000)


# ------------------------------------------------------------------ end to end


async def test_json_labels_timestamp_multiline_metrics_end_to_end() -> None:
    sink = Recorder()
    comp = build(FULL_CONFIG % {"wait": "50ms"}, {"sink.s": {"receiver": sink}})
    assert [name for name, _ in comp.args.stages] == [
        "stage.multiline",
        "stage.json",
        "stage.labels",
        "stage.timestamp",
        "stage.metrics",
    ]
    task = asyncio.create_task(comp.run())
    outcomes: list[bool] = []
    try:
        sent_ns = time.time_ns()
        await comp.exports()["receiver"].send(
            batch(
                {"service": "api"},
                INFO,
                ERROR_HEAD,
                ERROR_TAIL,
                delivery=Delivery(outcomes.append),
            )
        )
        # The second block's start line completed the first block.
        first = await sink.next()
        assert first.labels == {"service": "api", "level": "info"}
        assert first.entries == [LogEntry(_ts("00.5"), INFO)]
        assert sink.batches == []  # the pretty-printed error is held back
        # Sent by the timer once max_wait_time passed without a new line.
        second = await sink.next()
        waited_ns = time.time_ns() - sent_ns
    finally:
        await stop(task)
    assert waited_ns >= 50_000_000
    assert second.labels == {"service": "api", "level": "error"}
    assert second.entries == [LogEntry(_ts("01.25"), ERROR_HEAD + "\n" + ERROR_TAIL)]
    # One delivery reference per forwarded batch: settled when both are.
    first.settle()
    assert outcomes == []
    second.settle()
    assert outcomes == [True]
    reg = comp.opts.registry
    info = {"service": "api", "level": "info"}
    error = {"service": "api", "level": "error"}
    assert reg.get_sample_value("loki_process_custom_lines", info) == 1
    assert reg.get_sample_value("loki_process_custom_lines", error) == 1
    assert reg.get_sample_value("loki_process_custom_errors", error) == 1
    assert reg.get_sample_value("loki_process_custom_errors", info) is None
    assert reg.get_sample_value("loki_process_custom_msg_len_sum", info) == 12
    assert reg.get_sample_value("loki_process_custom_msg_len_count", error) is None


async def test_multiline_timer_fires_at_the_deadline_not_on_a_polling_tick() -> None:
    sink = Recorder()
    comp = build(FULL_CONFIG % {"wait": "20ms"}, {"sink.s": {"receiver": sink}})
    task = asyncio.create_task(comp.run())
    try:
        await asyncio.sleep(0)  # the timer is idle: nothing is held yet
        start = time.monotonic()
        await comp.exports()["receiver"].send(batch({"s": "x"}, ERROR_HEAD))
        got = await sink.next()
        elapsed = time.monotonic() - start
    finally:
        await stop(task)
    assert got.entries[0].line == ERROR_HEAD
    # A fixed 0.25 s poll would have taken at least 0.25 s.
    assert 0.02 <= elapsed < 0.2


async def test_timer_waits_on_the_injected_clock() -> None:
    now = [_T0]
    sink = Recorder()
    comp = build(
        FULL_CONFIG % {"wait": "1h"},
        {"sink.s": {"receiver": sink}},
        clock=lambda: now[0],
    )
    task = asyncio.create_task(comp.run())
    try:
        await comp.exports()["receiver"].send(batch({"s": "x"}, ERROR_HEAD))
        assert comp.pipeline.next_deadline_ns() == _T0 + 3600 * 1_000_000_000
        # The hour passes on the component's clock; input wakes the timer, which
        # then finds the block due.
        now[0] += 3600 * 1_000_000_000
        await comp.exports()["receiver"].send(StreamBatch({"s": "y"}, []))
        got = await sink.next()
    finally:
        await stop(task)
    # The head alone is not valid JSON: no fields extracted, no level label.
    assert got.labels == {"s": "x"}
    assert got.entries[0].line == ERROR_HEAD


async def test_shutdown_flushes_held_blocks() -> None:
    sink = Recorder()
    comp = build(FULL_CONFIG % {"wait": "1h"}, {"sink.s": {"receiver": sink}})
    task = asyncio.create_task(comp.run())
    await comp.exports()["receiver"].send(batch({"s": "x"}, ERROR_HEAD, ERROR_TAIL))
    await asyncio.sleep(0)
    assert sink.batches == []
    await stop(task)
    (got,) = sink.batches
    assert got.entries[0].line == ERROR_HEAD + "\n" + ERROR_TAIL


async def test_backpressure_reaches_the_sender() -> None:
    gate = Gate()
    text = (
        'loki.process "p" {\n  forward_to = [g.g.receiver]\n'
        '  stage.static_labels {\n    values = {a = "b"}\n  }\n}'
    )
    comp = build(text, {"g.g": {"receiver": gate}})
    sending = asyncio.create_task(comp.send(batch({"s": "x"}, "l1")))
    await gate.entered.wait()
    assert not sending.done()
    gate.open.set()
    await sending
    (got,) = gate.batches
    assert got.labels == {"s": "x", "a": "b"}


async def test_fan_out_retains_the_delivery_per_receiver() -> None:
    a, b = Recorder(), Recorder()
    text = (
        'loki.process "p" {\n  forward_to = [a.a.receiver, b.b.receiver]\n'
        '  stage.drop {\n    expression = "debug"\n  }\n}'
    )
    comp = build(text, {"a.a": {"receiver": a}, "b.b": {"receiver": b}})
    outcomes: list[bool] = []
    await comp.send(
        batch({"s": "x"}, "keep", "debug me", delivery=Delivery(outcomes.append))
    )
    (ga,) = a.batches
    (gb,) = b.batches
    assert [e.line for e in ga.entries] == [e.line for e in gb.entries] == ["keep"]
    ga.settle()
    assert outcomes == []
    gb.settle()
    assert outcomes == [True]
    assert (
        comp.opts.registry.get_sample_value(
            "loki_process_dropped_lines_total", {"reason": "drop_stage"}
        )
        == 1
    )


async def test_a_batch_dropped_entirely_settles_its_delivery() -> None:
    sink = Recorder()
    text = (
        'loki.process "p" {\n  forward_to = [s.s.receiver]\n'
        '  stage.drop {\n    expression = ".*"\n  }\n}'
    )
    comp = build(text, {"s.s": {"receiver": sink}})
    outcomes: list[bool] = []
    await comp.send(batch({"s": "x"}, "a", "b", delivery=Delivery(outcomes.append)))
    assert sink.batches == []
    assert outcomes == [True]


# ------------------------------------------------------------------ metrics scope

METRICS_ONLY = """loki.process "p" {
  forward_to = []
  stage.metrics {
    metric.counter {
      name      = "seen"
      match_all = true
      action    = "inc"
    }
  }
}"""


async def test_two_components_with_the_same_metric_names_do_not_clash() -> None:
    shared = CollectorRegistry(auto_describe=True)
    one = build(METRICS_ONLY, registry=shared)
    two = build(METRICS_ONLY, registry=shared)
    await one.send(batch({"c": "one"}, "a", "b"))
    await two.send(batch({"c": "two"}, "a"))
    text = generate_latest(shared).decode()
    assert 'loki_process_custom_seen{c="one"} 2.0' in text
    assert 'loki_process_custom_seen{c="two"} 1.0' in text


async def test_update_rebuilds_stages_and_flushes_what_the_old_ones_held() -> None:
    sink = Recorder()
    exports = {"sink.s": {"receiver": sink}}
    comp = build(FULL_CONFIG % {"wait": "1h"}, exports)
    await comp.send(batch({"s": "x"}, ERROR_HEAD))
    assert sink.batches == []
    # Same metric names in the new stages: they go to a fresh registry.
    new_args = prepare(FULL_CONFIG % {"wait": "2h"}, exports)
    await comp.update(new_args)
    (held,) = sink.batches
    assert held.entries[0].line == ERROR_HEAD
    reg = comp.opts.registry
    labels = {"s": "x", "level": "error"}
    # The old pipeline's series went with it; the new one counts from zero.
    assert reg.get_sample_value("loki_process_custom_lines", labels) is None
    # The next start line completes INFO's block: the new stages count it.
    await comp.send(batch({"s": "x"}, INFO, ERROR_HEAD))
    info = {"s": "x", "level": "info"}
    assert reg.get_sample_value("loki_process_custom_lines", info) == 1
    await comp.update(prepare(FULL_CONFIG % {"wait": "3h"}, exports))
    assert [b.entries[0].line for b in sink.batches] == [ERROR_HEAD, INFO, ERROR_HEAD]


async def test_update_with_unchanged_stages_keeps_the_pipeline() -> None:
    a, b = Recorder(), Recorder()
    text = (
        'loki.process "p" {\n  forward_to = [%s]\n'
        '  stage.static_labels {\n    values = {a = "b"}\n  }\n}'
    )
    exports = {"a.a": {"receiver": a}, "b.b": {"receiver": b}}
    comp = build(text % "a.a.receiver", exports)
    pipeline = comp.pipeline
    await comp.update(prepare(text % "b.b.receiver", exports))
    assert comp.pipeline is pipeline
    await comp.send(batch({"s": "x"}, "l"))
    assert a.batches == [] and len(b.batches) == 1


# ------------------------------------------------------------------ diagnostics


def test_bad_stage_arguments_are_positioned_diagnostics() -> None:
    text = """loki.process "p" {
  forward_to = []
  stage.json {
    expressions = 3
  }
  stage.multiline {
    firstline = "(unclosed"
  }
  stage.metrics {
    metric.counter {
      name   = "c"
      action = "inc"
    }
    metric.gauge {
      action = "set"
    }
  }
  stage.timestamp {
    source            = "ts"
    format            = "RFC3339"
    action_on_failure = "explode"
  }
  stage.nonsense {}
}"""
    with pytest.raises(ConfigError) as info:
        prepare(text)
    diags = info.value.diagnostics
    rendered = [str(d) for d in diags]
    assert all(r.startswith("test.alloy:") for r in rendered)
    where = {(d.line, d.column) for d in diags}
    assert (4, 19) in where  # expressions: the wrong type, at its value
    assert (7, 17) in where  # the bad firstline regex, at its value
    assert (21, 25) in where  # action_on_failure, at its value
    assert (23, 3) in where  # the unknown stage
    by_line = {d.line: d.message for d in diags}
    assert "firstline" in by_line[7]
    assert "stage.nonsense" in by_line[23]
    assert "stage.multiline" in rendered[[d.line for d in diags].index(7)]
    # metric.gauge without its required name: reported inside the nested block.
    assert any(14 <= d.line <= 16 and "name" in d.message for d in diags)


def test_nested_metric_blocks_decode_in_order() -> None:
    args = prepare(FULL_CONFIG % {"wait": "3s"}, {"sink.s": {"receiver": Recorder()}})
    (metrics,) = [a for n, a in args.stages if n == "stage.metrics"]
    assert [m["name"] for m in metrics["metric.counter"]] == ["lines", "errors"]
    assert metrics["metric.histogram"][0]["buckets"] == [1, 10]
    (multiline,) = [a for n, a in args.stages if n == "stage.multiline"]
    assert multiline["max_wait_time"] == pytest.approx(3.0)


def test_a_bad_metric_action_is_reported_at_its_argument() -> None:
    text = """loki.process "p" {
  forward_to = []
  stage.static_labels {
    values = {a = "b"}
  }
  stage.metrics {
    metric.counter {
      name   = "c"
      action = "set"
    }
  }
}"""
    with pytest.raises(ConfigError) as info:
        prepare(text)
    (diag,) = info.value.diagnostics
    assert str(diag).startswith("test.alloy:9:16: stage.metrics")  # the value
    assert "'inc' or 'add'" in diag.message


def test_one_metric_name_in_two_metrics_stages_is_a_positioned_error() -> None:
    text = """loki.process "p" {
  forward_to = []
  stage.metrics {
    metric.counter {
      name   = "dup"
      action = "inc"
    }
  }
  stage.metrics {
    metric.gauge {
      name   = "dup"
      action = "set"
    }
  }
}"""
    with pytest.raises(ConfigError) as info:
        prepare(text)
    (diag,) = info.value.diagnostics
    # At the second definition's name.
    assert (diag.path, diag.line, diag.column) == ("test.alloy", 11, 16)
    assert "loki_process_custom_dup" in diag.message


def test_forward_to_is_required() -> None:
    with pytest.raises(ConfigError) as info:
        prepare('loki.process "p" {\n  stage.decolorize {}\n}')
    (diag,) = info.value.diagnostics
    assert diag.line == 1 and "forward_to" in diag.message


async def test_agent_runs_two_components_defining_the_same_metric(
    tmp_path: Path,
) -> None:
    config = METRICS_ONLY + "\n" + METRICS_ONLY.replace('"p"', '"q"')
    agent = Agent(config_text=config, storage_path=tmp_path)
    await agent.start()
    try:
        await agent.component("loki.process.p").send(batch({"c": "x"}, "a", "b"))
        await agent.component("loki.process.q").send(batch({"c": "x"}, "a"))
        text = generate_latest(agent.registry).decode()
    finally:
        await agent.aclose()
    for cid, count in (("loki.process.p", "2.0"), ("loki.process.q", "1.0")):
        sample = (
            f'loki_process_custom_seen{{c="x",component_id="{cid}",'
            f'component_path="/"}} {count}'
        )
        assert sample in text


# ------------------------------------------------------------ stage.limit, waiting

LIMIT_CONFIG = """loki.process "p" {
  forward_to = [sink.s.receiver]

  stage.multiline {
    firstline     = "^START"
    max_wait_time = "30ms"
  }
  stage.limit {
    rate  = 50
    burst = 2
  }
}"""


async def test_limit_without_drop_holds_the_sender_back_without_blocking() -> None:
    """drop = false: entries over the rate wait for their tokens and the sender waits
    with them (backpressure toward the source), while the event loop, the flush timer
    and other senders go on; nothing is lost and the order is kept."""
    sink = Recorder()
    comp = build(LIMIT_CONFIG, {"sink.s": {"receiver": sink}})
    task = asyncio.create_task(comp.run())
    receiver = comp.exports()["receiver"]
    try:
        lines = [f"START {i}" for i in range(6)]
        # Each start line sends the block before it on; the last is held.
        sending = asyncio.create_task(receiver.send(batch({"s": "a"}, *lines)))
        first = await sink.next()
        assert [e.line for e in first.entries] == ["START 0", "START 1"]
        assert not sending.done()  # three blocks still wait for their tokens
        # The loop is free: another stream's block is flushed by the timer meanwhile.
        other = asyncio.create_task(receiver.send(batch({"s": "b"}, "START x")))
        got = [e.line for e in first.entries]
        while len(got) < 7:
            got.extend(e.line for e in (await sink.next()).entries)
        await sending
        await other
    finally:
        await stop(task)
    assert [line for line in got if line != "START x"] == lines
    assert "START x" in got
    assert comp.pipeline.backlog() == 0


async def test_limit_waiting_entries_are_sent_at_shutdown() -> None:
    sink = Recorder()
    config = LIMIT_CONFIG.replace("rate  = 50", "rate  = 0.001")
    comp = build(config, {"sink.s": {"receiver": sink}})
    task = asyncio.create_task(comp.run())
    receiver = comp.exports()["receiver"]
    sending = asyncio.create_task(
        receiver.send(batch({"s": "a"}, "START 0", "START 1", "START 2", "START 3"))
    )
    first = await sink.next()
    assert [e.line for e in first.entries] == ["START 0", "START 1"]
    await stop(task)
    await sending  # released by the shutdown, not stuck
    rest = [e.line for b in sink.batches for e in b.entries]
    assert rest == ["START 2", "START 3"]
