"""The agent HTTP server, Alloy endpoints: readiness, health, reload, metrics, UI.

``/-/ready``, ``/-/healthy``, ``/-/reload`` (GET or POST, as Alloy's), ``/metrics``,
the UI at ``/`` (hand-written HTML, CSS and JS shipped in ``agent/ui/``, no build
step, nothing loaded from elsewhere) and its JSON in Alloy's shapes:
``/api/v0/web/components`` (the list: health, references, data flow edges),
``/api/v0/web/components/{id}`` (plus arguments, exports, debug info) and the live
debugging stream ``/api/v0/web/debug/{id}`` (Alloy's ``|;|``-delimited text, or
server-sent events for ``Accept: text/event-stream``); minilog's
``/api/v0/web/explain`` says why each container is shipped or not. It reads the agent
through :class:`AgentView`; the agent (``runtime.Agent``) owns everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from minilog._httpguard import ConnectionGuard, GuardedServer, ServerLimits
from minilog.agent.explain import format_ns
from minilog.agent.livedebug import (
    DEFAULT_VIEWER_CAPACITY,
    LiveDebugging,
    LiveDebuggingError,
    Seen,
    Viewer,
)
from minilog.errors import ConfigError
from minilog.labels import format_labels

__all__ = ["UI_DIR", "AgentServer", "AgentView", "parse_listen_addr"]

#: The UI's files (package data).
UI_DIR: Final = Path(__file__).parent / "ui"

#: How often an idle live debugging stream checks that its client is still there
#: (an SSE stream also writes a comment, which proxies and browsers want).
_HEARTBEAT_S: Final = 1.0
#: Entries per write of a live debugging stream.
_CHUNK: Final = 256
#: Alloy's live debugging delimiter.
_ALLOY_DELIMITER: Final = b"|;|"


class AgentView(Protocol):
    """What the server needs from the agent."""

    @property
    def ready(self) -> bool: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    def unhealthy_components(self) -> list[str]: ...

    def components_info(self) -> list[dict[str, Any]]: ...

    async def reload(self) -> None: ...

    async def explain(self) -> list[dict[str, Any]]: ...

    @property
    def live(self) -> LiveDebugging: ...

    def redact_text(self, text: str) -> str: ...


def parse_listen_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> ``(host, port)``.

    Raises:
        ValueError: not a ``host:port`` pair with a port in 0-65535.
    """
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {addr!r}: want host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)


class AgentServer:
    """aiohttp server for one agent: ``await start()``, ``url``, ``await aclose()``.

    Alloy's own server sets no deadlines and no connection cap; this one has the
    ``loki.source.api`` ``http`` block's defaults (``limits``), so slow or piled-up
    clients cannot take the descriptors the agent needs.
    """

    def __init__(
        self,
        agent: AgentView,
        *,
        host: str = "127.0.0.1",
        port: int = 12345,
        limits: ServerLimits | None = None,
    ) -> None:
        self._agent = agent
        self._host = host
        self._port = port
        self._guard = ConnectionGuard(limits or ServerLimits())
        self._server: GuardedServer | None = None
        self._viewers: set[Viewer] = set()
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/-/ready", self._ready),
                web.get("/-/healthy", self._healthy),
                # These change state: only the methods Alloy's routes take.
                web.get("/-/reload", self._reload, allow_head=False),
                web.post("/-/reload", self._reload),
                web.get("/metrics", self._metrics),
                web.get("/api/v0/web/components", self._components),
                web.get("/api/v0/web/components/{id:.+}", self._component),
                web.get("/api/v0/web/debug/{id:.+}", self._debug, allow_head=False),
                web.get("/api/v0/web/explain", self._explain),
                web.get("/", self._index),
                web.static("/ui", UI_DIR, append_version=False),
            ]
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def connections(self) -> ConnectionGuard:
        """The connection cap, open connections and deadline closes."""
        return self._guard

    async def start(self) -> None:
        """Bind and serve; with ``port=0`` the bound port is in ``.port`` afterwards."""
        # The guard's middleware goes first: it marks where each request is.
        if self._guard.middleware not in self.app.middlewares:
            self.app.middlewares.insert(0, self._guard.middleware)
        server = GuardedServer(self.app, self._guard, access_log=None)
        await server.start(self._host, self._port)
        self._server = server
        self._port = server.port

    async def aclose(self) -> None:
        # Open live debugging streams end first, or they would hold the shutdown.
        for viewer in list(self._viewers):
            viewer.close()
        server, self._server = self._server, None
        if server is not None:
            await server.aclose()

    async def _ready(self, request: web.Request) -> web.Response:
        # As Alloy's: ready once the first config loaded; component health is
        # /-/healthy's business.
        if self._agent.ready:
            return web.Response(text="minilog is ready.\n")
        return web.Response(status=503, text="minilog is not ready.\n")

    async def _healthy(self, request: web.Request) -> web.Response:
        # As Alloy v1.18's handler: 500 and the component *names* (``loki.write``, as
        # Alloy's ``ComponentName``), one per unhealthy component, in config order.
        # The IDs and the reasons are on the UI page and in its JSON.
        bad = self._agent.unhealthy_components()
        if bad:
            names = ", ".join(_component_name(cid) for cid in bad)
            return web.Response(
                status=500,
                text=f"unhealthy components: {names}\n",
                headers={"X-Content-Type-Options": "nosniff"},
            )
        return web.Response(text="All minilog components are healthy.\n")

    async def _reload(self, request: web.Request) -> web.Response:
        try:
            await self._agent.reload()
        except ConfigError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return web.Response(text="config reloaded\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._agent.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _components(self, request: web.Request) -> web.Response:
        body = [alloy_component(c, detail=False) for c in self._agent.components_info()]
        return _json(body)

    async def _component(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        for c in self._agent.components_info():
            if c["id"] == wanted:
                return _json(alloy_component(c, detail=True))
        raise web.HTTPNotFound(text="404 page not found\n")

    async def _explain(self, request: web.Request) -> web.Response:
        from minilog.agent.dryrun import matches

        explanations = await self._agent.explain()
        target = request.query.get("target")
        if target:
            explanations = [e for e in explanations if matches(e, target)]
        return _json(explanations)

    async def _debug(self, request: web.Request) -> web.StreamResponse:
        """One viewer of the entries leaving a component, until it goes away."""
        component_id = request.match_info["id"]
        try:
            sample = float(request.query.get("sampleProb", "1"))
            capacity = int(request.query.get("capacity", DEFAULT_VIEWER_CAPACITY))
        except ValueError:
            sample = capacity = -1
        if not 0 <= sample <= 1 or capacity < 1:
            raise web.HTTPBadRequest(
                text="sampleProb must be in [0, 1] and capacity a positive integer\n"
            )
        try:
            viewer = self._agent.live.subscribe(component_id, capacity)
        except LiveDebuggingError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        sse = "text/event-stream" in request.headers.get("Accept", "")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream"
                if sse
                else "text/plain; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
            }
        )
        self._viewers.add(viewer)
        try:
            await response.prepare(request)
            if sse:
                hello = {"component": component_id, "capacity": viewer.capacity}
                await response.write(_sse("hello", hello))
            await self._stream(request, response, viewer, sse, sample)
        except (ConnectionError, TimeoutError):
            pass  # the viewer went away, or stopped reading for write_timeout
        finally:
            self._viewers.discard(viewer)
            self._agent.live.unsubscribe(viewer)
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        viewer: Viewer,
        sse: bool,
        sample: float,
    ) -> None:
        reported = 0
        write_timeout = self._guard.limits.write_timeout_s
        redact = self._agent.redact_text
        while not viewer.closed:
            await viewer.wait(_HEARTBEAT_S)
            transport = request.transport
            if transport is None or transport.is_closing():
                return  # the viewer went away
            parts: list[bytes] = []
            for seen in viewer.take(_CHUNK):
                if sample < 1 and random.random() > sample:
                    continue
                if sse:
                    parts.append(_sse("entry", _entry_json(seen, redact)))
                else:
                    parts.append(_alloy_line(seen, redact) + _ALLOY_DELIMITER)
            if sse and viewer.dropped != reported:
                reported = viewer.dropped
                parts.append(_sse("dropped", {"dropped": reported}))
            if not parts:
                if not sse:
                    continue
                parts.append(b": keep-alive\n\n")
            # A stalled client only stalls its own stream; after write_timeout it
            # is closed (entries meanwhile are dropped for it and counted).
            async with asyncio.timeout(write_timeout):
                await response.write(b"".join(parts))
        if sse:
            with contextlib.suppress(ConnectionError):
                await response.write(
                    _sse("closed", {"reason": "live debugging stopped"})
                )

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(UI_DIR / "index.html")


def _json(value: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps(value, default=str), content_type="application/json"
    )


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _entry_json(seen: Seen, redact: Any) -> dict[str, Any]:
    entry = seen.entry
    return {
        "timestamp": format_ns(entry.timestamp_ns),
        "timestamp_ns": entry.timestamp_ns,
        "line": redact(entry.line),
        "labels": seen.labels,
        "structured_metadata": dict(entry.structured_metadata),
    }


def _alloy_line(seen: Seen, redact: Any) -> bytes:
    # Alloy's loki.process wording ("[OUT]: timestamp: ..., entry: ..., labels: ...").
    entry = seen.entry
    metadata = orjson.dumps(dict(entry.structured_metadata)).decode()
    return (
        f"[OUT]: timestamp: {format_ns(entry.timestamp_ns)}, "
        f"entry: {redact(entry.line)}, labels: {format_labels(seen.labels)}, "
        f"structured_metadata: {metadata}"
    ).encode()


def alloy_component(info: dict[str, Any], *, detail: bool) -> dict[str, Any]:
    """A component in the shape of Alloy's ``component.Info`` JSON.

    Where minilog differs: ``moduleID`` is always ``""`` (no modules), ``original``
    is ``""``, and ``arguments``, ``exports`` and ``debugInfo`` are plain JSON values
    (a secret is the string ``(secret)``) instead of Alloy's typed statement lists.
    """
    out = {
        "name": info["name"],
        "type": "block",
        "localID": info["id"],
        "moduleID": "",
        "label": info.get("label", ""),
        "referencesTo": info.get("references", []),
        "referencedBy": info.get("referenced_by", []),
        "dataFlowEdgesTo": info.get("data_flow_edges_to", []),
        "health": {
            "state": info["health"],
            "message": info.get("message", ""),
            "updatedTime": _rfc3339(info.get("updated")),
        },
        "original": "",
        "liveDebuggingEnabled": bool(info.get("live_debugging", False)),
    }
    if detail:
        out["arguments"] = info.get("arguments")
        out["exports"] = info.get("exports")
        out["debugInfo"] = info.get("debug_info")
    return out


def _rfc3339(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _component_name(component_id: str) -> str:
    # An ID is ``<name>.<label>`` and a label is an identifier (no dots).
    return component_id.rsplit(".", 1)[0]
