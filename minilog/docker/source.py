"""``loki.source.docker``: the supervisor that keeps one tailer per target container.

Owns target reconciliation (a discovery update starts, keeps or stops tailers;
alloy-spec §3.2), when a tailer's task ends (a container that is gone or left
discovery ends it) and which positions are stale (containers removed while nothing
tailed them). The task group, crash restarts, idle tailers, saves and the drain are
every tailing source's (``minilog.tailing``). A tailer is ``tailer``, the metrics
``metrics``, the file ``positions``, HTTP ``client``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry

from minilog.docker.frames import DEFAULT_MAX_LINE_SIZE
from minilog.docker.metrics import SourceMetrics, TargetRow
from minilog.docker.positions import Positions
from minilog.docker.tailer import (
    LOGS_FROM,
    ContainerTailer,
    DockerLogsAPI,
    TailerContext,
    TargetInfo,
)
from minilog.docker.targets import dedupe_targets
from minilog.errors import DockerError, MinilogError
from minilog.fswatch import DirectoryWatcher
from minilog.labels import DOCKER_CONTAINER_NAME
from minilog.ledger import JOIN_WINDOW_S
from minilog.model import LogsReceiver
from minilog.relabel import RelabelRulesLike
from minilog.tailing import DRAIN_TIMEOUT_S, TailerSupervisor

__all__ = ["DockerSource"]

_log = logging.getLogger(__name__)


class DockerSource:
    """``loki.source.docker``: tails the containers of ``targets``, forwards lines.

    Args:
        client: a ``docker.client.DockerClient`` (any ``DockerLogsAPI``); not closed.
        forward_to: receivers, sent to in order (a blocked one blocks the rest).
        labels: static labels merged over each target's labels.
        relabel_rules: applied once per stream (stdout/stderr) with
            ``__meta_docker_container_log_stream`` set; ``__``-prefixed names are then
            dropped.
        positions: committed positions; saved as soon as they move (at most once per
            ``flush_interval_s``) and at close.
        registry: metrics registry (a private one when ``None``; never the global one).
        metrics: the metrics to count into, when several sources share them (a
            component rebuilding its source on reload); else made on ``registry``.
        max_line_size: longer lines are truncated to it and counted (see ``_frames``).
        inspect_interval_s: how often a stopped container is checked (Alloy: 5 s).
        tail_window: resume with ``since`` plus ``tail`` of this many records when a
            probe shows that is exact (see ``ContainerTailer._resume_window``); 0: off.
        flush_interval_s: the least time between two writes of the positions file.
        clock: wall clock in Unix seconds, for the lag metric.
        logs_from: where a container's log is read (``tailer.LOGS_FROM``): "auto"
            reads the json-file on disk when the container's logging driver is
            json-file and its ``LogPath`` is readable, else the API; "api" and
            "file" force one path (a minilog extension).
        join_window_s: how long a read whose delivery is pending takes in the reads
            that follow (``ledger.JOIN_WINDOW_S``); 0: one delivery per read.

    Call ``update_targets`` whenever discovery changes, ``poke(id)`` when it sees a
    container start, ``run()`` in a task and ``aclose()`` to stop. Unlike Alloy, a
    stopped container keeps its position (only removal deletes it), and the position is
    the Docker timestamp in ns plus the number of lines at it, so a restart re-sends
    nothing that was acknowledged.
    """

    def __init__(
        self,
        client: DockerLogsAPI,
        forward_to: Sequence[LogsReceiver],
        *,
        labels: Mapping[str, str] | None = None,
        relabel_rules: RelabelRulesLike | None = None,
        positions: Positions,
        registry: CollectorRegistry | None = None,
        metrics: SourceMetrics | None = None,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        inspect_interval_s: float = 5.0,
        tail_window: int = 1000,
        flush_interval_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        logs_from: str = "auto",
        join_window_s: float = JOIN_WINDOW_S,
    ) -> None:
        if metrics is None:
            metrics = SourceMetrics(
                registry if registry is not None else CollectorRegistry()
            )
        self._metrics = metrics
        metrics.sources.add(self)
        if logs_from not in LOGS_FROM:
            raise ValueError(f"logs_from must be one of {', '.join(LOGS_FROM)}")
        watcher = DirectoryWatcher() if logs_from != "api" else None
        self._supervisor: TailerSupervisor[ContainerTailer] = TailerSupervisor(
            name="DockerSource",
            positions=positions,
            crashes=metrics.crashes,
            log=_log,
            describe=lambda cid: f"container {cid[:12]}",
            task_name=lambda cid: f"docker-tailer-{cid[:12]}",
            sweep=self._drop_removed_positions,
            sweep_name="docker positions sweep",
            run_again=self._run_again,
            watcher=watcher,
            flush_interval_s=flush_interval_s,
        )
        self._ctx = TailerContext(
            client=client,
            forward_to=list(forward_to),
            relabel_rules=relabel_rules,
            positions=positions,
            metrics=self._metrics,
            max_line_size=max_line_size,
            inspect_interval_s=inspect_interval_s,
            tail_window=tail_window,
            clock=clock,
            on_settled=self._supervisor.on_settled,
            join_window_s=join_window_s,
            logs_from=logs_from,
            watcher=watcher,
        )
        self._labels = dict(labels or {})
        self._positions = positions
        # The supervisor's own dict: reconciled here, supervised there.
        self._tailers = self._supervisor.tailers

    # -- discovery side --

    def update_targets(self, targets: Sequence[Mapping[str, str]]) -> None:
        """Reconcile tailers with ``targets`` (discovery output); call on the loop."""
        desired = dedupe_targets(targets, self._labels)
        self._metrics.targets.set(len(desired))
        for cid, labels in desired.items():
            tailer = self._tailers.get(cid)
            if tailer is None:
                tailer = self._supervisor.take_idle(cid) or ContainerTailer(
                    self._ctx, cid, labels
                )
                self._tailers[cid] = tailer
            tailer.set_labels(labels)
            if tailer.detached:
                tailer.attach()
            self._supervisor.start(cid, tailer)
        for cid, tailer in self._tailers.items():
            if cid not in desired and not tailer.detached:
                tailer.detach()
        for cid in [
            c for c, t in self._tailers.items() if t.detached and t.task is None
        ]:
            self._retire(cid, self._tailers.pop(cid))

    def poke(self, container_id: str) -> None:
        """Discovery saw ``container_id`` start: check it now, not at the next tick."""
        tailer = self._tailers.get(container_id)
        if tailer is not None:
            tailer.poke()

    def targets_info(self) -> list[TargetInfo]:
        return [t.info() for t in self._tailers.values()]

    # -- what the metrics read at scrape time --

    def target_rows(self) -> Iterator[tuple[str, TargetRow]]:
        now = self._ctx.clock()
        for tailer in list(self._tailers.values()):
            cid = tailer.container_id
            name = tailer.labels.get(DOCKER_CONTAINER_NAME, "").lstrip("/")
            yield cid, (name, cid[:12], tailer.is_running, tailer.lag_s(now))

    def max_lag(self) -> float:
        now = self._ctx.clock()
        return max((t.lag_s(now) for t in self._tailers.values()), default=0.0)

    def positions_unsaved_for(self, now: float) -> float:
        return self._positions.unsaved_for(now)

    # -- lifetime --

    async def run(self) -> None:
        """Tail until cancelled (or ``aclose()``); saves positions on the way out.

        Owns every tailer's task, the stale-position sweep and the positions flusher
        in one task group: cancelling ``run`` stops them all, and waits for them.
        """
        await self._supervisor.run()

    async def aclose(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop tailing, wait up to ``drain_timeout_s`` for deliveries in flight, then
        save positions.

        Idempotent. Deliveries settling later still update the in-memory positions; call
        ``positions.save()`` again if the writer drains after this returns.
        """
        await self._supervisor.aclose(drain_timeout_s)

    async def _drop_removed_positions(self) -> None:
        """Drop positions of containers removed while nothing tailed them.

        A position is only removed by a tailer that sees its container gone; one
        removed while the agent was down, or after it left discovery, would otherwise
        stay in the file for ever. The supervisor runs this at start and every 10 min.
        """
        for cid in self._positions.ids():
            if self._supervisor.tails(cid):
                continue
            try:
                await self._ctx.client.inspect(cid)
            except DockerError as exc:
                if exc.status != 404:
                    break  # the daemon is away: try again next round
                if cid not in self._tailers:
                    self._positions.remove(cid)
            except MinilogError:
                break  # e.g. the client was closed: nothing to do this round

    def _run_again(self, cid: str, tailer: ContainerTailer) -> bool:
        """A tailer returned (its container is gone, or it was detached): run it again
        if it was re-attached meanwhile, else forget it."""
        current = self._tailers.get(cid) is tailer
        if current and not tailer.gone and not tailer.detached:
            return True  # re-attached between its decision to stop and now
        if current:
            del self._tailers[cid]
        self._retire(cid, tailer)
        return False

    def _retire(self, cid: str, tailer: ContainerTailer) -> None:
        # A removed container never returns: nothing would reuse its tailer.
        self._supervisor.retire(cid, tailer, reusable=not tailer.gone)
