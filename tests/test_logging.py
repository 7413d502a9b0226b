"""LokiHandler: records become labelled lines; emit never blocks; close delivers."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from shipper_helpers import FAST, ThreadedLoki

from minilog.errors import LabelError
from minilog.labels import format_labels
from minilog.logging import LokiHandler


@pytest.fixture
def tloki() -> Iterator[ThreadedLoki]:
    server = ThreadedLoki()
    yield server
    server.close()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("app.test_logging")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def test_records_become_lines_with_labels(
    tloki: ThreadedLoki, logger: logging.Logger
) -> None:
    handler = LokiHandler(
        tloki.stub.push_url,
        labels={"service": "api"},
        label_fields=("levelname", "user"),
        **FAST,
    )
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.warning("disk %d%% full", 91, extra={"user": "alice"})
    logger.info("no user here")
    handler.flush(timeout=10)
    by_line = {e.line: (format_labels(ls), e) for ls, e in tloki.stub.entries}
    labels, entry = by_line["WARNING app.test_logging: disk 91% full"]
    assert labels == '{level="WARNING", service="api", user="alice"}'
    assert abs(entry.timestamp_ns - time.time_ns()) < 10 * 1_000_000_000
    labels, _ = by_line["INFO app.test_logging: no user here"]
    assert labels == '{level="INFO", service="api"}'


def test_timestamp_comes_from_record_created(
    tloki: ThreadedLoki, logger: logging.Logger
) -> None:
    handler = LokiHandler(tloki.stub.push_url, labels={"job": "t"}, **FAST)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "old", (), None)
    record.created = 1_700_000_000.25
    handler.handle(record)
    handler.close()
    ((_, entry),) = tloki.stub.entries
    assert entry.timestamp_ns == 1_700_000_000_250_000_000
    assert entry.line == "old"


def test_emit_never_blocks_and_counts_drops(
    tloki: ThreadedLoki, logger: logging.Logger
) -> None:
    registry = CollectorRegistry()
    tloki.hang()
    handler = LokiHandler(
        tloki.stub.push_url,
        labels={"job": "t"},
        batch_size=1000,
        queue_capacity=1000,
        buffer_bytes=1000,
        registry=registry,
        **FAST,
    )
    logger.addHandler(handler)
    started = time.monotonic()
    for i in range(5000):
        logger.info("message number %06d with some padding", i)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0  # Loki hangs, yet logging went on
    assert handler.dropped > 0
    dropped = registry.get_sample_value(
        "loki_write_dropped_entries_total",
        {
            "host": f"127.0.0.1:{tloki.stub.port}",
            "tenant": "",
            "reason": "queue_is_full",
        },
    )
    assert dropped == handler.dropped
    tloki.resume()
    handler.flush(timeout=10)
    assert len(tloki.stub.entries) + handler.dropped == 5000


def test_minilog_own_records_are_not_shipped(tloki: ThreadedLoki) -> None:
    handler = LokiHandler(tloki.stub.push_url, labels={"job": "t"}, **FAST)
    own = logging.getLogger("minilog.write")
    handler.handle(
        own.makeRecord(own.name, logging.ERROR, __file__, 1, "push failed", (), None)
    )
    app = logging.getLogger("app")
    handler.handle(
        app.makeRecord(app.name, logging.ERROR, __file__, 1, "real", (), None)
    )
    handler.close()
    assert [e.line for _, e in tloki.stub.entries] == ["real"]


def test_label_names_are_checked_at_construction() -> None:
    with pytest.raises(LabelError):
        LokiHandler("http://127.0.0.1:9/x", label_fields={"levelname": "log-level"})
    with pytest.raises(LabelError):
        LokiHandler("http://127.0.0.1:9/x", labels={"bad name": "x"})


def test_close_delivers_everything_buffered(
    tloki: ThreadedLoki, logger: logging.Logger
) -> None:
    handler = LokiHandler(tloki.stub.push_url, labels={"job": "t"}, batch_wait=30.0)
    logger.addHandler(handler)
    for i in range(300):
        logger.error("line %d", i)
    logger.removeHandler(handler)
    handler.close()
    assert [e.line for _, e in tloki.stub.entries] == [f"line {i}" for i in range(300)]


def test_flush_while_loki_is_away_returns_after_the_drain_timeout(
    logger: logging.Logger,
) -> None:
    """``logging.shutdown`` flushes every handler: an outage must not hang it. The
    record is not dropped by the flush; close abandons it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = CollectorRegistry()
    handler = LokiHandler(
        f"http://127.0.0.1:{port}",
        labels={"job": "t"},
        registry=registry,
        drain_timeout=0.2,
        **FAST,
    )
    logger.addHandler(handler)
    logger.warning("kept while Loki is away")
    handler.flush()  # returns (bounded by drain_timeout; a hang fails by timeout)
    dropped = registry.get_sample_value(
        "loki_write_dropped_entries_total",
        {"host": f"127.0.0.1:{port}", "tenant": "", "reason": "drain_timeout"},
    )
    assert not dropped  # flushing gave up waiting, nothing was dropped
    logger.removeHandler(handler)
    handler.close()
    dropped = registry.get_sample_value(
        "loki_write_dropped_entries_total",
        {"host": f"127.0.0.1:{port}", "tenant": "", "reason": "drain_timeout"},
    )
    assert dropped == 1  # abandoned at close, after its drain timeout
