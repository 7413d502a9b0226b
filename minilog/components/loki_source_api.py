"""``loki.source.api``: a Loki push endpoint (``receiver.PushReceiver``) for forward_to.

Owns the per-batch treatment Alloy applies to pushed entries: static ``labels`` merged
over the pushed ones, ``relabel_rules`` (legacy names; a dropped or emptied label set
discards the batch), and the receive time as timestamp unless
``use_incoming_timestamp``; with it, incoming timestamps Loki would refuse are refused
here. A change of the ``http`` block restarts the server; other changes apply in place.

minilog extensions (Alloy v1.18 has none of these): ``max_line_size``,
``reject_old_samples``, ``reject_old_samples_max_age`` and ``creation_grace_period``
(Loki's ``limits_config`` names and defaults) and ``max_inflight_push_requests_bytes``
(Mimir's distributor name).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from minilog._httpguard import (
    DEFAULT_SERVER_IDLE_TIMEOUT,
    DEFAULT_SERVER_READ_TIMEOUT,
    DEFAULT_SERVER_WRITE_TIMEOUT,
    ServerLimits,
)
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
from minilog.loki.pushrequest import DEFAULT_MAX_RECV_MSG_SIZE
from minilog.loki.receiver import DEFAULT_MAX_INFLIGHT_BYTES, PushReceiver
from minilog.loki.validation import (
    DEFAULT_CREATION_GRACE_PERIOD,
    DEFAULT_MAX_LINE_SIZE,
    DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE,
    EntryLimits,
)
from minilog.model import LogEntry, StreamBatch
from minilog.relabel import RelabelRules

__all__ = ["LokiSourceAPI"]

_HTTP_SCHEMA = Schema(
    attrs=[
        # Alloy's server block defaults: all interfaces, port 8080, Go's http.Server
        # deadlines as dskit sets them. conn_limit 0 is minilog's automatic cap
        # (_httpguard.AUTO_CONN_LIMIT), where Alloy has none.
        Attr("listen_address", "string", default=""),
        Attr("listen_port", "int", default=8080),
        Attr("conn_limit", "int", default=0),
        Attr("server_read_timeout", "duration", default=DEFAULT_SERVER_READ_TIMEOUT),
        Attr("server_write_timeout", "duration", default=DEFAULT_SERVER_WRITE_TIMEOUT),
        Attr("server_idle_timeout", "duration", default=DEFAULT_SERVER_IDLE_TIMEOUT),
    ]
)
_HTTP_DEFAULTS = {a.name: a.default for a in _HTTP_SCHEMA.attrs}


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
            Attr("max_send_message_size", "bytes", default=DEFAULT_MAX_RECV_MSG_SIZE),
            # minilog extensions: Loki's limits_config checks, before anything is
            # queued, and a memory budget for the requests in flight.
            Attr("max_line_size", "bytes", default=DEFAULT_MAX_LINE_SIZE),
            Attr("reject_old_samples", "bool", default=True),
            Attr(
                "reject_old_samples_max_age",
                "duration",
                default=DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE,
            ),
            Attr(
                "creation_grace_period",
                "duration",
                default=DEFAULT_CREATION_GRACE_PERIOD,
            ),
            Attr(
                "max_inflight_push_requests_bytes",
                "bytes",
                default=DEFAULT_MAX_INFLIGHT_BYTES,
            ),
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
        http = dict(args.get("http") or _HTTP_DEFAULTS)
        port = int(http["listen_port"])
        if not 0 <= port <= 65535:
            raise positioned(block, f"http listen_port {port} is out of range")
        try:
            out["server_limits"] = ServerLimits(
                read_timeout_s=float(http["server_read_timeout"]),
                write_timeout_s=float(http["server_write_timeout"]),
                idle_timeout_s=float(http["server_idle_timeout"]),
                conn_limit=int(http["conn_limit"]),
            )
        except ValueError as exc:
            raise positioned(block, f"http: {exc}") from None
        out["http"] = http
        for name in (
            "max_line_size",
            "reject_old_samples_max_age",
            "creation_grace_period",
        ):
            if float(args[name]) < 0:
                raise positioned(block, f"{name} must not be negative")
        if int(args["max_inflight_push_requests_bytes"]) <= 0:
            raise positioned(
                block, "max_inflight_push_requests_bytes must be greater than 0"
            )
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
            port=int(http["listen_port"]),
            registry=registry,
            # 0 is Alloy's "default" (routes.go newRoutes).
            max_recv_msg_size=int(args["max_send_message_size"])
            or DEFAULT_MAX_RECV_MSG_SIZE,
            entry_limits=_entry_limits(args),
            max_inflight_bytes=int(args["max_inflight_push_requests_bytes"]),
            server_limits=args["server_limits"],
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
        if _server_args(args) != _server_args(self.args):
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
        else:
            self._server.entry_limits = _entry_limits(args)
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


def _entry_limits(args: Mapping[str, Any]) -> EntryLimits:
    # Without use_incoming_timestamp every entry gets the receive time: no incoming
    # timestamp can be too old or too new.
    return EntryLimits(
        max_line_size=int(args["max_line_size"]),
        check_timestamps=bool(args["use_incoming_timestamp"]),
        reject_old_samples=bool(args["reject_old_samples"]),
        reject_old_samples_max_age_s=float(args["reject_old_samples_max_age"]),
        creation_grace_period_s=float(args["creation_grace_period"]),
    )


def _server_args(args: Mapping[str, Any]) -> tuple[Any, ...]:
    """What only a new server can change (the rest applies in place)."""
    return (
        args["http"],
        args["max_send_message_size"],
        args["max_inflight_push_requests_bytes"],
    )
