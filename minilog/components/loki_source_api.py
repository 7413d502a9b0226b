"""``loki.source.api``: a Loki push endpoint (``receiver.PushReceiver``) for forward_to.

Owns the per-batch treatment Alloy applies to pushed entries: static ``labels`` merged
over the pushed ones, ``relabel_rules`` (legacy names; a dropped or emptied label set
discards the batch), and the receive time as timestamp unless
``use_incoming_timestamp``. A change of the ``http`` block restarts the server; other
changes apply in place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.components.base import (
    Component,
    ComponentOptions,
    Fanout,
    positioned,
    register,
)
from minilog.components.loki_source_docker import legacy_rules
from minilog.config.ast import Block
from minilog.config.schema import Attr, BlockSpec, Schema
from minilog.model import LogEntry, StreamBatch
from minilog.receiver import PushReceiver
from minilog.relabel import RelabelRules

__all__ = ["LokiSourceAPI"]

_HTTP_SCHEMA = Schema(
    attrs=[
        # Alloy's server block defaults: all interfaces, port 8080.
        Attr("listen_address", "string", default=""),
        Attr("listen_port", "int", default=8080),
    ]
)


@register
class LokiSourceAPI(Component):
    """Serves ``/loki/api/v1/push``; no exports."""

    name = "loki.source.api"
    schema = Schema(
        attrs=[
            Attr("forward_to", "list(capsule)", required=True),
            Attr("labels", "map(string)", default={}),
            Attr("relabel_rules", "capsule"),
            Attr("use_incoming_timestamp", "bool", default=False),
            Attr("graceful_shutdown_timeout", "duration", default=30.0),
            Attr("max_send_message_size", "bytes", default=100 << 20),
        ],
        blocks=[BlockSpec("http", _HTTP_SCHEMA)],
    )
    phase = "source"

    @classmethod
    def prepare(
        cls,
        args: Mapping[str, Any],
        block: Block,
        *,
        stability_level: str = "generally-available",
    ) -> dict[str, Any]:
        out = dict(args)
        http = dict(args.get("http") or {"listen_address": "", "listen_port": 8080})
        port = int(http.get("listen_port", 8080))
        if not 0 <= port <= 65535:
            raise positioned(block, f"http listen_port {port} is out of range")
        out["http"] = http
        rules = args.get("relabel_rules")
        if rules is not None and not isinstance(rules, RelabelRules):
            raise positioned(block, "relabel_rules must be a RelabelRules value")
        out["legacy_rules"] = legacy_rules(rules)
        if float(args.get("graceful_shutdown_timeout", 30.0)) <= 0:
            raise positioned(block, "graceful_shutdown_timeout must be greater than 0")
        return out

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
        super().__init__(opts, args)
        self._fanout = Fanout(args.get("forward_to") or [])
        self._registry = opts.registry
        self._server = self._build(args, self._registry)
        self._last_stamp_ns = 0

    def _build(
        self, args: Mapping[str, Any], registry: CollectorRegistry
    ) -> PushReceiver:
        http = args["http"]
        return PushReceiver(
            self._handle,
            host=str(http.get("listen_address") or "0.0.0.0"),
            port=int(http.get("listen_port", 8080)),
            registry=registry,
            max_recv_msg_size=int(args.get("max_send_message_size") or 100 << 20),
        )

    def metrics_registry(self) -> CollectorRegistry:
        return self._registry

    @property
    def url(self) -> str:
        """Base URL of the running server (tests use it with ``listen_port = 0``)."""
        return str(self._server.url)

    async def start(self) -> None:
        await self._server.start()

    async def run(self) -> None:
        try:
            # The server runs on its own; this task only owns its shutdown.
            await asyncio.Event().wait()
        finally:
            try:
                async with asyncio.timeout(
                    float(self.args["graceful_shutdown_timeout"])
                ):
                    await self._server.aclose()
            except TimeoutError:
                self.log.warning("HTTP server did not shut down gracefully in time")

    async def stop_unstarted(self) -> None:
        await self._server.aclose()

    async def update(self, args: Mapping[str, Any]) -> None:
        self._fanout.set(args.get("forward_to") or [])
        if args["http"] != self.args["http"]:
            registry = CollectorRegistry(auto_describe=True)
            server = self._build(args, registry)
            await self._server.aclose()
            try:
                await server.start()
            except BaseException:
                # Keep serving on the old address (the receiver restarts in place);
                # the arguments stay the old ones, so a later reload tries again.
                await self._server.start()
                raise
            self._server, self._registry = server, registry
        self.args = args

    def _stamp(self, entries: list[LogEntry]) -> list[LogEntry]:
        """Receive-time stamps, one nanosecond apart and never repeating: Loki drops
        an entry whose timestamp and line equal another's in the stream."""
        start = max(time.time_ns(), self._last_stamp_ns + 1)
        self._last_stamp_ns = start + len(entries) - 1
        return [
            LogEntry(start + i, e.line, e.structured_metadata)
            for i, e in enumerate(entries)
        ]

    async def _handle(self, batches: list[StreamBatch]) -> None:
        args = self.args
        static: dict[str, str] = args.get("labels") or {}
        rules: RelabelRules | None = args.get("legacy_rules")
        stamp = not args.get("use_incoming_timestamp")
        for batch in batches:
            labels = {**batch.labels, **static} if static else batch.labels
            if rules is not None:
                relabelled = rules.process(labels)
                if not relabelled:
                    batch.settle()
                    continue
                # Internal labels go after relabeling, as in Alloy; the tenant stays:
                # it is how the writer picks X-Scope-OrgID.
                labels = {
                    k: v
                    for k, v in relabelled.items()
                    if not k.startswith("__") or k == "__tenant_id__"
                }
            # Alloy stamps pushed entries with the receive time unless told otherwise.
            entries = self._stamp(batch.entries) if stamp else batch.entries
            await self._fanout.send(StreamBatch(labels, entries, batch.delivery))

    def debug_info(self) -> Any:
        return {"url": self.url}
