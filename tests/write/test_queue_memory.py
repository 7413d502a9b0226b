"""What a queue stalled by an outage keeps alive is what it counts against
``queue_capacity``: entries, compressed bodies and the delivery references with what
their callbacks hold of the source's reads (the ledger's chunks)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

from minilog.ledger import Ledger
from minilog.model import LogEntry, StreamBatch
from minilog.write import DELIVERY_OVERHEAD_BYTES, EndpointConfig
from minilog.write.accumulator import Accumulator

READS = 6000
#: Filled batches this size are compressed as they fill (``_ENCODE_ON_FILL_MIN_BYTES``).
BATCH_SIZE = 32 << 10


def accumulator() -> Accumulator:
    config = EndpointConfig(
        url="http://127.0.0.1:9/loki/api/v1/push",
        batch_size=BATCH_SIZE,
        queue_capacity=1 << 30,  # never full: what is kept is what is measured
    )
    return Accumulator(
        config, max_streams=0, clock=lambda: 0.0, on_drop=lambda *_: None
    )


@contextmanager
def traced() -> Iterator[list[int]]:
    """Bytes allocated inside the block and still alive after it."""
    grown: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield grown
        gc.collect()
        grown.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


def queue_reads(acc: Accumulator, ledger: Ledger, streams: int) -> None:
    """``READS`` reads of one short line each, as ``loki.source.docker`` hands them
    on (one delivery per read unless the ledger joins them), over ``streams``
    containers."""
    for i in range(READS):
        # Short lines, alike, as a busy service writes them: they compress well, so
        # the compressed bodies are small next to what each read leaves behind.
        line = f"level=info msg=handled request={i:08d}"
        labels = {"container": f"c{i % streams}"}
        delivery = ledger.deliver_to((1_700_000_000_000_000_000 + i, 1), 1, 0.0)
        acc.put_nowait(StreamBatch(labels, [LogEntry(i, line)], delivery))


def test_the_queue_counts_what_queued_reads_keep_alive() -> None:
    acc = accumulator()
    ledger = Ledger((0, 0), lambda _: None, join_window_s=0)  # a delivery per read
    with traced() as grown:
        queue_reads(acc, ledger, streams=2)
    kept = grown[0]
    assert acc.cut_count > 3  # most of it waits compressed
    assert acc.batcher.added_refs == READS
    assert kept <= acc.queued_bytes
    # Without the delivery references the count would fall short of the memory
    # they keep: the check above is what catches it.
    assert kept > acc.queued_bytes - READS * DELIVERY_OVERHEAD_BYTES


def test_reads_joined_in_one_delivery_leave_one_reference_per_batch() -> None:
    acc = accumulator()
    ledger = Ledger((0, 0), lambda _: None)  # one window: every read joins
    with traced() as grown:
        queue_reads(acc, ledger, streams=1)
    assert acc.batcher.added_refs == acc.cut_count + 1  # the open batch holds one
    assert ledger.in_flight == 1
    assert grown[0] <= acc.queued_bytes
