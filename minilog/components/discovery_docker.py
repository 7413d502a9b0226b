"""``discovery.docker``: runs ``discovery.DockerDiscovery`` and exports its ``targets``.

Owns the throttle between discovery and the graph: the first target list is published at
once, later changes at most every ``MIN_PUBLISH_INTERVAL_S`` (Alloy waits 5 s for every
publish; minilog's discovery is event driven, so a shorter throttle keeps new containers
visible within about a second while still coalescing bursts of events), and its health:
unhealthy, with the reason, while Docker cannot be listed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from minilog.components.base import Component, ComponentOptions, positioned, register
from minilog.config.ast import Block
from minilog.config.schema import Attr, BlockSpec, Schema
from minilog.docker.discovery import DiscoveryMetrics, DockerDiscovery
from minilog.redact import strip_userinfo

__all__ = ["DiscoveryDocker", "check_docker_args"]

_HOST_SCHEMES = ("unix", "tcp", "http", "https")


def check_docker_args(args: Mapping[str, Any], block: Block) -> None:
    """Alloy's checks of ``host`` and ``refresh_interval``, shared by the Docker
    components, plus the host schemes minilog can reach.

    Raises:
        ConfigError: an empty or unparsable host, a scheme minilog does not support
            (npipe), or a refresh interval that is not positive.
    """
    if float(args.get("refresh_interval", 60.0)) <= 0:
        raise positioned(block, "refresh_interval must be greater than 0")
    host = str(args.get("host") or "")
    if not host:
        raise positioned(block, "host attribute must not be empty")
    try:
        scheme = urlsplit(host).scheme
    except ValueError as exc:
        raise positioned(block, f"parsing host attribute: {exc}") from exc
    if scheme not in _HOST_SCHEMES:
        # Printed as a diagnostic, outside the log filter: no userinfo in it.
        raise positioned(
            block,
            f"unsupported Docker host {strip_userinfo(host)!r}; supported schemes: "
            + ", ".join(f"{s}://" for s in _HOST_SCHEMES),
        )


@register
class DiscoveryDocker(Component):
    """Exports ``targets``: one ``__meta_docker_*`` label set per container network."""

    name = "discovery.docker"
    schema = Schema(
        attrs=[
            Attr("host", "string", required=True),
            Attr("port", "int", default=80),
            Attr("host_networking_host", "string", default="localhost"),
            Attr("refresh_interval", "duration", default=60.0),
            Attr("match_first_network", "bool", default=True),
        ],
        blocks=[
            BlockSpec(
                "filter",
                Schema(
                    attrs=[
                        Attr("name", "string", required=True),
                        Attr("values", "list(string)", required=True),
                    ]
                ),
                repeated=True,
            ),
        ],
    )
    phase = "discovery"

    #: Minimum seconds between two publishes after the first one.
    MIN_PUBLISH_INTERVAL_S = 1.0

    @classmethod
    def prepare(
        cls,
        args: Mapping[str, Any],
        block: Block,
        *,
        stability_level: str = "generally-available",
    ) -> dict[str, Any]:
        check_docker_args(args, block)
        return dict(args)

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"targets": []}

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
        super().__init__(opts, args)
        self._targets: list[dict[str, str]] = []
        self._exports: dict[str, Any] = {"targets": self._targets}
        self._pending: list[dict[str, str]] | None = None
        self._published_once = False
        self._last_publish = 0.0
        self._changed = asyncio.Event()
        self._restart = asyncio.Event()
        self._first_published = asyncio.Event()
        self._registry = opts.registry
        # Kept for the component's life: the refresh counters go on across a rebuild.
        self._metrics = DiscoveryMetrics(opts.registry)
        self._discovery = self._build(args)

    def _build(self, args: Mapping[str, Any]) -> DockerDiscovery:
        filters = [
            (str(f["name"]), [str(v) for v in f.get("values") or []])
            for f in args.get("filter") or []
        ]
        return DockerDiscovery(
            str(args["host"]),
            filters=filters,
            port=int(args.get("port", 80)),
            host_networking_host=str(args.get("host_networking_host", "localhost")),
            match_first_network=bool(args.get("match_first_network", True)),
            refresh_interval=float(args.get("refresh_interval", 60.0)),
            metrics=self._metrics,
            on_status=self._on_status,
        )

    def _on_status(self, error: str | None) -> None:
        # Unhealthy while Docker cannot be listed (missing socket, permission, no
        # answer); healthy again after the next successful refresh.
        if error is None:
            self.clear_problem("docker", "Docker is reachable again")
        else:
            self.report_problem("docker", error)

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def wait_first_exports(self) -> None:
        await self._first_published.wait()

    def _on_targets(self, targets: list[dict[str, str]]) -> None:
        self._pending = targets
        self._changed.set()

    async def _publisher(self) -> None:
        while True:
            await self._changed.wait()
            if self._published_once:
                wait = (
                    self._last_publish + self.MIN_PUBLISH_INTERVAL_S - time.monotonic()
                )
                if wait > 0:
                    await asyncio.sleep(wait)
            self._changed.clear()
            targets, self._pending = self._pending, None
            if targets is None:
                continue
            self._published_once = True
            self._last_publish = time.monotonic()
            self._targets = targets
            self._exports = {"targets": targets}
            self.opts.on_exports()
            self._first_published.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publisher(), name=f"{self.id} publisher")
            while True:
                self._restart.clear()
                discovery = self._discovery
                task = tg.create_task(discovery.run(self._on_targets), name=self.id)
                await self._restart.wait()
                # Alloy builds a brand-new discoverer on every update; so does minilog.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def update(self, args: Mapping[str, Any]) -> None:
        if dict(args) == dict(self.args):
            return
        self.args = args
        self._discovery = self._build(args)
        self._restart.set()

    def metrics_registry(self) -> CollectorRegistry:
        return self._registry

    def debug_info(self) -> Any:
        return {"targets": len(self._targets), "last_error": self._discovery.error}
