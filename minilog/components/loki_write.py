"""``loki.write``: exports a stable ``receiver`` backed by a ``write.Writer``.

Maps Alloy's arguments (``endpoint`` blocks with ``basic_auth`` / ``tls_config`` /
``queue_config``, ``external_labels``, ``max_streams``) onto ``EndpointConfig``. An
update that changes them builds a new writer, points the receiver at it, then drains the
old one, so nothing upstream ever holds a closed writer and nothing queued is dropped.

minilog extensions in the ``endpoint`` block (Alloy v1.18 has neither; accepted at the
default stability level, as ``loki.source.api``'s are): ``adaptive_batching`` (a batch
leaves before ``batch_wait`` when no request is in flight and it has been open
``batch_linger``; ``false`` is exact Alloy batching) and ``batch_linger``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minilog.components.arguments import (
    BASIC_AUTH_SCHEMA,
    TLS_CONFIG_SCHEMA,
    basic_auth_of,
    positioned,
    tls_config_of,
)
from minilog.components.base import (
    STABLE,
    Component,
    ComponentOptions,
    Health,
    StableReceiver,
    register,
)
from minilog.config.ast import Block
from minilog.config.schema import Attr, BlockSpec, Schema, defaults_of
from minilog.errors import ConfigError, Diagnostic
from minilog.write import EndpointConfig, WriteMetrics, Writer

__all__ = ["LokiWrite", "LokiWriteArgs", "drain_deadline", "endpoint_configs"]

#: ``EndpointConfig``'s defaults: the one home of ``loki.write``'s.
_DEFAULT = defaults_of(EndpointConfig)
#: ``queue_config`` is experimental in Alloy: values other than these need
#: ``--stability.level=experimental``.
_QUEUE_DEFAULTS = {
    "capacity": _DEFAULT["queue_capacity"],
    "drain_timeout": _DEFAULT["drain_timeout"],
    "min_shards": _DEFAULT["min_shards"],
    "block_on_overflow": _DEFAULT["block_on_overflow"],
}

_ENDPOINT_SCHEMA = Schema(
    attrs=[
        Attr("url", "string", required=True),
        Attr("name", "string", default=_DEFAULT["name"]),
        Attr("batch_wait", "duration", default=_DEFAULT["batch_wait"]),
        Attr("batch_size", "bytes", default=_DEFAULT["batch_size"]),
        Attr("remote_timeout", "duration", default=_DEFAULT["remote_timeout"]),
        Attr("tenant_id", "string", default=_DEFAULT["tenant_id"]),
        Attr("headers", "map(string)", default=_DEFAULT["headers"]),
        Attr("bearer_token", "secret", default=_DEFAULT["bearer_token"]),
        Attr("bearer_token_file", "string", default=_DEFAULT["bearer_token_file"]),
        Attr("min_backoff_period", "duration", default=_DEFAULT["min_backoff_period"]),
        Attr("max_backoff_period", "duration", default=_DEFAULT["max_backoff_period"]),
        Attr("max_backoff_retries", "int", default=_DEFAULT["max_backoff_retries"]),
        Attr("retry_on_http_429", "bool", default=_DEFAULT["retry_on_http_429"]),
        # minilog extensions: batches leave early when nothing is in flight.
        Attr("adaptive_batching", "bool", default=_DEFAULT["adaptive_batching"]),
        Attr("batch_linger", "duration", default=_DEFAULT["batch_linger"]),
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
                    Attr("min_shards", "int", default=_QUEUE_DEFAULTS["min_shards"]),
                    Attr(
                        "block_on_overflow",
                        "bool",
                        default=_QUEUE_DEFAULTS["block_on_overflow"],
                    ),
                ]
            ),
        ),
    ],
)


@dataclass(frozen=True, slots=True)
class LokiWriteArgs:
    """``loki.write``'s arguments: its endpoints as ``EndpointConfig``s."""

    endpoints: tuple[EndpointConfig, ...]
    external_labels: Mapping[str, str]
    max_streams: int


def endpoint_configs(
    values: Mapping[str, Any],
    block: Block,
    *,
    stability_level: str = STABLE,
) -> list[EndpointConfig]:
    """Decoded ``endpoint`` blocks -> ``EndpointConfig``s; problems are positioned.

    Raises:
        ConfigError: no endpoint, an invalid endpoint, or an experimental setting used
            without ``--stability.level=experimental``.
    """
    endpoint_blocks = [
        s for s in block.body if isinstance(s, Block) and s.full_name == "endpoint"
    ]
    endpoints = list(values["endpoint"])
    if not endpoints:
        raise positioned(block, "at least one endpoint config must be provided")
    diagnostics: list[Diagnostic] = []
    out: list[EndpointConfig] = []
    for i, ep in enumerate(endpoints):
        where = endpoint_blocks[i] if i < len(endpoint_blocks) else block
        try:
            out.append(_endpoint(ep, stability_level))
        except ConfigError as exc:
            pos = where.pos
            diagnostics.extend(
                Diagnostic(pos.file, pos.line, pos.col, d.message)
                for d in exc.diagnostics
            )
    seen: set[str] = set()
    for given, config in zip(endpoints, out, strict=False):
        if not diagnostics and config.name in seen:
            # Alloy names the duplicate by its ``name`` argument (empty when two
            # unnamed endpoints are the same configuration).
            raise positioned(
                block,
                "duplicate endpoint configs are not allowed, found duplicate for "
                f"name: {given['name']}",
            )
        seen.add(config.name)
    if diagnostics:
        raise ConfigError(diagnostics)
    return out


def _check_http_client(ep: Mapping[str, Any]) -> None:
    """Alloy's ``HTTPClientConfig.Validate`` for the parts minilog supports."""
    auth = ep["basic_auth"]
    methods = [
        auth is not None,
        bool(ep["bearer_token"]),
        bool(ep["bearer_token_file"]),
    ]
    if sum(methods) > 1:
        raise ConfigError(
            "at most one of basic_auth, authorization, oauth2, bearer_token & "
            "bearer_token_file must be configured"
        )
    if auth is not None and auth["password"] and auth["password_file"]:
        raise ConfigError(
            "at most one of basic_auth password & password_file must be configured"
        )
    tls = ep["tls_config"]
    if tls is not None:
        if tls["cert_file"] and not tls["key_file"]:
            raise ConfigError(
                "exactly one of key_pem or key_file must be configured when a client "
                "certificate is configured"
            )
        if tls["key_file"] and not tls["cert_file"]:
            raise ConfigError(
                "exactly one of cert_pem or cert_file must be configured when a client "
                "key is configured"
            )


def _endpoint(ep: Mapping[str, Any], stability_level: str) -> EndpointConfig:
    _check_http_client(ep)
    queue = ep["queue_config"] or _QUEUE_DEFAULTS
    if stability_level != "experimental" and any(
        queue[k] != v for k, v in _QUEUE_DEFAULTS.items()
    ):
        raise ConfigError(
            "changing queue_config requires stability.level flag to be experimental"
        )
    return EndpointConfig(
        url=ep["url"],
        name=ep["name"],
        batch_wait=ep["batch_wait"],
        batch_size=ep["batch_size"],
        remote_timeout=ep["remote_timeout"],
        tenant_id=ep["tenant_id"],
        headers=dict(ep["headers"]),
        basic_auth=basic_auth_of(ep["basic_auth"]),
        bearer_token=str(ep["bearer_token"]),
        bearer_token_file=ep["bearer_token_file"],
        tls_config=tls_config_of(ep["tls_config"]),
        min_backoff_period=ep["min_backoff_period"],
        max_backoff_period=ep["max_backoff_period"],
        max_backoff_retries=ep["max_backoff_retries"],
        retry_on_http_429=ep["retry_on_http_429"],
        queue_capacity=queue["capacity"],
        min_shards=queue["min_shards"],
        drain_timeout=queue["drain_timeout"],
        block_on_overflow=queue["block_on_overflow"],
        adaptive_batching=ep["adaptive_batching"],
        batch_linger=ep["batch_linger"],
    )


def drain_deadline(
    endpoints: Sequence[EndpointConfig], shutdown_deadline: float | None
) -> float | None:
    """How long a stopping writer may drain: the endpoints' own ``drain_timeout``,
    capped by the agent's shutdown deadline (Alloy's
    ``--feature.component-shutdown-deadline`` bounds, never extends); ``None``: each
    endpoint's own."""
    if shutdown_deadline is None:
        return None
    own = max(c.drain_timeout for c in endpoints)
    return min(own, shutdown_deadline)


@register
class LokiWrite(Component[LokiWriteArgs]):
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
    def parse_args(
        cls, values: Mapping[str, Any], block: Block, *, stability_level: str = STABLE
    ) -> LokiWriteArgs:
        endpoints = endpoint_configs(values, block, stability_level=stability_level)
        if values["max_streams"] < 0:
            raise positioned(block, "max_streams must be >= 0")
        return LokiWriteArgs(
            tuple(endpoints), dict(values["external_labels"]), values["max_streams"]
        )

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id)}

    def __init__(self, opts: ComponentOptions, args: LokiWriteArgs) -> None:
        super().__init__(opts, args)
        # One set of loki_write_* series for the component's life: a writer rebuilt
        # by a reload (and the old one draining) count into it, as in Alloy.
        self._metrics = WriteMetrics(opts.registry)
        self._writer = self._build(args)
        self._receiver = StableReceiver(opts.id, self._writer)
        self._exports = {"receiver": self._receiver}
        self._retiring: set[asyncio.Task[None]] = set()

    def _build(self, args: LokiWriteArgs) -> Writer:
        return Writer(
            args.endpoints,
            external_labels=args.external_labels,
            max_streams=args.max_streams,
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
        return drain_deadline(self.args.endpoints, self.opts.drain_timeout)

    async def stop_unstarted(self) -> None:
        self._receiver.target = None
        await self._writer.aclose(0)

    async def update(self, args: LokiWriteArgs) -> None:
        old_args, self.args = self.args, args
        if args == old_args:
            return
        writer = self._build(args)
        await writer.start()
        old, self._writer = self._writer, writer
        self._receiver.target = writer
        # The old writer drains in the background, owned here and awaited at shutdown.
        task = asyncio.create_task(self._retire(old))
        self._retiring.add(task)

    async def _retire(self, writer: Writer) -> None:
        try:
            await writer.aclose(self._drain_timeout())
        except Exception as exc:
            self.log.error("draining the replaced writer failed", exc_info=exc)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._retiring.discard(task)

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
