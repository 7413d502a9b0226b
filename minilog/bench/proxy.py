"""The fault proxy in front of Loki, which also records what Loki acknowledged.

Owns the harness's HTTP server. The agent under test pushes to the proxy; the proxy
forwards to Loki and keeps, on disk, every push body Loki answered 2xx with the moment
it answered. Reading those bodies after the run gives, per generator line, when Loki
acknowledged it and how many times (``recorded``): lines sent twice, latency and
throughput over time, exactly and without touching the agent.

Modes, switched while it runs:

- ``pass``: forward everything.
- ``throttle``: answer pushes 429 with ``Retry-After`` (other requests, such as an
  agent's readiness probe, are forwarded: Loki is up, only refusing).
- ``slow``: forward everything and hold every answer ``delay_s`` before giving it.
- ``sink``: answer pushes 204 without Loki (pure agent-cost runs); other paths 200.
- :meth:`FaultProxy.go_down` closes the listener and every connection (an outage looks
  like one: connection refused); :meth:`FaultProxy.come_back` listens again on the same
  port.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import aiohttp
from aiohttp import web

from minilog.bench.lokiproc import free_port
from minilog.bench.wire import count_marker
from minilog.errors import BenchError

__all__ = ["FaultProxy", "Mode", "recorded"]

Mode = Literal["pass", "throttle", "slow", "sink"]
_PUSH_PATHS = ("/loki/api/v1/push", "/api/prom/push")
_HOP_HEADERS = frozenset(
    ("host", "content-length", "transfer-encoding", "connection", "keep-alive")
)
_HEADER = struct.Struct(
    "<qHHI"
)  # ack wall ns, content-type len, encoding len, body len


class FaultProxy:
    def __init__(self, upstream: str | None, record_path: Path) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.mode: Mode = "pass" if upstream else "sink"
        self.delay_s = 2.0
        self.retry_after_s = 2
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.push_url = self.url + "/loki/api/v1/push"
        self.record_path = record_path
        self._record = record_path.open("ab")
        self.statuses: Counter[int] = Counter()
        #: (wall ns answered, status) of every push, for the plots.
        self.pushes: list[tuple[int, int]] = []
        self.acked_bytes = 0
        self.acked_lines = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.down = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60, connect=5),
            auto_decompress=False,
        )
        await self._listen()

    async def _listen(self) -> None:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.down = False

    async def go_down(self) -> None:
        """Refuse connections from now on, and cut the open ones."""
        self.down = True
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def come_back(self) -> None:
        await self._listen()

    async def aclose(self) -> None:
        await self.go_down()
        if self._session is not None:
            await self._session.close()
        self._record.close()

    def _keep(self, body: bytes, content_type: str, encoding: str) -> None:
        ct = content_type.encode()
        ce = encoding.encode()
        self._record.write(_HEADER.pack(time.time_ns(), len(ct), len(ce), len(body)))
        self._record.write(ct + ce + body)
        self.acked_bytes += len(body)
        # Every generator line holds "seq" once: a cheap live count (C-speed), for
        # progress and for knowing when to stop waiting. The exact figures come later.
        with contextlib.suppress(BenchError):
            self.acked_lines += count_marker(body, content_type, encoding, b"seq")

    def flush(self) -> None:
        self._record.flush()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        is_push = request.method == "POST" and request.path in _PUSH_PATHS
        content_type = request.headers.get("Content-Type", "")
        encoding = request.headers.get("Content-Encoding", "")
        if is_push and self.mode == "throttle":
            return self._answer(
                web.Response(
                    status=429,
                    text="Ingestion rate limit exceeded (minilog bench fault proxy)\n",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            )
        if self.mode == "sink" or self.upstream is None:
            if is_push:
                self._keep(body, content_type, encoding)
                return self._answer(web.Response(status=204))
            return web.Response(status=200, text="ready\n")
        assert self._session is not None
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS
        }
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                data=body,
                headers=headers,
            ) as upstream:
                answer = await upstream.read()
                status = upstream.status
                out_headers = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "retry-after", "content-encoding")
                }
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status, answer, out_headers = 502, f"proxy: {exc}\n".encode(), {}
        if is_push and 200 <= status < 300:
            # Loki holds these entries whether or not the agent hears the answer.
            self._keep(body, content_type, encoding)
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        response = web.Response(status=status, body=answer, headers=out_headers)
        return self._answer(response) if is_push else response

    def _answer(self, response: web.Response) -> web.Response:
        self.statuses[response.status] += 1
        self.pushes.append((time.time_ns(), response.status))
        return response


def recorded(path: Path) -> Iterator[tuple[int, bytes, str, str]]:
    """``(ack wall ns, body, content type, content encoding)`` of each kept push."""
    with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
        while True:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return
            ack_ns, ct_len, ce_len, body_len = _HEADER.unpack(head)
            ct = f.read(ct_len).decode()
            ce = f.read(ce_len).decode()
            body = f.read(body_len)
            yield ack_ns, body, ct, ce
