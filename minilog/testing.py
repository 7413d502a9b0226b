"""Public test doubles for embedders: ``FakeLoki``, a push receiver that records.

``FakeLoki`` is a ``minilog.loki.receiver.PushReceiver`` on 127.0.0.1 that
keeps every accepted entry, judges pushes as Loki 3.6 does (content type, encoding,
labels, status codes), and can be scripted to answer 429/5xx, to hang, or to go down
(``aclose()`` then ``start()`` on the same port).
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from minilog.labels import format_labels
from minilog.loki.receiver import (
    DEFAULT_MAX_RECV_MSG_SIZE,
    TENANT_LABEL,
    Faults,
    PushReceiver,
    RequestLog,
)
from minilog.model import LogEntry, StreamBatch

__all__ = ["FakeLoki", "Faults", "RequestLog"]


class FakeLoki(PushReceiver):
    """A recording Loki stand-in.

    Example::

        async with FakeLoki() as loki:
            ...  # push to loki.push_url
            await loki.wait_for_entries(3)
            assert loki.streams() == {'{job="x"}': [...]}

    ``entries`` lists ``(labels, LogEntry)`` in arrival order (``entry_count`` counts
    them without building that list); labels include ``__tenant_id__`` when the
    request carried ``X-Scope-OrgID``. ``requests`` counts push requests (faulted ones
    too), their statuses, and keeps the last one's headers. ``faults`` scripts
    misbehaviour: ``respond(429, times=2)``, ``hang()``, ``clear()``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry | None = None,
        max_recv_msg_size: int = DEFAULT_MAX_RECV_MSG_SIZE,
        path_prefix: str = "",
    ) -> None:
        super().__init__(
            self._record,
            host=host,
            port=port,
            registry=registry,
            max_recv_msg_size=max_recv_msg_size,
            path_prefix=path_prefix,
        )
        # Batches are kept as they came and flattened on demand: one tuple per entry
        # fewer on the receiving path, which benchmarks drive hard.
        self._batches: list[StreamBatch] = []
        self._flat: list[tuple[dict[str, str], LogEntry]] = []
        self._flat_batches = 0
        self.entry_count = 0
        self._changed: asyncio.Condition | None = None

    async def __aenter__(self) -> FakeLoki:
        await self.start()
        return self

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        condition = self._condition()
        async with condition:
            condition.notify_all()

    @property
    def entries(self) -> list[tuple[dict[str, str], LogEntry]]:
        """Every recorded ``(labels, entry)``, in arrival order."""
        flat, batches = self._flat, self._batches
        for batch in batches[self._flat_batches :]:
            labels = batch.labels
            flat.extend([(labels, entry) for entry in batch.entries])
        self._flat_batches = len(batches)
        return flat

    async def _record(self, batches: list[StreamBatch]) -> None:
        self._batches.extend(batches)
        self.entry_count += sum(len(batch.entries) for batch in batches)
        await self._notify()

    async def _on_request(self) -> None:
        await self._notify()

    def streams(self, *, tenant: str | None = None) -> dict[str, list[LogEntry]]:
        """Entries grouped by canonical label text (``__tenant_id__`` left out).

        With ``tenant``, only the entries pushed with that ``X-Scope-OrgID``.
        """
        out: dict[str, list[LogEntry]] = {}
        for labels, entry in self.entries:
            if tenant is not None and labels.get(TENANT_LABEL) != tenant:
                continue
            visible = {k: v for k, v in labels.items() if k != TENANT_LABEL}
            out.setdefault(format_labels(visible), []).append(entry)
        return out

    def lines(self) -> list[str]:
        """Every recorded line, in arrival order."""
        return [entry.line for _, entry in self.entries]

    def reset(self) -> None:
        """Forget recorded entries and request statistics (faults stay)."""
        self._batches = []
        self._flat = []
        self._flat_batches = 0
        self.entry_count = 0
        self.requests = RequestLog()

    # A timeout argument (not only asyncio.timeout around the call) keeps test code
    # short: a forgotten wait must fail the test, never hang it until pytest-timeout.
    async def wait_for_entries(self, n: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` entries were recorded; ``TimeoutError`` after."""
        condition = self._condition()
        async with asyncio.timeout(timeout), condition:
            await condition.wait_for(lambda: self.entry_count >= n)

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` push requests arrived (answered or not)."""
        condition = self._condition()
        async with asyncio.timeout(timeout), condition:
            await condition.wait_for(lambda: self.requests.count >= n)
