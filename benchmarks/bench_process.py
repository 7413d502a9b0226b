"""``loki.process`` cost per line for typical stage pipelines, written as Alloy config.

Each pipeline is decoded from ``stage.*`` blocks as the component decodes them, then
runs over batches of 1000 ~110-byte lines (one stream per batch, as a busy container
gives): median CPU time of several runs, one process. Run from the repository root:
``PYTHONPATH=. python benchmarks/bench_process.py [--runs N] [--batches N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from prometheus_client import CollectorRegistry

from minilog.config import Scope, parse
from minilog.config.ast import Block
from minilog.model import LogEntry, StreamBatch
from minilog.process import Pipeline, build_pipeline, decode_stages

__all__ = ["PIPELINES", "main", "make_batches"]

LINES_PER_BATCH = 1000
LABELS = {
    "service": "order-api",
    "container": "shop-order-api-1",
    "stream": "stdout",
    "__meta_docker_container_id": "3f1c9a7e2b4d",
}
_T0 = 1_764_216_000_000_000_000  # 2025-11-27T04:00:00Z

#: (name, line format, stage blocks). Line formats: "json" or "logfmt".
PIPELINES: tuple[tuple[str, str, str], ...] = (
    (
        "label-only (static_labels)",
        "json",
        'stage.static_labels {\n values = {env = "prod"}\n}',
    ),
    (
        "json, one key",
        "json",
        'stage.json {\n expressions = {level = ""}\n}',
    ),
    (
        "json + labels + RFC3339Nano timestamp + output",
        "json",
        'stage.json {\n expressions = {level = "", ts = "", msg = ""}\n}\n'
        'stage.labels {\n values = {level = ""}\n}\n'
        'stage.timestamp {\n source = "ts"\n format = "RFC3339Nano"\n}\n'
        'stage.output {\n source = "msg"\n}',
    ),
    (
        "logfmt + labels",
        "logfmt",
        'stage.logfmt {\n mapping = {level = "", ts = ""}\n}\n'
        'stage.labels {\n values = {level = ""}\n}',
    ),
    (
        "regex (named group)",
        "json",
        'stage.regex {\n expression = "\\"level\\":\\"(?P<level>[a-z]+)\\""\n}',
    ),
    (
        "drop (expression, 10% dropped)",
        "json",
        'stage.drop {\n expression = "\\"level\\":\\"debug\\""\n}',
    ),
    (
        "match (selector + line filter)",
        "json",
        'stage.match {\n selector = "{service=\\"order-api\\"} |= \\"error\\""\n'
        ' stage.static_labels {\n  values = {alert = "yes"}\n }\n}',
    ),
    (
        "multiline (every line starts a block)",
        "json",
        'stage.multiline {\n firstline = "^[{]"\n max_wait_time = "3s"\n}',
    ),
)

_LEVELS = ("info", "info", "info", "info", "warn", "info", "info", "error", "info")


def _level(seq: int) -> str:
    # One line in ten is debug (what the drop pipeline removes).
    return "debug" if seq % 10 == 9 else _LEVELS[seq % 9]


def _json_line(seq: int) -> str:
    return (
        f'{{"level":"{_level(seq)}","ts":"2025-11-27T04:00:00.{seq % 1_000_000:06d}Z",'
        f'"msg":"order processed","order_id":{seq},"duration_ms":{seq % 97}}}'
    )


def _logfmt_line(seq: int) -> str:
    return (
        f"level={_level(seq)} ts=2025-11-27T04:00:00.{seq % 1_000_000:06d}Z "
        f'msg="order processed" order_id={seq} duration_ms={seq % 97} caller=api.go:42'
    )


def make_batches(count: int, fmt: str) -> list[StreamBatch]:
    """``count`` one-stream batches of ``LINES_PER_BATCH`` lines in format ``fmt``."""
    make = _json_line if fmt == "json" else _logfmt_line
    batches = []
    seq = 0
    for _ in range(count):
        entries = []
        for _ in range(LINES_PER_BATCH):
            seq += 1
            entries.append(LogEntry(_T0 + seq * 1_234_567, make(seq)))
        batches.append(StreamBatch(LABELS, entries))
    return batches


def compile_stages(stage_text: str) -> Pipeline:
    """A pipeline from ``stage.*`` blocks, decoded as ``loki.process`` decodes them."""
    block = parse(f'loki.process "bench" {{\n{stage_text}\n}}', "bench.alloy").body[0]
    assert isinstance(block, Block)
    specs = decode_stages(block.body, Scope())
    return build_pipeline(specs, registry=CollectorRegistry())


def _time_pipeline(
    stage_text: str, batches: list[StreamBatch], runs: int
) -> tuple[float, int]:
    """Median CPU seconds per pass over ``batches``, and the lines a pass emits."""
    timings = []
    emitted = 0
    for _ in range(runs):
        # A fresh pipeline per run: multiline state and metrics start empty.
        pipeline = compile_stages(stage_text)
        emitted = 0
        start = time.process_time()
        now = _T0
        for batch in batches:
            # Batches are not modified by ``process``; a new wrapper carries no
            # delivery to settle.
            for out in pipeline.process(StreamBatch(batch.labels, batch.entries), now):
                emitted += len(out.entries)
            now += 1_000_000
        for out in pipeline.flush_all(now):
            emitted += len(out.entries)
        timings.append(time.process_time() - start)
    return statistics.median(timings), emitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    data = {fmt: make_batches(args.batches, fmt) for fmt in ("json", "logfmt")}
    n_lines = args.batches * LINES_PER_BATCH
    for fmt, batches in data.items():
        mean = sum(len(e.line) for b in batches for e in b.entries) / n_lines
        print(f"{fmt:6s} lines: mean {mean:.0f} bytes")
    print(
        f"{args.batches} batches of {LINES_PER_BATCH} lines, "
        f"median CPU time of {args.runs} runs\n"
    )
    print(f"{'pipeline':48s} {'us/line':>8s} {'lines/s':>12s} {'out lines':>10s}")
    for name, fmt, stage_text in PIPELINES:
        seconds, emitted = _time_pipeline(stage_text, data[fmt], args.runs)
        print(
            f"{name:48s} {seconds / n_lines * 1e6:8.3f} "
            f"{n_lines / seconds:12,.0f} {emitted:10d}"
        )


if __name__ == "__main__":
    main()
