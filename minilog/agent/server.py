"""The agent HTTP server, Alloy endpoints: readiness, health, reload, metrics, UI.

``/-/ready``, ``/-/healthy``, ``/-/reload`` (GET or POST), ``/metrics``, a small
read-only HTML page at ``/`` and its JSON at ``/api/v0/web/components``. It reads the
agent through :class:`AgentView`; the agent (``runtime.Agent``) owns everything
else.
"""

from __future__ import annotations

import html
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from minilog._httpguard import ConnectionGuard, GuardedServer, ServerLimits
from minilog.errors import ConfigError

__all__ = ["AgentServer", "AgentView", "parse_listen_addr"]


class AgentView(Protocol):
    """What the server needs from the agent."""

    @property
    def ready(self) -> bool: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    def unhealthy_components(self) -> list[str]: ...

    def components_info(self) -> list[dict[str, Any]]: ...

    async def reload(self) -> None: ...


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
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/-/ready", self._ready),
                web.get("/-/healthy", self._healthy),
                web.get("/-/reload", self._reload),
                web.post("/-/reload", self._reload),
                web.get("/metrics", self._metrics),
                web.get("/api/v0/web/components", self._components),
                web.get("/", self._index),
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
        body = orjson.dumps(self._agent.components_info(), default=str)
        return web.Response(body=body, content_type="application/json")

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=_render_index(self._agent.components_info()), content_type="text/html"
        )


def _component_name(component_id: str) -> str:
    # An ID is ``<name>.<label>`` and a label is an identifier (no dots).
    return component_id.rsplit(".", 1)[0]


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    pretty = orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str)
    return f"<pre>{html.escape(pretty.decode())}</pre>"


def _render_index(components: list[dict[str, Any]]) -> str:
    # ``components`` comes redacted from the agent (no secret reaches this page).
    rows = []
    for c in components:
        health = html.escape(str(c["health"]))
        rows.append(
            f"<tr><td>{html.escape(str(c['id']))}</td>"
            f"<td class='{health}'>{health}</td>"
            f"<td>{html.escape(str(c.get('message', '')))}</td>"
            f"<td>{_pretty(c.get('arguments'))}</td>"
            f"<td>{_pretty(c.get('debug_info'))}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>minilog</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px 8px}"
        ".healthy{color:#080}.unhealthy,.exited{color:#b00}</style></head><body>"
        "<h1>minilog components</h1><table><tr><th>component</th><th>health</th>"
        "<th>message</th><th>arguments</th><th>debug info</th></tr>"
        + "".join(rows)
        + "</table>"
        "<p><a href='/api/v0/web/components'>JSON</a> &middot; "
        "<a href='/metrics'>metrics</a>"
        "</p></body></html>"
    )
