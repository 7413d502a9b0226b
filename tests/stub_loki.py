"""``StubLoki``: a scriptable push endpoint for the writer's tests.

Records every decoded push, answers scripted statuses (with bodies and headers such as
``Retry-After``), lets a ``judge`` answer as Loki does for a push it takes only in part
(storing the streams it accepts), hangs on demand, and serves ``GET /ready`` with a
scriptable status. ``events`` keeps the order of pushes and probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from minilog.loki.wire import decode_push_request, decompress
from minilog.model import LogEntry

__all__ = ["Answer", "Judge", "Scripted", "Streams", "StubLoki"]

Streams = list[tuple[str, list[LogEntry]]]


@dataclass
class Answer:
    """What a judge answers: the status, body and headers, and what was stored."""

    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    stored: Streams = field(default_factory=list)


#: Called with each push's streams; ``None`` stores everything and answers 204.
Judge = Callable[[Streams], "Answer | None"]
#: A scripted answer: ``(status, body)`` or ``(status, body, headers)``.
Scripted = tuple[int, bytes] | tuple[int, bytes, Mapping[str, str]]


class StubLoki:
    """A recording push endpoint: decodes bodies, answers scripted statuses, hangs."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Streams]] = []
        self.entries: list[tuple[str, LogEntry]] = []
        self.statuses: list[Scripted] = []
        self.judge: Judge | None = None
        #: Status of ``GET /ready``; and of an empty push (a probe behind a gateway).
        self.ready_status = 200
        self.empty_push_status = 422
        #: "push", "ready" or "empty-push", in arrival order.
        self.events: list[str] = []
        self.open = asyncio.Event()
        self.open.set()
        self.arrived = asyncio.Event()
        self.changed = asyncio.Event()
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        streams = decode_push_request(decompress(await request.read()))
        if not streams:
            self.events.append("empty-push")
            self.changed.set()
            return web.Response(status=self.empty_push_status)
        self.requests.append((dict(request.headers), streams))
        self.events.append("push")
        self.arrived.set()
        await self.open.wait()
        if self.statuses:
            scripted = self.statuses.pop(0)
            headers = scripted[2] if len(scripted) > 2 else {}  # type: ignore[misc]
            self.changed.set()
            return web.Response(
                status=scripted[0], body=scripted[1], headers=dict(headers)
            )
        if self.judge is not None:
            answer = self.judge(streams)
            if answer is not None:
                self._store(answer.stored)
                self.changed.set()
                return web.Response(
                    status=answer.status,
                    text=answer.body,
                    headers=dict(answer.headers),
                )
        self._store(streams)
        self.changed.set()
        return web.Response(status=204)

    def _store(self, streams: Streams) -> None:
        self.entries.extend((labels, e) for labels, entries in streams for e in entries)

    async def ready(self, request: web.Request) -> web.Response:
        self.events.append("ready")
        self.changed.set()
        return web.Response(status=self.ready_status, text="ready\n")

    def lines(self, labels: str | None = None) -> list[str]:
        return [e.line for key, e in self.entries if labels is None or key == labels]

    async def start(self, port: int = 0, prefix: str = "") -> None:
        app = web.Application()
        app.router.add_post(prefix + "/loki/api/v1/push", self.handle)
        app.router.add_get(prefix + "/ready", self.ready)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}{prefix}/loki/api/v1/push"

    async def aclose(self) -> None:
        self.open.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(
        self, predicate: Callable[[], bool], within: float = 5.0
    ) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def wait_for_entries(self, n: int, within: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.entries) >= n, within)

    async def wait_for_requests(self, n: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while len(self.requests) < n:
                self.arrived.clear()
                await self.arrived.wait()
