"""A fake Docker Engine on a unix socket, for health tests: answers, or hangs.

It serves the few calls an agent with no containers makes (``/_ping``, ``/version``,
an empty container and network list, an ``/events`` stream that stays open) and can be
told to stop answering (``hang()``: requests are accepted and never answered until
``answer()``), so a daemon that is missing, not permitted, hung or back can be played.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from aiohttp import web

__all__ = ["FakeDockerEngine"]


class FakeDockerEngine:
    """``await start()`` creates the socket at ``path``, ``await aclose()`` removes
    it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[str] = []
        self._answer = asyncio.Event()
        self._answer.set()
        self._runner: web.AppRunner | None = None
        self._closed = asyncio.Event()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def hang(self) -> None:
        """Accept requests and leave them unanswered."""
        self._answer.clear()

    def answer(self) -> None:
        """Answer again, the waiting requests first."""
        self._answer.set()

    async def start(self, mode: int = 0o666) -> None:
        app = web.Application()
        app.router.add_get("/_ping", self._ping)
        app.router.add_get("/version", self._version)
        app.router.add_get("/{version}/containers/json", self._empty_list)
        app.router.add_get("/{version}/networks", self._empty_list)
        app.router.add_get("/{version}/events", self._events)
        app.router.add_get("/{version}/containers/{id}/json", self._no_container)
        self._closed.clear()
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.1
        )
        await runner.setup()
        await web.UnixSite(runner, str(self.path)).start()
        os.chmod(self.path, mode)
        self._runner = runner

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        self._closed.set()
        # Requests left hanging are cut off (cancelled at cleanup), not answered: the
        # daemon went away under them.
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _gate(self, request: web.Request) -> None:
        self.requests.append(request.path)
        await self._answer.wait()

    async def _ping(self, request: web.Request) -> web.Response:
        await self._gate(request)
        return web.Response(text="OK")

    async def _version(self, request: web.Request) -> web.Response:
        await self._gate(request)
        return web.json_response({"ApiVersion": "1.45", "Version": "fake"})

    async def _empty_list(self, request: web.Request) -> web.Response:
        await self._gate(request)
        return web.json_response([])

    async def _no_container(self, request: web.Request) -> web.Response:
        await self._gate(request)
        return web.json_response({"message": "No such container"}, status=404)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        await self._gate(request)
        response = web.StreamResponse()
        await response.prepare(request)
        await self._closed.wait()
        return response
