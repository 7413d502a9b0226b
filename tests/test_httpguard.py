"""Connection caps and deadlines of minilog's HTTP servers (``_httpguard``), and the
agent's own server under slow and piled-up clients."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from minilog._httpguard import (
    AUTO_CONN_LIMIT,
    FD_RESERVE,
    ConnectionGuard,
    GuardedServer,
    ServerLimits,
    connection_headroom,
)
from minilog.agent.server import AgentServer

__all__: list[str] = []


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll server state that offers no event (connection counts) until true."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.01)


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    data = b""
    async with asyncio.timeout(timeout_s):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


class QuietAgent:
    """The little an ``AgentServer`` reads from an agent."""

    ready = True
    registry = CollectorRegistry()

    def unhealthy_components(self) -> list[str]:
        return []

    def components_info(self) -> list[dict[str, Any]]:
        return []

    async def reload(self) -> None:
        return None


def test_limits_default_to_alloys_http_block() -> None:
    limits = ServerLimits()
    assert (limits.read_timeout_s, limits.write_timeout_s, limits.idle_timeout_s) == (
        30.0,
        30.0,
        120.0,
    )
    assert limits.conn_limit == 0
    assert ServerLimits(idle_timeout_s=0, read_timeout_s=7).idle_s == 7
    with pytest.raises(ValueError, match="read_timeout_s"):
        ServerLimits(read_timeout_s=-1)


@pytest.fixture
def soft_nofile() -> Iterator[Callable[[int], None]]:
    """Lower this process's soft file limit for a test; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield lower
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_cap_keeps_a_reserve_of_file_descriptors(
    soft_nofile: Callable[[int], None],
) -> None:
    soft_nofile(1024)
    assert connection_headroom() == 1024 - FD_RESERVE
    # Half the headroom per server, so two servers cannot starve each other.
    assert ServerLimits().effective_conn_limit() == (1024 - FD_RESERVE) // 2
    assert ServerLimits(conn_limit=100).effective_conn_limit() == 100
    soft_nofile(4096)
    assert ServerLimits().effective_conn_limit() == AUTO_CONN_LIMIT


async def test_past_the_fd_headroom_connections_wait_to_be_accepted(
    soft_nofile: Callable[[int], None],
) -> None:
    """Under a 300-descriptor limit a server holds at most (300 - reserve) / 2
    connections; the next waits in the listen backlog (as behind Go's
    LimitListener) and is served once one closes."""
    soft_nofile(300)
    cap = ServerLimits().effective_conn_limit()
    assert cap == (300 - FD_RESERVE) // 2
    server = AgentServer(QuietAgent(), host="127.0.0.1", port=0)
    await server.start()
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(cap):
            held.append(await asyncio.open_connection("127.0.0.1", server.port))  # noqa: PERF401
        await wait_for(lambda: server.connections.open == cap)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = asyncio.create_task(closed_by_server(reader, 10))
        await wait_for(lambda: server.connections.paused)
        assert not answer.done()
        assert server.connections.open == cap
        held.pop()[1].close()
        assert (await answer).startswith(b"HTTP/1.1 200 OK\r\n")
        writer.close()
        assert server.connections.limited >= 1
    finally:
        for _, w in held:
            w.close()
        await server.aclose()


async def test_the_agent_server_closes_slowloris_and_keeps_answering() -> None:
    limits = ServerLimits(read_timeout_s=0.3, conn_limit=20)
    server = AgentServer(QuietAgent(), host="127.0.0.1", port=0, limits=limits)
    await server.start()
    try:
        slow = [
            await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)
        ]
        for _, writer in slow:
            writer.write(b"GET /-/healthy HTTP/1.1\r\nHo")
        # All 20 slots are taken by clients that never finish their headers.
        await wait_for(lambda: server.connections.open == 20)
        results = await asyncio.gather(
            *(closed_by_server(reader, 10) for reader, _ in slow)
        )
        assert results == [b""] * 20  # cut by the read deadline, nothing answered
        assert server.connections.timed_out["read"] == 20
        # The deadline freed the slots: the agent answers again.
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.url + "/-/healthy") as resp,
        ):
            assert resp.status == 200
    finally:
        for _, writer in slow:
            writer.close()
        await server.aclose()


async def test_a_response_the_client_does_not_take_is_cut_at_the_write_timeout() -> (
    None
):
    big = b"m" * (64 << 20)  # more than the socket buffers on both sides hold

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=big)

    guard = ConnectionGuard(ServerLimits(write_timeout_s=0.3))
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/huge", huge)
    server = GuardedServer(app, guard)
    await server.start("127.0.0.1", 0)
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: the response stays in the server's buffer until the deadline.
        await wait_for(lambda: guard.timed_out["write"] == 1)
        await wait_for(lambda: guard.open == 0)
        writer.close()
    finally:
        await server.aclose()


async def test_a_keep_alive_client_reuses_its_connection_within_the_idle_timeout() -> (
    None
):
    limits = ServerLimits(idle_timeout_s=5, read_timeout_s=5)
    server = AgentServer(QuietAgent(), host="127.0.0.1", port=0, limits=limits)
    await server.start()
    try:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(5):
                async with session.get(server.url + "/-/ready") as resp:
                    assert resp.status == 200
                    await resp.read()
            assert server.connections.open == 1
    finally:
        await server.aclose()
