"""Public test doubles for embedders: ``FakeLoki``, a push receiver that records.

``FakeLoki`` is a ``minilog.loki.receiver.PushReceiver`` on 127.0.0.1 that keeps every
accepted entry, judges pushes as Loki 3.6 does (content type, encoding, labels, status
codes), and can be scripted: ``faults`` answers 429/5xx (with headers such as
``Retry-After``), hangs, or sets the ``/ready`` status; a ``judge`` answers for Loki
when it takes a push only in part; ``aclose()`` then ``start()`` on the same port is an
outage.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from minilog.labels import TENANT_LABEL, format_labels, public_labels
from minilog.loki import receiver
from minilog.loki.pushrequest import DEFAULT_MAX_RECV_MSG_SIZE
from minilog.loki.receiver import Faults, PushReceiver, RequestLog
from minilog.model import LogEntry, StreamBatch

__all__ = ["Answer", "FakeLoki", "Faults", "Judge", "Push", "RequestLog", "Streams"]

#: Streams as Loki identifies them: the canonical label text (without the tenant)
#: and the entries, in request order.
Streams = list[tuple[str, list[LogEntry]]]


@dataclass(frozen=True, slots=True)
class Answer(receiver.Answer):
    """What a judge answers for Loki: status, body and headers, and which of the
    pushed streams it stored (Loki stores the valid part of a push it refuses)."""

    stored: Sequence[tuple[str, Sequence[LogEntry]]] = field(default_factory=list)


#: Called with each push's streams (after Loki's own checks); ``None`` stores them
#: all and answers 204.
Judge = Callable[[Streams], "Answer | None"]


class Push(NamedTuple):
    """One push request as it arrived: its headers and the streams it carried (empty
    when a fault answered it before it was read)."""

    headers: Mapping[str, str]
    streams: Streams


# The push request being handled, so that the handler can note its streams.
_CURRENT: contextvars.ContextVar[Push | None] = contextvars.ContextVar(
    "minilog_fake_loki_push", default=None
)


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
    too), their statuses, and keeps the last one's headers; ``pushes`` keeps every
    push's headers and streams (faulted ones have none), ``events`` the order of
    pushes (``push``, or ``empty-push`` for the writer's probe behind a gateway,
    which is not in ``pushes``) and ``/ready`` probes (``ready``). ``faults`` scripts
    misbehaviour: ``respond(429, times=2, headers={"Retry-After": "1"})``,
    ``hang()``, ``ready_status = 503``, ``clear()``; ``judge`` answers for Loki per
    push.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry | None = None,
        max_recv_msg_size: int = DEFAULT_MAX_RECV_MSG_SIZE,
        path_prefix: str = "",
        judge: Judge | None = None,
    ) -> None:
        super().__init__(
            self._record,
            host=host,
            port=port,
            registry=registry,
            max_recv_msg_size=max_recv_msg_size,
            path_prefix=path_prefix,
        )
        #: Answers for Loki per push; ``None``: store everything.
        self.judge = judge
        # Batches are kept as they came and flattened on demand: one tuple per entry
        # fewer on the receiving path, which benchmarks drive hard.
        self._batches: list[StreamBatch] = []
        self._flat: list[tuple[dict[str, str], LogEntry]] = []
        self._flat_batches = 0
        self.entry_count = 0
        self.pushes: list[Push] = []
        self.events: list[str] = []
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

    async def on_request(self, request: web.Request) -> None:
        # An empty push request is one byte of snappy: the writer's probe.
        if request.content_length == 1:
            self.events.append("empty-push")
        else:
            self.events.append("push")
            push = Push(CIMultiDict(request.headers), [])
            self.pushes.append(push)
            _CURRENT.set(push)
        await self._notify()

    async def on_ready(self) -> None:
        self.events.append("ready")
        await self._notify()

    async def _record(self, batches: list[StreamBatch]) -> Answer | None:
        streams: Streams = []
        by_key: dict[str, StreamBatch] = {}
        for batch in batches:
            key = format_labels(
                {k: v for k, v in batch.labels.items() if k != TENANT_LABEL}
            )
            streams.append((key, batch.entries))
            by_key[key] = batch
        push = _CURRENT.get()
        if push is not None:
            push.streams.extend(streams)
        answer = None if self.judge is None else self.judge(streams)
        if answer is not None:
            batches = [
                StreamBatch(by_key[key].labels, list(entries))
                for key, entries in answer.stored
                if entries
            ]
        self._batches.extend(batches)
        self.entry_count += sum(len(batch.entries) for batch in batches)
        await self._notify()
        return answer

    def streams(self, *, tenant: str | None = None) -> dict[str, list[LogEntry]]:
        """Entries grouped by canonical label text (``__tenant_id__`` left out).

        With ``tenant``, only the entries pushed with that ``X-Scope-OrgID``.
        """
        out: dict[str, list[LogEntry]] = {}
        for labels, entry in self.entries:
            if tenant is not None and labels.get(TENANT_LABEL) != tenant:
                continue
            out.setdefault(format_labels(public_labels(labels)), []).append(entry)
        return out

    def lines(self, stream: str | None = None) -> list[str]:
        """Every recorded line, in arrival order; with ``stream`` (canonical label
        text), only that stream's."""
        if stream is None:
            return [entry.line for _, entry in self.entries]
        return [entry.line for entry in self.streams().get(stream, [])]

    def reset(self) -> None:
        """Forget recorded entries, pushes, events and request statistics (faults
        stay)."""
        self._batches = []
        self._flat = []
        self._flat_batches = 0
        self.entry_count = 0
        self.pushes = []
        self.events = []
        self.requests = RequestLog()

    # A timeout argument (not only asyncio.timeout around the call) keeps test code
    # short: a forgotten wait must fail the test, never hang it until pytest-timeout.
    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until ``predicate()`` holds, checked whenever a request, a probe or an
        entry arrives; ``TimeoutError`` after ``timeout`` seconds."""
        condition = self._condition()
        async with asyncio.timeout(timeout), condition:
            await condition.wait_for(predicate)

    async def wait_for_entries(self, n: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` entries were recorded; ``TimeoutError`` after."""
        await self.wait_for(lambda: self.entry_count >= n, timeout)

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` push requests arrived (answered or not)."""
        await self.wait_for(lambda: self.requests.count >= n, timeout)
