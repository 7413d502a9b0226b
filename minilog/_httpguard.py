"""Connection limits and deadlines for minilog's aiohttp servers.

aiohttp has no header or body read timeout and no connection cap, so one slow client
per connection can hold a file descriptor forever (slowloris). This module puts Go
``http.Server``'s deadlines, as Alloy's ``http`` block configures them, and a
connection cap in front of an aiohttp ``web.Server`` using public APIs only: its own
accept loop (``loop.sock_accept`` and ``loop.connect_accepted_socket``), which stops
accepting at the cap as Go's ``netutil.LimitListener`` does, an ``asyncio.Protocol``
that wraps the protocol aiohttp's low-level server makes, an aiohttp middleware that
marks where each request is, and a watchdog task. It owns no routes; ``loki.receiver``
and ``agent.server`` build their applications and serve them here.

asyncio's own accept loop (``loop.create_server``) is not used: it accepts up to its
backlog of sockets per event before any can be refused, and on ``EMFILE`` it logs and
reschedules once per remaining backlog slot (CPython 3.11), the flood of identical
``accept()`` errors that an fd-exhausted agent wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiohttp import web

from minilog.backoff import Backoff

__all__ = [
    "AUTO_CONN_LIMIT",
    "DEFAULT_SERVER_IDLE_TIMEOUT",
    "DEFAULT_SERVER_READ_TIMEOUT",
    "DEFAULT_SERVER_WRITE_TIMEOUT",
    "FD_RESERVE",
    "ConnectionGuard",
    "GuardedServer",
    "ServerLimits",
    "bind",
    "connection_headroom",
    "raise_nofile_limit",
]

#: Alloy's ``http`` block defaults (``internal/component/common/net``, seconds).
DEFAULT_SERVER_READ_TIMEOUT = 30.0
DEFAULT_SERVER_WRITE_TIMEOUT = 30.0
DEFAULT_SERVER_IDLE_TIMEOUT = 120.0
#: Connections one server keeps open when ``conn_limit`` is 0 (Alloy: no limit).
AUTO_CONN_LIMIT = 512
#: File descriptors no server connection may take: the Docker socket (one per tailed
#: container), positions files, pushes to Loki and the process's own files need them.
FD_RESERVE = 256

_log = logging.getLogger(__name__)
# listen() backlog, as Go asks (the kernel caps it at net.core.somaxconn): connections
# past the cap wait there, costing the process no descriptor.
_BACKLOG = 4096
# Go's http.Server backs off from 5 ms to 1 s between failed accepts (EMFILE).
_ACCEPT_RETRY_MIN_S = 0.005
_ACCEPT_RETRY_MAX_S = 1.0
# While the process-wide headroom (not this server's cap) is what is full, another
# server's close is what frees it: checked this often.
_HEADROOM_POLL_S = 0.05

# Every guarded connection in this process, across servers: together they stay below
# the file-descriptor limit minus the reserve.
_open_in_process = 0


def raise_nofile_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one, as Go's runtime does for
    Alloy at start-up. Best effort: an unchangeable limit stays as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connection_headroom() -> int:
    """How many server connections the process may hold: the soft ``RLIMIT_NOFILE``
    less :data:`FD_RESERVE`, but at least a handful so a tiny limit still serves."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, soft - FD_RESERVE)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Alloy's ``http`` block limits, in seconds; 0 disables a timeout as in Go.

    ``read_timeout_s`` (``server_read_timeout``) bounds reading a whole request,
    headers and body, from its first byte (from the accept for a connection's first
    request); it is also the header timeout, as dskit leaves Go's
    ``ReadHeaderTimeout`` at 0. ``write_timeout_s`` (``server_write_timeout``) bounds
    how long a finished response may wait for the client to take it. Go counts the
    handler's time too, but a push handler waits on downstream backpressure, and
    cutting it would make the client resend entries already forwarded.
    ``idle_timeout_s`` (``server_idle_timeout``; 0 means the read timeout, as in Go)
    closes a kept-alive connection that sends no new request. ``conn_limit`` caps the
    server's open connections; 0 means :data:`AUTO_CONN_LIMIT` (Alloy: unlimited).
    Every server is also held to a share of the process's file descriptors (see
    :func:`connection_headroom`).
    """

    read_timeout_s: float = DEFAULT_SERVER_READ_TIMEOUT
    write_timeout_s: float = DEFAULT_SERVER_WRITE_TIMEOUT
    idle_timeout_s: float = DEFAULT_SERVER_IDLE_TIMEOUT
    conn_limit: int = 0

    def __post_init__(self) -> None:
        for name in ("read_timeout_s", "write_timeout_s", "idle_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.conn_limit < 0:
            raise ValueError("conn_limit must not be negative")

    @property
    def idle_s(self) -> float:
        return self.idle_timeout_s or self.read_timeout_s

    def effective_conn_limit(self) -> int:
        """The per-server cap: ``conn_limit``, or the automatic one, and never more
        than half the process's headroom, so two servers cannot starve each other."""
        limit = self.conn_limit or AUTO_CONN_LIMIT
        return max(1, min(limit, connection_headroom() // 2))


class _Phase(Enum):
    READING = "read"  # request line and headers (a connection's first: from accept)
    HANDLING = "handle"  # the handler runs; no deadline
    BODY = "body"  # the handler reads the body, under the request's read deadline
    RESPONDING = "write"  # the response waits in the transport's buffer
    IDLE = "idle"  # kept alive between requests


class _Connection:
    __slots__ = ("deadline", "phase", "read_deadline", "transport")

    def __init__(self, transport: asyncio.Transport, read_deadline: float) -> None:
        self.transport = transport
        self.phase = _Phase.READING
        self.read_deadline = read_deadline
        self.deadline = read_deadline


class ConnectionGuard:
    """One server's connection cap and deadlines; its state, for tests and metrics.

    ``open`` counts connections held now, ``limited`` the times accepting paused
    because a cap was reached (new connections then wait in the listen backlog, as
    behind Go's ``netutil.LimitListener``), ``timed_out`` the connections closed by a
    read or write deadline, by phase (``read``, ``body``, ``write``), and ``paused``
    says whether accepting is paused now. ``clock`` is injectable for tests.
    """

    def __init__(
        self, limits: ServerLimits, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._cap = limits.effective_conn_limit()
        self._connections: dict[asyncio.Transport, _Connection] = {}
        self._freed: asyncio.Event | None = None  # made in the serving loop
        self.limited = 0
        self.paused = False
        self.timed_out: dict[str, int] = {"read": 0, "body": 0, "write": 0}

    @property
    def open(self) -> int:
        return len(self._connections)

    @property
    def conn_limit(self) -> int:
        return self._cap

    def _deadline(self, timeout_s: float) -> float:
        return self._clock() + timeout_s if timeout_s else float("inf")

    # -- connection lifetime (called by the protocol wrapper) --------------------------

    def _full(self) -> tuple[bool, bool]:
        """(full, full because of the process-wide headroom)."""
        if len(self._connections) >= self._cap:
            return True, False
        if _open_in_process >= connection_headroom():
            return True, True
        return False, False

    # -- the server side (called by GuardedServer and its protocol) -------------------

    async def wait_for_slot(self) -> None:
        """Return once a connection may be accepted (under the cap, and under the
        process's descriptor headroom)."""
        full, process_wide = self._full()
        if not full:
            return
        self.limited += 1
        self.paused = True
        if self._freed is None:
            self._freed = asyncio.Event()
        try:
            while full:
                self._freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        _HEADROOM_POLL_S if process_wide else None
                    ):
                        await self._freed.wait()
                full, process_wide = self._full()
        finally:
            self.paused = False

    def admit(self, transport: asyncio.Transport) -> None:
        """A connection was accepted: its read deadline starts now."""
        global _open_in_process
        _open_in_process += 1
        deadline = self._deadline(self.limits.read_timeout_s)
        self._connections[transport] = _Connection(transport, deadline)

    def on_data(self, transport: asyncio.Transport) -> None:
        """Bytes arrived on ``transport``."""
        conn = self._connections.get(transport)
        if conn is not None and conn.phase in (_Phase.IDLE, _Phase.RESPONDING):
            # The next request's first bytes: its read deadline starts now.
            conn.phase = _Phase.READING
            conn.read_deadline = conn.deadline = self._deadline(
                self.limits.read_timeout_s
            )

    def on_lost(self, transport: asyncio.Transport) -> None:
        """``transport`` closed: its slot is free."""
        global _open_in_process
        if self._connections.pop(transport, None) is not None:
            _open_in_process -= 1
            if self._freed is not None:
                self._freed.set()

    # -- request phases (called from the middleware and handlers) ----------------------

    def _find(self, request: web.BaseRequest) -> _Connection | None:
        transport = request.transport
        return None if transport is None else self._connections.get(transport)

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Marks a request's headers read (its deadline stops) and its response made
        (the write deadline starts). Install it first in the application."""
        conn = self._find(request)
        if conn is not None:
            conn.phase, conn.deadline = _Phase.HANDLING, float("inf")
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.phase = _Phase.RESPONDING
                conn.deadline = self._deadline(self.limits.write_timeout_s)

    @contextlib.contextmanager
    def reading_body(self, request: web.BaseRequest) -> Iterator[None]:
        """Around a handler's body read: the request's read deadline applies again,
        so a body trickled in slower than ``server_read_timeout`` closes the
        connection (the read then fails with ``ConnectionError``)."""
        conn = self._find(request)
        if conn is None:
            yield
            return
        conn.phase, conn.deadline = _Phase.BODY, conn.read_deadline
        try:
            yield
        finally:
            if conn.phase is _Phase.BODY:
                conn.phase, conn.deadline = _Phase.HANDLING, float("inf")

    # -- the watchdog ------------------------------------------------------------------

    def check(self) -> int:
        """Apply every deadline that has passed; returns how many connections closed."""
        now = self._clock()
        closed = 0
        for transport, conn in list(self._connections.items()):
            if now < conn.deadline:
                continue
            if conn.phase is _Phase.RESPONDING:
                if transport.get_write_buffer_size() == 0:
                    # The response went out: the connection idles until the client
                    # sends another request or the idle timeout ends it.
                    conn.phase = _Phase.IDLE
                    conn.deadline = self._deadline(self.limits.idle_s)
                    continue
                self.timed_out["write"] += 1
            elif conn.phase is _Phase.IDLE:
                transport.close()
                closed += 1
                continue
            else:
                self.timed_out[conn.phase.value] += 1
            _log.debug("closing a connection: %s deadline passed", conn.phase.value)
            # abort(): nothing useful is left to flush, and the descriptor is freed now.
            transport.abort()
            closed += 1
        return closed

    def _tick_s(self) -> float:
        timeouts = [
            t
            for t in (
                self.limits.read_timeout_s,
                self.limits.write_timeout_s,
                self.limits.idle_s,
            )
            if t
        ]
        return min(1.0, max(0.02, min(timeouts, default=1.0) / 4))

    def transports(self) -> list[asyncio.Transport]:
        """The connections open now."""
        return list(self._connections)

    async def watch(self) -> None:
        """The watchdog: closes connections past their deadlines, until cancelled."""
        tick = self._tick_s()
        while True:
            await asyncio.sleep(tick)
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a bug must not unbound later clients
                _log.exception("checking connection deadlines failed")


class _GuardedProtocol(asyncio.Protocol):
    """Registers a connection with the guard, then forwards every protocol call to
    the aiohttp handler it creates."""

    __slots__ = ("_guard", "_inner", "_transport")

    def __init__(
        self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self._guard = guard
        self._inner = factory()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._guard.admit(transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._guard.on_data(self._transport)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._transport is not None
        self._guard.on_lost(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (one address ``host`` resolves to, an
    IPv4 one first, as Go listens; ``""`` is every IPv4 interface), non-blocking.

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    infos = socket.getaddrinfo(
        host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    # Go prefers IPv4 when a name resolves to both ("localhost").
    family, _, _, _, address = min(infos, key=lambda i: i[0] != socket.AF_INET)
    sock = socket.create_server(
        address[:2],
        family=family,
        backlog=_BACKLOG,
        dualstack_ipv6=family == socket.AF_INET6 and address[0] == "::",
    )
    sock.setblocking(False)
    return sock


class GuardedServer:
    """An aiohttp application served on TCP under a :class:`ConnectionGuard`.

    ``runner_kwargs`` go to ``web.AppRunner`` (``auto_decompress``, ...). The guard's
    middleware must be the application's first: :meth:`ConnectionGuard.middleware`.
    """

    def __init__(
        self, app: web.Application, guard: ConnectionGuard, **runner_kwargs: Any
    ) -> None:
        self._app = app
        self.guard = guard
        self._runner_kwargs = runner_kwargs
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (``port`` 0 picks one: read it from ``.port``).

        Raises:
            OSError: the address cannot be bound.
        """
        limits = self.guard.limits
        # aiohttp's own keep-alive timer backs up the guard's idle deadline.
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            keepalive_timeout=limits.idle_s or 3630,
            **self._runner_kwargs,
        )
        await runner.setup()
        try:
            sock = bind(host, port)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._sock = runner, sock
        self._tasks = [
            asyncio.create_task(self._accept(sock, runner)),
            asyncio.create_task(self.guard.watch()),
        ]

    async def _accept(self, sock: socket.socket, runner: web.AppRunner) -> None:
        loop = asyncio.get_running_loop()
        guard = self.guard
        low_level = runner.server
        assert low_level is not None
        backoff = Backoff(_ACCEPT_RETRY_MIN_S, _ACCEPT_RETRY_MAX_S)
        while True:
            await guard.wait_for_slot()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                # Out of descriptors (EMFILE) and kin: back off as Go does; the
                # connection waits in the backlog meanwhile.
                retry_s = backoff.next_delay()
                _log.error("accept failed, retrying in %.3fs: %s", retry_s, exc)
                await asyncio.sleep(retry_s)
                continue
            backoff.reset()
            try:
                await loop.connect_accepted_socket(
                    lambda: _GuardedProtocol(guard, low_level), conn
                )
            except OSError as exc:
                _log.debug("dropping a connection that failed at once: %s", exc)
                conn.close()

    async def aclose(self) -> None:
        """Stop listening, let requests in progress finish (aiohttp's shutdown
        timeout), close every connection. Idempotent."""
        sock, self._sock = self._sock, None
        runner, self._runner = self._runner, None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if sock is not None:
            sock.close()
        if runner is not None:
            await runner.cleanup()
        for transport in self.guard.transports():
            transport.abort()
