"""Shared helpers of the discovery tests: a scripted Docker API and a recorder of what
discovery publishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

__all__ = ["FakeDocker", "Published"]


class FakeDocker:
    """A DockerAPI whose lists, failures and events a test controls."""

    def __init__(self) -> None:
        self.running: list[dict[str, Any]] = []
        self.all: dict[str, dict[str, Any]] = {}
        self.networks_list: list[dict[str, Any]] = []
        self.fail: BaseException | None = None
        # While set, a list call waits for this event (a daemon that does not answer).
        self.gate: asyncio.Event | None = None
        self.calls: list[tuple[bool, dict[str, list[str]] | None]] = []
        self.list_calls = 0
        self.listed = asyncio.Event()
        self.event_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events_subscribed = asyncio.Event()
        self.events_fail: list[BaseException] = []
        self.subscriptions: list[str | None] = []
        self.closed = False

    def add(self, c: dict[str, Any], *, running: bool = True) -> None:
        self.all[c["Id"]] = c
        if running:
            self.running.append(c)

    def stop(self, cid: str) -> None:
        self.running = [c for c in self.running if c["Id"] != cid]
        self.all[cid]["State"] = "exited"

    async def containers(
        self, *, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        self.list_calls += 1
        self.listed.set()
        self.calls.append((all, {k: list(v) for k, v in (filters or {}).items()}))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        filters = filters or {}
        pool = list(self.all.values()) if all else list(self.running)
        if "id" in filters:
            pool = [c for c in pool if c["Id"] in filters["id"]]
        if "status" in filters:
            pool = [c for c in pool if c["State"] in filters["status"]]
        return pool

    async def networks(self) -> list[dict[str, Any]]:
        return list(self.networks_list)

    async def events(
        self,
        *,
        filters: Mapping[str, Sequence[str]] | None = None,
        since: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        self.subscriptions.append(since)
        self.events_subscribed.set()
        if self.events_fail:
            raise self.events_fail.pop(0)
        while True:
            event = await self.event_queue.get()
            if event.get("end_stream"):
                return
            yield event

    async def aclose(self) -> None:
        self.closed = True

    def emit(self, action: str, cid: str) -> None:
        self.event_queue.put_nowait(
            {
                "Type": "container",
                "Action": action,
                "Actor": {"ID": cid, "Attributes": {}},
            }
        )


class Published:
    """Collects publish() calls; ``wait_for(pred)`` awaits a matching target list."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []
        self._changed = asyncio.Event()

    def __call__(self, targets: list[dict[str, str]]) -> None:
        self.calls.append(targets)
        self._changed.set()

    def ids(self, index: int = -1) -> set[str]:
        return {t["__meta_docker_container_id"] for t in self.calls[index]}

    async def wait_for(self, pred: Any, limit_s: float = 5.0) -> list[dict[str, str]]:
        async with asyncio.timeout(limit_s):
            while True:
                if self.calls and pred(self.calls[-1]):
                    return self.calls[-1]
                self._changed.clear()
                await self._changed.wait()
