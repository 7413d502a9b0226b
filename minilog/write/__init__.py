"""``loki.write``: the path from a ``StreamBatch`` to Loki, split as aiokafka splits its
producer.

- ``config``: ``EndpointConfig``, Alloy's ``endpoint`` arguments and the one home of
  their defaults;
- ``batch``: pure batching (``Batch``, ``Batcher``);
- ``accumulator``: one endpoint's bounded queue: byte budget, encode-on-fill,
  compaction, held streams; producers wait here;
- ``sender``: one endpoint's task: the retry loop, backoff, probes, what Loki refused,
  drain; its failure fails the waiting producers;
- ``writer``: ``Writer``, the fan-out ``LogsReceiver`` over endpoints;
- ``metrics``: the ``loki_write_*`` families.
"""

from __future__ import annotations

from minilog.write.accumulator import DELIVERY_OVERHEAD_BYTES, ENTRY_OVERHEAD_BYTES
from minilog.write.config import EndpointConfig
from minilog.write.metrics import DROP_REASONS, WriteMetrics
from minilog.write.sender import PROBE_INTERVAL_S, RATE_LIMITED_MAX_DELAY_S
from minilog.write.writer import TransportFactory, Writer

__all__ = [
    "DELIVERY_OVERHEAD_BYTES",
    "DROP_REASONS",
    "ENTRY_OVERHEAD_BYTES",
    "PROBE_INTERVAL_S",
    "RATE_LIMITED_MAX_DELAY_S",
    "EndpointConfig",
    "TransportFactory",
    "WriteMetrics",
    "Writer",
]
