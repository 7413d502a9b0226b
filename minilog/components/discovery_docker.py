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
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.components.arguments import check_docker_host
from minilog.components.base import Component, ComponentOptions, register
from minilog.config.ast import Block
from minilog.config.schema import attr, block
from minilog.docker.discovery import (
    DEFAULT_HOST_NETWORKING_HOST,
    DEFAULT_PORT,
    DEFAULT_REFRESH_INTERVAL_S,
    DiscoveryMetrics,
    DockerDiscovery,
)

__all__ = ["DiscoveryDocker", "DiscoveryDockerArgs", "DockerFilter"]


@dataclass(frozen=True, kw_only=True)
class DockerFilter:
    """A ``filter`` block: a Docker list filter."""

    name: str = attr("string", required=True)
    values: tuple[str, ...] = attr("list(string)", required=True)


@dataclass(frozen=True, kw_only=True)
class DiscoveryDockerArgs:
    """``discovery.docker``'s arguments, Alloy's names and defaults."""

    host: str = attr("string", required=True)
    port: int = attr("int", DEFAULT_PORT)
    host_networking_host: str = attr("string", DEFAULT_HOST_NETWORKING_HOST)
    refresh_interval: float = attr("duration", DEFAULT_REFRESH_INTERVAL_S)
    match_first_network: bool = attr("bool", True)
    filter: tuple[DockerFilter, ...] = block(DockerFilter, repeated=True)


@register
class DiscoveryDocker(Component[DiscoveryDockerArgs]):
    """Exports ``targets``: one ``__meta_docker_*`` label set per container network."""

    name = "discovery.docker"
    args_class = DiscoveryDockerArgs
    phase = "discovery"

    #: Minimum seconds between two publishes after the first one.
    MIN_PUBLISH_INTERVAL_S = 1.0

    @classmethod
    def check_args(cls, args: DiscoveryDockerArgs, block: Block) -> None:
        check_docker_host(args.host, args.refresh_interval, block)

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"targets": []}

    def __init__(self, opts: ComponentOptions, args: DiscoveryDockerArgs) -> None:
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

    def _build(self, args: DiscoveryDockerArgs) -> DockerDiscovery:
        return DockerDiscovery(
            args.host,
            filters=[(f.name, list(f.values)) for f in args.filter],
            port=args.port,
            host_networking_host=args.host_networking_host,
            match_first_network=args.match_first_network,
            refresh_interval=args.refresh_interval,
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

    async def update(self, args: DiscoveryDockerArgs) -> None:
        if args == self.args:
            return
        self.args = args
        self._discovery = self._build(args)
        self._restart.set()

    def metrics_registry(self) -> CollectorRegistry:
        return self._registry

    def debug_info(self) -> Any:
        return {"targets": len(self._targets), "last_error": self._discovery.error}
