"""The ``loki_write_*`` metrics and minilog's queue gauges.

``WriteMetrics`` registers Alloy's families once on the registry it is given (a
``loki.write`` component keeps one for its life, so a writer rebuilt by a reload and
the old one draining count into the same series, as in Alloy). What Alloy has no
series for (the queue's fill, endpoints past their retries, held streams) is read from
the live endpoints at scrape time, so nothing has to be kept in step.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DROP_REASONS", "EndpointGauges", "QueueSource", "WriteMetrics"]

#: Alloy's drop reasons, pre-initialised per tenant; ``drain_timeout`` is minilog's own
#: (entries still queued when ``aclose`` gave up). Entries Loki refuses for a reason
#: Alloy has no name for are counted under Loki's own discard reason
#: (``greater_than_max_sample_age``, ``too_far_in_future``, ``too_far_behind``, ...;
#: see ``loki.refusals``), created on first use.
DROP_REASONS = (
    "ingester_error",
    "rate_limited",
    "stream_limited",
    "line_too_long",
    "queue_is_full",
    "drain_timeout",
)


class EndpointGauges(Protocol):
    """What the per-host gauges read from one running endpoint."""

    @property
    def host(self) -> str: ...

    @property
    def failing(self) -> bool: ...

    @property
    def pending_entries(self) -> int: ...

    @property
    def held_stream_count(self) -> int: ...


class QueueSource(Protocol):
    """A writer, as the queue gauges see it."""

    def queue_sizes(self) -> Iterable[tuple[str, int, int | None]]:
        """``(host, bytes held, capacity or None once closed)`` per endpoint."""
        ...


class WriteMetrics:
    """The ``loki_write_*`` families, registered once on the given registry, and
    minilog's queue gauges over the writers that count into them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        #: Writers counting into these metrics (a reload's new one and the old one
        #: draining), for the queue gauges read at scrape time.
        self.writers: weakref.WeakSet[QueueSource] = weakref.WeakSet()
        registry.register(_QueueCollector(self.writers))
        ht = ("host", "tenant")
        self.sent_entries = Counter(
            "loki_write_sent_entries",
            "Number of log entries sent to the ingester.",
            ht,
            registry=registry,
        )
        self.sent_bytes = Counter(
            "loki_write_sent_bytes", "Number of bytes sent.", ht, registry=registry
        )
        self.encoded_bytes = Counter(
            "loki_write_encoded_bytes",
            "Number of bytes encoded and ready to send.",
            ("host",),
            registry=registry,
        )
        self.dropped_entries = Counter(
            "loki_write_dropped_entries",
            "Number of log entries dropped because failed to be sent to the ingester "
            "after all retries.",
            (*ht, "reason"),
            registry=registry,
        )
        self.dropped_bytes = Counter(
            "loki_write_dropped_bytes",
            "Number of bytes dropped because failed to be sent to the ingester after "
            "all retries.",
            (*ht, "reason"),
            registry=registry,
        )
        self.batch_retries = Counter(
            "loki_write_batch_retries",
            "Number of times batches have had to be retried.",
            ht,
            registry=registry,
        )
        self.request_duration = Histogram(
            "loki_write_request_duration_seconds",
            "Duration of send requests.",
            ("status_code", *ht),
            registry=registry,
        )
        self.endpoint_failing = Gauge(
            "minilog_write_endpoint_failing",
            "1 while an endpoint has failed max_backoff_retries attempts in a row: its "
            "entries are held and retried, not dropped.",
            ("host",),
            registry=registry,
        )
        self.pending_entries = Gauge(
            "minilog_write_pending_entries",
            "Entries queued for an endpoint and not yet accepted or refused by Loki.",
            ("host",),
            registry=registry,
        )
        self.held_streams = Gauge(
            "minilog_write_held_streams",
            "Streams whose entries Loki refused for now (a 429 naming them), retried "
            "on their own while the other streams go on.",
            ("host",),
            registry=registry,
        )
        self._endpoints: dict[str, set[EndpointGauges]] = {}
        self.request_size = Histogram(
            "loki_write_request_size_bytes",
            "Number of bytes for encoded requests.",
            ht,
            buckets=(
                1 << 10,
                4 << 10,
                16 << 10,
                64 << 10,
                256 << 10,
                1 << 20,
                4 << 20,
                20 << 20,
            ),
            registry=registry,
        )
        self._seen: set[tuple[str, str]] = set()

    def see_tenant(self, host: str, tenant: str) -> None:
        """Pre-initialise the drop counters of a tenant at 0, as Alloy does."""
        if (host, tenant) in self._seen:
            return
        self._seen.add((host, tenant))
        for reason in DROP_REASONS:
            self.dropped_entries.labels(host, tenant, reason)
            self.dropped_bytes.labels(host, tenant, reason)

    def dropped(
        self, host: str, tenant: str, reason: str, entries: int, size: int
    ) -> None:
        self.see_tenant(host, tenant)
        self.dropped_entries.labels(host, tenant, reason).inc(entries)
        self.dropped_bytes.labels(host, tenant, reason).inc(size)

    def sent(self, host: str, tenant: str, entries: int, size: int) -> None:
        self.sent_entries.labels(host, tenant).inc(entries)
        self.sent_bytes.labels(host, tenant).inc(size)

    def track(self, endpoint: EndpointGauges) -> None:
        """Report ``endpoint``'s state in the per-host gauges (read at scrape time)."""
        host = endpoint.host
        live = self._endpoints.get(host)
        if live is None:
            # Writers rebuilt by a reload share a host: the gauges sum them all.
            live = self._endpoints[host] = set()
            self.endpoint_failing.labels(host).set_function(
                lambda: float(any(e.failing for e in list(live)))
            )
            self.pending_entries.labels(host).set_function(
                lambda: float(sum(e.pending_entries for e in list(live)))
            )
            self.held_streams.labels(host).set_function(
                lambda: float(sum(e.held_stream_count for e in list(live)))
            )
        live.add(endpoint)

    def untrack(self, endpoint: EndpointGauges) -> None:
        self._endpoints.get(endpoint.host, set()).discard(endpoint)


class _QueueCollector(Collector):
    """``minilog_write_queue_bytes`` against ``minilog_write_queue_capacity_bytes``
    per ``host``: Alloy has no gauge of its queue, and a queue filling up is what an
    outage looks like before anything is dropped."""

    def __init__(self, writers: weakref.WeakSet[QueueSource]) -> None:
        self._writers = writers

    def describe(self) -> list[Metric]:
        return list(self._families({}, {}))

    def collect(self) -> Iterator[Metric]:
        held: dict[str, int] = {}
        capacity: dict[str, int] = {}
        for writer in list(self._writers):
            for host, queued, limit in writer.queue_sizes():
                held[host] = held.get(host, 0) + queued
                if limit is not None:
                    # A writer draining after a reload holds bytes but no capacity.
                    capacity[host] = capacity.get(host, 0) + limit
        yield from self._families(held, capacity)

    @staticmethod
    def _families(
        held: Mapping[str, int], capacity: Mapping[str, int]
    ) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "minilog_write_queue_bytes",
            "Bytes held in the endpoint's queue (open, ready and in-flight batches), "
            "as counted against queue_config.capacity.",
            labels=["host"],
        )
        for host, value in sorted(held.items()):
            queued.add_metric([host], value)
        limit = GaugeMetricFamily(
            "minilog_write_queue_capacity_bytes",
            "The endpoint's queue_config.capacity: senders wait once the queue holds "
            "this much.",
            labels=["host"],
        )
        for host, value in sorted(capacity.items()):
            limit.add_metric([host], value)
        yield queued
        yield limit
