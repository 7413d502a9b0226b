"""``loki.write``: exports a stable ``receiver`` backed by a ``write.Writer``.

Maps Alloy's arguments (``endpoint`` blocks with ``basic_auth`` / ``tls_config`` /
``queue_config``, ``external_labels``, ``max_streams``) onto ``EndpointConfig``. An
update that changes them builds a new writer, points the receiver at it, then drains the
old one, so nothing upstream ever holds a closed writer and nothing queued is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from minilog.components.base import (
    BASIC_AUTH_SCHEMA,
    TLS_CONFIG_SCHEMA,
    Component,
    ComponentOptions,
    Health,
    StableReceiver,
    positioned,
    register,
)
from minilog.config.ast import Block
from minilog.config.schema import Attr, BlockSpec, Schema
from minilog.errors import ConfigError, Diagnostic
from minilog.loki.push import BasicAuth, TLSConfig
from minilog.write import EndpointConfig, WriteMetrics, Writer

__all__ = ["LokiWrite", "endpoint_configs"]

# queue_config is experimental in Alloy: non-default values need
# --stability.level=experimental.
_QUEUE_DEFAULTS = {"capacity": 10 << 20, "drain_timeout": 15.0, "min_shards": 1}


_ENDPOINT_SCHEMA = Schema(
    attrs=[
        Attr("url", "string", required=True),
        Attr("name", "string", default=""),
        Attr("batch_wait", "duration", default=1.0),
        Attr("batch_size", "bytes", default=1 << 20),
        Attr("remote_timeout", "duration", default=10.0),
        Attr("tenant_id", "string", default=""),
        Attr("headers", "map(string)", default={}),
        Attr("bearer_token", "secret", default=""),
        Attr("bearer_token_file", "string", default=""),
        Attr("min_backoff_period", "duration", default=0.5),
        Attr("max_backoff_period", "duration", default=300.0),
        Attr("max_backoff_retries", "int", default=10),
        Attr("retry_on_http_429", "bool", default=True),
    ],
    blocks=[
        BlockSpec("basic_auth", BASIC_AUTH_SCHEMA),
        BlockSpec("tls_config", TLS_CONFIG_SCHEMA),
        BlockSpec(
            "queue_config",
            Schema(
                attrs=[
                    Attr("capacity", "bytes", default=_QUEUE_DEFAULTS["capacity"]),
                    Attr(
                        "drain_timeout",
                        "duration",
                        default=_QUEUE_DEFAULTS["drain_timeout"],
                    ),
                    Attr("min_shards", "int", default=1),
                ]
            ),
        ),
    ],
)


def endpoint_configs(
    args: Mapping[str, Any],
    block: Block,
    *,
    stability_level: str = "generally-available",
) -> list[EndpointConfig]:
    """Decoded ``endpoint`` blocks -> ``EndpointConfig``s; problems are positioned.

    Raises:
        ConfigError: no endpoint, an invalid endpoint, or an experimental setting used
            without ``--stability.level=experimental``.
    """
    endpoint_blocks = [
        s for s in block.body if isinstance(s, Block) and s.full_name == "endpoint"
    ]
    endpoints = list(args.get("endpoint") or [])
    if not endpoints:
        raise positioned(block, "at least one endpoint config must be provided")
    diagnostics: list[Diagnostic] = []
    out: list[EndpointConfig] = []
    for i, ep in enumerate(endpoints):
        where = endpoint_blocks[i] if i < len(endpoint_blocks) else block
        try:
            out.append(_endpoint(ep, where, stability_level))
        except ConfigError as exc:
            pos = where.pos
            diagnostics.extend(
                Diagnostic(pos.file, pos.line, pos.col, d.message)
                for d in exc.diagnostics
            )
    names = [e.name for e in out]
    if not diagnostics and len(set(names)) != len(names):
        raise positioned(
            block, "duplicate endpoint configs are not allowed, found duplicate names"
        )
    if diagnostics:
        raise ConfigError(diagnostics)
    return out


def _endpoint(
    ep: Mapping[str, Any], block: Block, stability_level: str
) -> EndpointConfig:
    basic = ep.get("basic_auth")
    tls = ep.get("tls_config")
    queue = ep.get("queue_config") or {}
    if isinstance(basic, list):
        basic = basic[0] if basic else None
    if isinstance(tls, list):
        tls = tls[0] if tls else None
    if isinstance(queue, list):
        queue = queue[0] if queue else {}
    queue = {**_QUEUE_DEFAULTS, **queue}
    if stability_level != "experimental" and any(
        queue[k] != v for k, v in _QUEUE_DEFAULTS.items()
    ):
        raise ConfigError(
            "queue_config is experimental: run with --stability.level=experimental "
            "to use non-default values"
        )
    if queue["min_shards"] != 1:
        raise ConfigError("queue_config: minilog supports only min_shards = 1")
    return EndpointConfig(
        url=str(ep["url"]),
        name=str(ep.get("name") or ""),
        batch_wait=float(ep.get("batch_wait", 1.0)),
        batch_size=int(ep.get("batch_size", 1 << 20)),
        remote_timeout=float(ep.get("remote_timeout", 10.0)),
        tenant_id=str(ep.get("tenant_id") or ""),
        headers=dict(ep.get("headers") or {}),
        basic_auth=None
        if not basic
        else BasicAuth(
            username=str(basic.get("username") or ""),
            password=str(basic.get("password") or ""),
            password_file=str(basic.get("password_file") or ""),
        ),
        bearer_token=str(ep.get("bearer_token") or ""),
        bearer_token_file=str(ep.get("bearer_token_file") or ""),
        tls_config=None
        if not tls
        else TLSConfig(
            ca_file=str(tls.get("ca_file") or ""),
            cert_file=str(tls.get("cert_file") or ""),
            key_file=str(tls.get("key_file") or ""),
            server_name=str(tls.get("server_name") or ""),
            insecure_skip_verify=bool(tls.get("insecure_skip_verify", False)),
        ),
        min_backoff_period=float(ep.get("min_backoff_period", 0.5)),
        max_backoff_period=float(ep.get("max_backoff_period", 300.0)),
        max_backoff_retries=int(ep.get("max_backoff_retries", 10)),
        retry_on_http_429=bool(ep.get("retry_on_http_429", True)),
        queue_capacity=int(queue["capacity"]),
        drain_timeout=float(queue["drain_timeout"]),
    )


@register
class LokiWrite(Component):
    """Ships what reaches ``receiver`` to every endpoint (``write.Writer``)."""

    name = "loki.write"
    schema = Schema(
        attrs=[
            Attr("external_labels", "map(string)", default={}),
            Attr("max_streams", "int", default=0),
        ],
        blocks=[BlockSpec("endpoint", _ENDPOINT_SCHEMA, repeated=True)],
    )
    phase = "write"

    @classmethod
    def prepare(
        cls,
        args: Mapping[str, Any],
        block: Block,
        *,
        stability_level: str = "generally-available",
    ) -> dict[str, Any]:
        out = dict(args)
        out["endpoint_configs"] = endpoint_configs(
            args, block, stability_level=stability_level
        )
        if int(out.get("max_streams") or 0) < 0:
            raise positioned(block, "max_streams must be >= 0")
        return out

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id)}

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
        super().__init__(opts, args)
        # One set of loki_write_* series for the component's life: a writer rebuilt
        # by a reload (and the old one draining) count into it, as in Alloy.
        self._metrics = WriteMetrics(opts.registry)
        self._writer = self._build(args)
        self._receiver = StableReceiver(opts.id, self._writer)
        self._exports = {"receiver": self._receiver}
        self._retiring: set[asyncio.Task[None]] = set()

    def _build(self, args: Mapping[str, Any]) -> Writer:
        return Writer(
            args["endpoint_configs"],
            external_labels=dict(args.get("external_labels") or {}),
            max_streams=int(args.get("max_streams") or 0),
            registry=self.opts.registry,
            metrics=self._metrics,
        )

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def start(self) -> None:
        await self._writer.start()

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self._receiver.target = None
            await self._writer.aclose(self._drain_timeout())
            if self._retiring:
                await asyncio.gather(*self._retiring, return_exceptions=True)

    def _drain_timeout(self) -> float | None:
        """The endpoints' own ``drain_timeout``, capped by the agent's shutdown deadline
        (Alloy's ``--feature.component-shutdown-deadline`` bounds, never extends)."""
        deadline = self.opts.drain_timeout
        if deadline is None:
            return None
        configs: list[EndpointConfig] = self.args["endpoint_configs"]
        own = max(c.drain_timeout for c in configs)
        return min(own, deadline)

    async def stop_unstarted(self) -> None:
        self._receiver.target = None
        await self._writer.aclose(0)

    async def update(self, args: Mapping[str, Any]) -> None:
        old_args, self.args = self.args, args
        if (
            args["endpoint_configs"] == old_args["endpoint_configs"]
            and args.get("external_labels") == old_args.get("external_labels")
            and args.get("max_streams") == old_args.get("max_streams")
        ):
            return
        writer = self._build(args)
        await writer.start()
        old, self._writer = self._writer, writer
        self._receiver.target = writer
        # The old writer drains in the background, owned here and awaited at shutdown.
        task = asyncio.create_task(old.aclose(self._drain_timeout()))
        self._retiring.add(task)
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        with contextlib.suppress(asyncio.CancelledError):
            exc = task.exception()
            if exc is not None:
                self.log.error("draining the replaced writer failed", exc_info=exc)

    def health(self) -> Health:
        # An endpoint past max_backoff_retries holds its entries rather than dropping
        # them: the component says so, as Alloy's would only by its drop counters.
        failing = [s for s in self._writer.endpoint_states() if s["failing"]]
        if failing:
            self.report_problem(
                "endpoints",
                "; ".join(
                    f"endpoint {s['name']} ({s['url']}) failing past its retries, "
                    f"{s['pending_entries']} entries held"
                    for s in failing
                ),
            )
        else:
            self.clear_problem("endpoints", "endpoints answering again")
        return super().health()

    def debug_info(self) -> Any:
        # URLs without userinfo, no credential: what the writer itself reports.
        return {
            "endpoints": self._writer.endpoint_states(),
            "queued_bytes": self._writer.queued_bytes(),
        }
