"""Encode + snappy cost per entry: protobuf-library path against the hand-written path.

Builds 1 MiB batches of ~110-byte JSON lines (one stream per batch, as a busy container
gives), then times encode+compress for each path: median of several runs, one process,
one core. Run from the repository root:
``PYTHONPATH=. python benchmarks/bench_encode.py [--runs N] [--batches N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from minilog.loki.wire import compress, encode_push_request, encode_push_request_pb
from minilog.model import LogEntry

__all__ = ["main", "make_batches"]

BATCH_BYTES = 1 << 20
LABELS = '{compose_service="order-api", container="shop-order-api-1", stream="stdout"}'


def make_batches(count: int) -> list[list[tuple[str, list[LogEntry]]]]:
    """``count`` single-stream requests holding ~1 MiB of ~110-byte JSON lines each."""
    batches = []
    ts = 1_764_216_000_000_000_000
    seq = 0
    for _ in range(count):
        entries: list[LogEntry] = []
        size = 0
        while size < BATCH_BYTES:
            seq += 1
            ts += 1_234_567  # distinct nanos on every line, as Docker timestamps have
            line = (
                f'{{"level":"info","ts":"2025-11-27T04:00:00.{seq % 1_000_000:06d}Z",'
                f'"msg":"order processed","order_id":{seq},"duration_ms":{seq % 97}}}'
            )
            entries.append(LogEntry(ts, line))
            size += len(line)
        batches.append([(LABELS, entries)])
    return batches


def _time_path(
    encode: Callable[[list[tuple[str, list[LogEntry]]]], bytes],
    batches: list[list[tuple[str, list[LogEntry]]]],
    runs: int,
) -> tuple[float, int]:
    """Median CPU seconds per pass over all batches, and compressed bytes of a pass."""
    timings = []
    out_bytes = 0
    for _ in range(runs):
        out_bytes = 0
        start = time.process_time()
        for batch in batches:
            out_bytes += len(compress(encode(batch)))
        timings.append(time.process_time() - start)
    return statistics.median(timings), out_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()

    batches = make_batches(args.batches)
    n_entries = sum(len(entries) for batch in batches for _, entries in batch)
    line_bytes = sum(len(e.line) for batch in batches for _, es in batch for e in es)
    for batch in batches:
        if encode_push_request(batch) != encode_push_request_pb(batch):
            raise SystemExit("hand encoder and protobuf library disagree")
    print(
        f"{n_entries} entries in {len(batches)} batches of ~1 MiB, "
        f"mean line {line_bytes / n_entries:.0f} bytes, median of {args.runs} runs"
    )
    results = {}
    for name, encode in (
        ("protobuf (upb) + snappy", encode_push_request_pb),
        ("hand encoder + snappy", encode_push_request),
    ):
        seconds, out_bytes = _time_path(encode, batches, args.runs)
        results[name] = seconds
        print(
            f"{name:26s} {n_entries / seconds:12,.0f} entries/s "
            f"{seconds / n_entries * 1e6:6.2f} us/entry  "
            f"({out_bytes / len(batches) / 1024:.0f} KiB compressed per batch)"
        )
    pb, hand = results.values()
    print(f"hand encoder speed-up: {pb / hand:.2f}x")


if __name__ == "__main__":
    main()
