"""minilog: a Loki-compatible log pipeline.

The embeddable API lives here: ``Shipper`` (asyncio) and ``SyncShipper`` (threads)
push your own logs to Loki; ``minilog.logging.LokiHandler`` plugs into the standard
``logging`` module; ``minilog.testing.FakeLoki`` stands in for Loki in your tests. The
agent that replaces Grafana Alloy is the ``minilog`` command (``minilog run``).
"""

from __future__ import annotations

from minilog.errors import (
    BrokenError,
    ClientRequestError,
    ClosedError,
    ConfigError,
    DecodeError,
    Diagnostic,
    DockerError,
    DockerUnavailableError,
    LabelError,
    MinilogError,
    PushConnectionError,
    PushError,
    RateLimitedError,
    ServerError,
    WouldBlockError,
)
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.shipper import Shipper, SyncShipper

__version__ = "0.1.0"

__all__ = [
    "BrokenError",
    "ClientRequestError",
    "ClosedError",
    "ConfigError",
    "DecodeError",
    "Delivery",
    "Diagnostic",
    "DockerError",
    "DockerUnavailableError",
    "LabelError",
    "LogEntry",
    "MinilogError",
    "PushConnectionError",
    "PushError",
    "RateLimitedError",
    "ServerError",
    "Shipper",
    "StreamBatch",
    "SyncShipper",
    "WouldBlockError",
    "__version__",
]
