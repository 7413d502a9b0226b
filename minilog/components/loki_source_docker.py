"""``loki.source.docker``: tails the containers in ``targets`` (``tail.DockerSource``).

Owns the Docker client, the positions file (``<storage>/<id>/positions.json``) and the
reset rule: a change of ``host``, ``labels`` or ``relabel_rules`` replaces the source
(the old one stops first and records its positions, so the new one resumes exactly);
a change of ``targets`` or ``forward_to`` is applied in place and untouched tailers run
on. Health: unhealthy, with the reason, while Docker does not answer a ping or the
positions file cannot be saved; healthy again once both work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from minilog.components.arguments import (
    check_docker_host,
    check_relabel_rules,
    legacy_rules,
    positioned,
)
from minilog.components.base import Component, ComponentOptions, register
from minilog.components.tailing import (
    positions_debug_info,
    positions_health,
    run_until_replaced,
)
from minilog.config.ast import Block
from minilog.config.schema import attr
from minilog.docker.client import DockerClient
from minilog.docker.discovery import SLOW_AFTER_S
from minilog.docker.metrics import SourceMetrics
from minilog.docker.positions import Positions
from minilog.docker.source import DockerSource
from minilog.docker.tailer import LOGS_FROM, TargetInfo
from minilog.errors import ClosedError, DockerError, LabelError
from minilog.labels import parse_labels
from minilog.model import LogsReceiver
from minilog.relabel import RelabelRules, docker_stream_labels

__all__ = ["LokiSourceDocker", "LokiSourceDockerArgs"]

#: How often the source asks Docker ``/_ping`` while it answers, and while it does not.
#: Without it, a source with no target (discovery cannot list either) would never
#: notice that Docker is gone; a ping costs dockerd next to nothing.
_PROBE_INTERVAL_S: Final = 5.0
_PROBE_RETRY_S: Final = 1.0


@dataclass(frozen=True, kw_only=True)
class LokiSourceDockerArgs:
    """``loki.source.docker``'s arguments, Alloy's names and defaults."""

    host: str = attr("string", required=True)
    targets: tuple[Mapping[str, str], ...] = attr("list(map(string))", required=True)
    forward_to: tuple[LogsReceiver, ...] = attr("list(capsule)", required=True)
    labels: Mapping[str, str] = attr("map(string)", {})
    relabel_rules: RelabelRules | None = attr("capsule")
    refresh_interval: float = attr("duration", 60.0)
    #: minilog's own: where containers' logs are read ("auto", "api", "file").
    logs_from: str = attr("string", "auto")

    @functools.cached_property
    def stream_rules(self) -> RelabelRules | None:
        """``relabel_rules`` as the tailers apply them (legacy label names)."""
        return legacy_rules(self.relabel_rules)

    def resets(self, old: LokiSourceDockerArgs) -> bool:
        """Whether going from ``old`` needs a new source (Alloy's ``requiresReset``;
        Alloy does not reset on ``labels``, but minilog's tailers compute labels once
        per stream at start)."""
        return (
            self.host,
            self.labels,
            self.relabel_rules,
            self.refresh_interval,
            self.logs_from,
        ) != (
            old.host,
            old.labels,
            old.relabel_rules,
            old.refresh_interval,
            old.logs_from,
        )


@register
class LokiSourceDocker(Component[LokiSourceDockerArgs]):
    """Tails every container named by ``targets``; no exports."""

    name = "loki.source.docker"
    args_class = LokiSourceDockerArgs
    phase = "source"

    @classmethod
    def check_args(cls, args: LokiSourceDockerArgs, block: Block) -> None:
        check_docker_host(args.host, args.refresh_interval, block, source=True)
        check_relabel_rules(args.relabel_rules, block)
        if args.logs_from not in LOGS_FROM:
            raise positioned(
                block,
                f"logs_from must be one of {', '.join(map(repr, LOGS_FROM))}, "
                f"not {args.logs_from!r}",
            )

    def __init__(self, opts: ComponentOptions, args: LokiSourceDockerArgs) -> None:
        super().__init__(opts, args)
        self._fanout = self.output_fanout(args.forward_to)
        path = opts.data_path / "positions.json"
        self._positions = Positions(path, on_save=positions_health(self, path))
        self._client = DockerClient(args.host)
        self._old_clients: list[DockerClient] = []
        # One set of series for the component's life: a source rebuilt on reload
        # counts on in it, as Alloy's does.
        self._metrics = SourceMetrics(opts.registry)
        self._source = self._build(args)
        self._replaced = asyncio.Event()

    def _build(self, args: LokiSourceDockerArgs) -> DockerSource:
        source = DockerSource(
            self._client,
            [self._fanout],
            labels=args.labels,
            relabel_rules=args.stream_rules,
            positions=self._positions,
            metrics=self._metrics,
            logs_from=args.logs_from,
        )
        source.update_targets(args.targets)
        return source

    def _docker_failing(self, message: str) -> None:
        if not self.has_problem("docker"):
            self.log.warning(message)
        self.report_problem("docker", message)

    def _ping_late(self, message: str) -> None:
        # A known failure keeps its own reason while later pings hang too.
        if not self.has_problem("docker"):
            self._docker_failing(message)

    async def _probe_docker(self) -> None:
        """Keep the ``docker`` problem in step with whether Docker answers a ping."""
        loop = asyncio.get_running_loop()
        while True:
            client = self._client
            late = loop.call_later(
                SLOW_AFTER_S,
                self._ping_late,
                f"cannot reach Docker: Docker at {client.host} has not answered for "
                f"{SLOW_AFTER_S:g} s",
            )
            try:
                answered = await client.ping()
            except ClosedError:
                pass  # the host changed under the ping: ask the new client next
            except DockerError as exc:
                self._docker_failing(f"cannot reach Docker: {exc}")
            else:
                if answered:
                    if self.has_problem("docker"):
                        self.log.info("Docker is reachable again")
                    self.clear_problem("docker", "Docker is reachable again")
                else:
                    self._docker_failing(
                        f"cannot reach Docker: Docker at {client.host} did not "
                        "answer its ping with OK"
                    )
            finally:
                late.cancel()
            healthy = not self.has_problem("docker")
            await asyncio.sleep(_PROBE_INTERVAL_S if healthy else _PROBE_RETRY_S)

    async def run(self) -> None:
        """Owns the Docker probe and the current source: both stop with it, and a
        source that ends by itself ends the component (unhealthy, with the reason)."""
        probe = asyncio.create_task(self._probe_docker(), name=f"{self.id} probe")
        try:
            while True:
                await run_until_replaced(
                    self._source,
                    self._replaced,
                    name=f"{self.id} source",
                    what="the Docker source",
                )
                for client in self._old_clients:
                    await client.aclose()
                self._old_clients.clear()
                # Built only now: its tailers read their start positions when created,
                # and the old source has just recorded the final ones.
                self._source = self._build(self.args)
        finally:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            self.set_health("exited", "stopped")

    async def finalize(self) -> None:
        # Writers have flushed by now: persist what they acknowledged, then close.
        with contextlib.suppress(OSError):  # Positions logs it (once) and keeps it
            await self._positions.asave()
        for client in [*self._old_clients, self._client]:
            await client.aclose()

    async def stop_unstarted(self) -> None:
        await self._client.aclose()

    async def update(self, args: LokiSourceDockerArgs) -> None:
        old, self.args = self.args, args
        self._fanout.set(args.forward_to)
        if not args.resets(old):
            self._source.update_targets(args.targets)
            return
        if args.host != old.host:
            # The old client serves the old source until that has stopped.
            self._old_clients.append(self._client)
            self._client = DockerClient(args.host)
        # The run loop stops the current source, then builds the replacement.
        self._replaced.set()

    def final_labels(self, target_labels: Mapping[str, str]) -> dict[str, Any]:
        """Per stream, the labels this target's entries reach Loki with (None: dropped).

        The same steps the tailer takes: add the stream, apply ``relabel_rules``, drop
        ``__``-prefixed names.
        """
        rules = self.args.stream_rules
        return {
            stream: docker_stream_labels(target_labels, stream, rules)
            for stream in ("stdout", "stderr")
        }

    def targets_info(self) -> list[TargetInfo]:
        """Every tailer's state (the UI's explanation of each container)."""
        return self._source.targets_info()

    def debug_info(self) -> Any:
        targets = []
        for info in self._source.targets_info():
            item = asdict(info)
            try:
                item["final_labels"] = self.final_labels(parse_labels(info.labels))
            except LabelError as exc:
                item["final_labels"] = {"error": str(exc)}
            targets.append(item)
        return {"targets_info": targets, **positions_debug_info(self._positions)}
