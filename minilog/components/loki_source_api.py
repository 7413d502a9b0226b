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
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry

from minilog._httpguard import (
    DEFAULT_SERVER_IDLE_TIMEOUT,
    DEFAULT_SERVER_READ_TIMEOUT,
    DEFAULT_SERVER_WRITE_TIMEOUT,
    ServerLimits,
)
from minilog.components.arguments import check_relabel_rules, legacy_rules, positioned
from minilog.components.base import Component, ComponentOptions, register
from minilog.config.ast import Block
from minilog.config.schema import attr, block
from minilog.labels import TENANT_LABEL
from minilog.loki.pushrequest import DEFAULT_MAX_RECV_MSG_SIZE
from minilog.loki.receiver import DEFAULT_MAX_INFLIGHT_BYTES, PushReceiver
from minilog.loki.validation import (
    DEFAULT_CREATION_GRACE_PERIOD,
    DEFAULT_MAX_LINE_SIZE,
    DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE,
    EntryLimits,
)
from minilog.model import LogEntry, LogsReceiver, StreamBatch
from minilog.relabel import RelabelRules, relabel_stream

__all__ = ["HTTPArgs", "LokiSourceAPI", "LokiSourceAPIArgs"]

#: Internal labels a relabelled push keeps.
_KEEP: Final = frozenset({TENANT_LABEL})


@dataclass(frozen=True, kw_only=True)
class HTTPArgs:
    """The ``http`` block: Alloy's server defaults (all interfaces, port 8080, Go's
    ``http.Server`` deadlines as dskit sets them). ``conn_limit`` 0 is minilog's
    automatic cap (``_httpguard.AUTO_CONN_LIMIT``), where Alloy has none."""

    listen_address: str = attr("string", "")
    listen_port: int = attr("int", 8080)
    conn_limit: int = attr("int", 0)
    server_read_timeout: float = attr("duration", DEFAULT_SERVER_READ_TIMEOUT)
    server_write_timeout: float = attr("duration", DEFAULT_SERVER_WRITE_TIMEOUT)
    server_idle_timeout: float = attr("duration", DEFAULT_SERVER_IDLE_TIMEOUT)


@dataclass(frozen=True, kw_only=True)
class LokiSourceAPIArgs:
    """``loki.source.api``'s arguments, Alloy's names and defaults, plus minilog's
    limits (Loki's ``limits_config`` names and defaults)."""

    forward_to: tuple[LogsReceiver, ...] = attr("list(capsule)", required=True)
    labels: Mapping[str, str] = attr("map(string)", {})
    relabel_rules: RelabelRules | None = attr("capsule")
    use_incoming_timestamp: bool = attr("bool", False)
    graceful_shutdown_timeout: float = attr("duration", 30.0)
    max_send_message_size: int = attr("bytes", DEFAULT_MAX_RECV_MSG_SIZE)
    # minilog extensions: Loki's limits_config checks, before anything is queued,
    # and a memory budget for the requests in flight.
    max_line_size: int = attr("bytes", DEFAULT_MAX_LINE_SIZE)
    reject_old_samples: bool = attr("bool", True)
    reject_old_samples_max_age: float = attr(
        "duration", DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE
    )
    creation_grace_period: float = attr("duration", DEFAULT_CREATION_GRACE_PERIOD)
    max_inflight_push_requests_bytes: int = attr("bytes", DEFAULT_MAX_INFLIGHT_BYTES)
    http: HTTPArgs | None = block(HTTPArgs)

    @property
    def server(self) -> HTTPArgs:
        """The ``http`` block, its defaults when absent."""
        return self.http or HTTPArgs()

    @functools.cached_property
    def server_limits(self) -> ServerLimits:
        """The ``http`` block's connection cap and deadlines.

        Raises:
            ValueError: a value the limits refuse.
        """
        http = self.server
        return ServerLimits(
            read_timeout_s=http.server_read_timeout,
            write_timeout_s=http.server_write_timeout,
            idle_timeout_s=http.server_idle_timeout,
            conn_limit=http.conn_limit,
        )

    @functools.cached_property
    def stream_rules(self) -> RelabelRules | None:
        """``relabel_rules`` as applied to pushed streams (legacy label names)."""
        return legacy_rules(self.relabel_rules)

    def entry_limits(self) -> EntryLimits:
        # Without use_incoming_timestamp every entry gets the receive time: no incoming
        # timestamp can be too old or too new.
        return EntryLimits(
            max_line_size=self.max_line_size,
            check_timestamps=self.use_incoming_timestamp,
            reject_old_samples=self.reject_old_samples,
            reject_old_samples_max_age_s=self.reject_old_samples_max_age,
            creation_grace_period_s=self.creation_grace_period,
        )

    def server_key(self) -> tuple[Any, ...]:
        """What only a new server can change (the rest applies in place)."""
        return (
            self.server,
            self.max_send_message_size,
            self.max_inflight_push_requests_bytes,
        )


@register
class LokiSourceAPI(Component[LokiSourceAPIArgs]):
    """Serves ``/loki/api/v1/push``; no exports."""

    name = "loki.source.api"
    args_class = LokiSourceAPIArgs
    phase = "source"

    @classmethod
    def check_args(cls, args: LokiSourceAPIArgs, block: Block) -> None:
        port = args.server.listen_port
        if not 0 <= port <= 65535:
            raise positioned(block, f"http listen_port {port} is out of range")
        try:
            args.server_limits  # noqa: B018 - built now: its checks are the config's
        except ValueError as exc:
            raise positioned(block, f"http: {exc}") from None
        for name in (
            "max_line_size",
            "reject_old_samples_max_age",
            "creation_grace_period",
        ):
            if getattr(args, name) < 0:
                raise positioned(block, f"{name} must not be negative")
        if args.max_inflight_push_requests_bytes <= 0:
            raise positioned(
                block, "max_inflight_push_requests_bytes must be greater than 0"
            )
        check_relabel_rules(args.relabel_rules, block)
        if args.graceful_shutdown_timeout <= 0:
            raise positioned(block, "graceful_shutdown_timeout must be greater than 0")

    def __init__(self, opts: ComponentOptions, args: LokiSourceAPIArgs) -> None:
        super().__init__(opts, args)
        self._fanout = self.output_fanout(args.forward_to)
        self._registry = opts.registry
        self._server = self._build(args, self._registry)
        self._last_stamp_ns = 0

    def _build(
        self, args: LokiSourceAPIArgs, registry: CollectorRegistry
    ) -> PushReceiver:
        http = args.server
        return PushReceiver(
            self._handle,
            host=http.listen_address or "0.0.0.0",
            port=http.listen_port,
            registry=registry,
            # 0 is Alloy's "default" (routes.go newRoutes).
            max_recv_msg_size=args.max_send_message_size or DEFAULT_MAX_RECV_MSG_SIZE,
            entry_limits=args.entry_limits(),
            max_inflight_bytes=args.max_inflight_push_requests_bytes,
            server_limits=args.server_limits,
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
                async with asyncio.timeout(self.args.graceful_shutdown_timeout):
                    await self._server.aclose()
            except TimeoutError:
                self.log.warning("HTTP server did not shut down gracefully in time")

    async def stop_unstarted(self) -> None:
        await self._server.aclose()

    async def update(self, args: LokiSourceAPIArgs) -> None:
        self._fanout.set(args.forward_to)
        if args.server_key() != self.args.server_key():
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
            self._server.entry_limits = args.entry_limits()
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
        static = args.labels
        rules = args.stream_rules
        stamp = not args.use_incoming_timestamp
        for batch in batches:
            labels = {**batch.labels, **static} if static else batch.labels
            if rules is not None:
                # Internal labels go after relabeling, as in Alloy; the tenant stays:
                # it is how the writer picks X-Scope-OrgID.
                relabelled = relabel_stream(labels, rules, keep=_KEEP)
                if relabelled is None:
                    batch.settle()
                    continue
                labels = relabelled
            # Alloy stamps pushed entries with the receive time unless told otherwise.
            entries = self._stamp(batch.entries) if stamp else batch.entries
            await self._fanout.send(StreamBatch(labels, entries, batch.delivery))

    def debug_info(self) -> Any:
        return {"url": self.url}
