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

#: (name, line format, stage blocks). Line formats: "json", "logfmt" or "cri".
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
    # The stages of Alloy v1.18 minilog added, and the ones it completed.
    ("cri (full lines)", "cri", "stage.cri {}"),
    (
        "pattern (3 captures)",
        "logfmt",
        'stage.pattern {\n pattern = "level=<level> ts=<ts> msg=\\"<msg>\\" <_>"\n}',
    ),
    (
        "truncate (line, nothing to cut)",
        "json",
        'stage.truncate {\n rule {\n  limit = "1KiB"\n }\n}',
    ),
    (
        "truncate (line cut to 64B + suffix)",
        "json",
        'stage.truncate {\n rule {\n  limit = "64B"\n  suffix = "..."\n }\n}',
    ),
    ("luhn (no card numbers)", "json", "stage.luhn {}"),
    (
        "structured_metadata + structured_metadata_drop",
        "json",
        'stage.json {\n expressions = {level = ""}\n}\n'
        'stage.structured_metadata {\n values = {level = ""}\n}\n'
        'stage.structured_metadata_drop {\n values = ["level"]\n}',
    ),
    (
        "json + template ({{ .Value | ToUpper }})",
        "json",
        'stage.json {\n expressions = {level = ""}\n}\n'
        'stage.template {\n source = "level"\n template = "{{ .Value | ToUpper }}"\n}',
    ),
    (
        "replace (template with Sha2Hash)",
        "json",
        'stage.replace {\n expression = "order_id\\":(\\\\d+)"\n'
        ' replace = "{{ .Value | Sha2Hash \\"salt\\" }}"\n}',
    ),
    (
        "json, JMESPath function (length(msg))",
        "json",
        'stage.json {\n expressions = {n = "length(msg)"}\n}',
    ),
    (
        "limit, drop = false, under the rate",
        "json",
        "stage.limit {\n rate = 1000000000\n burst = 1000000\n}",
    ),
    (
        "json + metrics (counter and histogram)",
        "json",
        'stage.json {\n expressions = {level = "", duration_ms = ""}\n}\n'
        "stage.metrics {\n"
        ' metric.counter {\n  name = "lines_total"\n  source = "level"\n'
        '  action = "inc"\n }\n'
        ' metric.histogram {\n  name = "duration_ms"\n  source = "duration_ms"\n'
        "  buckets = [1, 10, 100]\n }\n}",
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


def _cri_line(seq: int) -> str:
    return (
        f"2025-11-27T04:00:00.{seq % 1_000_000:06d}Z stdout F order processed "
        f"order_id={seq} duration_ms={seq % 97} level={_level(seq)}"
    )


_MAKERS = {"json": _json_line, "logfmt": _logfmt_line, "cri": _cri_line}


def make_batches(count: int, fmt: str) -> list[StreamBatch]:
    """``count`` one-stream batches of ``LINES_PER_BATCH`` lines in format ``fmt``."""
    make = _MAKERS[fmt]
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
    parser.add_argument(
        "--only", nargs="*", default=[], help="run the pipelines whose name has a word"
    )
    args = parser.parse_args()

    data = {fmt: make_batches(args.batches, fmt) for fmt in _MAKERS}
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
        if args.only and not any(word in name for word in args.only):
            continue
        seconds, emitted = _time_pipeline(stage_text, data[fmt], args.runs)
        print(
            f"{name:48s} {seconds / n_lines * 1e6:8.3f} "
            f"{n_lines / seconds:12,.0f} {emitted:10d}"
        )


if __name__ == "__main__":
    main()
