"""``LokiHandler``: a stdlib ``logging`` handler that ships records to Loki.

Owns the mapping of a ``LogRecord`` to labels, line and timestamp. Delivery is
``shipper.SyncShipper``'s: ``emit`` never blocks the logging thread (a full buffer drops
the record and counts it as ``queue_is_full``); ``flush``/``close`` deliver what is
buffered.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from minilog.errors import WouldBlockError
from minilog.labels import validate_label_name
from minilog.shipper import SyncShipper

__all__ = ["DEFAULT_FIELD_LABELS", "LokiHandler"]

#: Label names for well-known record attributes listed in ``label_fields``; any other
#: attribute (``extra={...}`` included) keeps its own name.
DEFAULT_FIELD_LABELS: Mapping[str, str] = {
    "levelname": "level",
    "name": "logger",
    "module": "module",
    "funcName": "function",
    "threadName": "thread",
    "processName": "process",
}


class LokiHandler(logging.Handler):
    """Send log records to Loki without ever blocking the code that logs.

    ::

        handler = LokiHandler("http://loki:3100", labels={"service": "api"},
                              label_fields=("levelname",))
        logging.getLogger().addHandler(handler)

    Args:
        url: Loki's base URL or full push URL.
        labels: constant stream labels.
        label_fields: record attributes that become labels: a sequence of attribute
            names (``levelname`` becomes ``level``, ``name`` becomes ``logger``, others
            keep their name) or a mapping ``{attribute: label}``. A record without the
            attribute simply lacks the label.
        level: the handler's level.
        shipper: an existing ``SyncShipper`` to use (the handler then does not close
            it); otherwise one is created with ``options`` (``SyncShipper``'s keywords).

    Records from ``minilog``'s own loggers are not shipped: an error about pushing must
    not feed the push path it is about.
    """

    def __init__(
        self,
        url: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        label_fields: Sequence[str] | Mapping[str, str] = (),
        level: int | str = logging.NOTSET,
        shipper: SyncShipper | None = None,
        **options: Any,
    ) -> None:
        super().__init__(level)
        if isinstance(label_fields, Mapping):
            fields = dict(label_fields)
        else:
            fields = {
                name: DEFAULT_FIELD_LABELS.get(name, name) for name in label_fields
            }
        for name in (*(labels or {}), *fields.values()):
            validate_label_name(name)
        self._fields = tuple(fields.items())
        self._owns_shipper = shipper is None
        if shipper is None:
            if not url:
                raise ValueError("LokiHandler needs a url or a shipper")
            shipper = SyncShipper(url, labels=labels, **options)
            self._labels: dict[str, str] = {}
        else:
            self._labels = dict(labels or {})
        self.shipper = shipper
        self.dropped = 0

    def _record_labels(self, record: logging.LogRecord) -> dict[str, str]:
        labels = dict(self._labels)
        attributes = record.__dict__
        for attribute, label in self._fields:
            value = attributes.get(attribute)
            if value is not None:
                labels[label] = str(value)
        return labels

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "minilog" or record.name.startswith("minilog."):
            return
        try:
            line = self.format(record)
            labels = self._record_labels(record) if self._fields else self._labels
            # ``created`` is a float of time.time(), good to about a microsecond:
            # rounding there avoids binary-fraction noise such as ...249999872 ns.
            self.shipper.send_nowait(
                labels, line, timestamp_ns=round(record.created * 1_000_000) * 1000
            )
        except WouldBlockError:
            # Counted by the shipper (queue_is_full); logging must never wait for Loki.
            self.dropped += 1
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - the logging contract: report, never raise
            self.handleError(record)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record emitted so far was delivered (or refused for
        good), at most ``timeout`` seconds (default: the shipper's ``drain_timeout``).

        Loki being away never blocks logging for longer (``logging.shutdown`` flushes
        every handler): the records stay queued for ``close`` to deliver or abandon.
        """
        if self.shipper.closed:
            return
        if timeout is None:
            timeout = self.shipper.drain_timeout
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.shipper.flush(timeout)

    def close(self) -> None:
        """Deliver what is buffered and stop the shipper (if this handler created
        it)."""
        try:
            if self._owns_shipper:
                self.shipper.close()
            else:
                self.flush()
        finally:
            super().close()
