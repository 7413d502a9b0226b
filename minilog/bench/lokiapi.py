"""Talking to a running Loki over HTTP: every entry of a query, and its own metrics.

Owns the Loki query boundary of the harness: ``query_range`` paged forward with
:class:`~minilog.bench.counting.PageCursor` (exact: nothing skipped, nothing counted
twice at page borders), and one counter from ``/metrics``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import orjson

from minilog.bench.counting import PageCursor
from minilog.errors import BenchError

__all__ = ["LokiAPI"]

PAGE_LIMIT = 20000  # lokiproc.LIMITS raises max_entries_limit_per_query to this


class LokiAPI:
    def __init__(self, base_url: str, tenant: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-Scope-OrgID": tenant} if tenant else {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=120, connect=5),
                headers=self.headers,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _page(
        self, query: str, start_ns: int, end_ns: int, limit: int
    ) -> list[tuple[int, bytes]]:
        params = {
            "query": query,
            "start": str(start_ns),
            "end": str(end_ns),
            "limit": str(limit),
            "direction": "forward",
        }
        url = self.base_url + "/loki/api/v1/query_range"
        try:
            async with self._client().get(url, params=params) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise BenchError(
                        f"Loki query_range answered {resp.status}: "
                        + raw.decode(errors="replace").strip()
                    )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BenchError(f"Loki at {self.base_url} not reachable: {exc}") from exc
        data = orjson.loads(raw)["data"]
        out = []
        for stream in data["result"]:
            for ts, line in stream["values"]:
                out.append((int(ts), line.encode()))
        return out

    async def entries(
        self, query: str, start_ns: int, end_ns: int, limit: int = PAGE_LIMIT
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Every entry ``query`` matches in ``[start_ns, end_ns]``, oldest first."""
        cursor = PageCursor(start_ns, end_ns, limit)
        while not cursor.done:
            page = await self._page(query, cursor.start_ns, end_ns, cursor.limit)
            for entry in cursor.feed(page):
                yield entry

    async def counter(self, name: str) -> float:
        """The sum of every series of counter ``name`` on ``/metrics``; ``nan`` when
        Loki does not answer."""
        try:
            async with self._client().get(self.base_url + "/metrics") as resp:
                if resp.status != 200:
                    return math.nan
                text = await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return math.nan
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total
