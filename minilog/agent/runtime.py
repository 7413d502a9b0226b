"""The agent runtime: builds components from a checked graph, owns every task,
reloads, shuts down.

    graph.build_graph (config -> checked DAG) -> construct / update components in
    dependency order -> run tasks; export changes cascade to dependents

Exports flow along the DAG: when a component publishes new exports, its dependents are
re-evaluated and updated (Alloy's controller cascade). Task ownership:

    Agent
    ├── controller task        re-evaluates dependents of changed exports
    └── one task per component  Component.run(); the component owns what it starts

A component's task is a runtime coroutine around ``Component.run()``: its outcome
(finished, failed) is recorded on the component's health where the agent sees it, and
stopping a component cancels that task and awaits it. Shutdown order, fixed here:
stop discovery -> stop sources (tailers record positions) -> processing drains ->
writers flush within the drain timeout -> positions persisted, clients closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from minilog.agent.explain import (
    SOURCE_KINDS,
    DiscoveredTarget,
    Pipeline,
    TargetStatus,
    explain_pipeline,
    source_paths,
)
from minilog.agent.graph import (
    Graph,
    LoggingConfig,
    Node,
    build_graph,
    decode_args,
    read_config,
)
from minilog.agent.livedebug import ComponentTap, LiveDebugging
from minilog.agent.logsetup import component_logger
from minilog.components import Component, ComponentOptions
from minilog.components.base import STABLE, Phase
from minilog.config.ast import Block
from minilog.errors import ConfigError, Diagnostic, MinilogError
from minilog.labels import DOCKER_CONTAINER_ID
from minilog.redact import Redactor

__all__ = ["PHASES", "Agent", "rewrite_write_urls"]

log = logging.getLogger(__name__)

#: Shutdown order.
PHASES: tuple[Phase, ...] = ("discovery", "source", "process", "write")

#: Bound on a component's stop when no drain timeout is given (only guards a bug).
_MAX_DRAIN_S = 300.0


@dataclass(slots=True)
class _Live:
    """A running component and what the runtime tracks about it."""

    node: Node
    component: Component[Any]
    #: The evaluated arguments (the UI shows them; a change is what ``update`` gets).
    raw_args: dict[str, Any]
    task: asyncio.Task[None] | None = None
    dependents: set[str] = field(default_factory=set)


class _ComponentMetrics(Collector):
    """Every component's own registry, with ``component_id`` added, merged by name.

    Each component gets its own registry so two components of one type (two
    ``loki.write``) can register the same metric names, as in Alloy.
    """

    def __init__(
        self, registries: Callable[[], Iterable[tuple[str, CollectorRegistry]]]
    ) -> None:
        self._registries = registries

    def describe(self) -> list[Metric]:
        # No fixed names: the set changes with the config.
        return []

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for component_id, registry in self._registries():
            extra = {"component_id": component_id, "component_path": "/"}
            for family in registry.collect():
                out = merged.get(family.name)
                if out is None:
                    out = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                    merged[family.name] = out
                for s in family.samples:
                    out.samples.append(s._replace(labels={**s.labels, **extra}))
        yield from merged.values()


def rewrite_write_urls(
    args: dict[str, Any], overrides: Mapping[str, str]
) -> dict[str, Any]:
    """TEST-ONLY: ``loki.write`` arguments with endpoint URL prefixes rewritten
    (``{"http://loki:3100": "http://127.0.0.1:4100"}``), so an unchanged config can be
    pointed at a fake Loki."""
    endpoints = []
    for ep in args.get("endpoint") or []:
        url = str(ep.get("url", ""))
        for old, new in overrides.items():
            if url.startswith(old):
                url = new + url[len(old) :]
                break
        endpoints.append({**ep, "url": url})
    return {**args, "endpoint": endpoints}


class Agent:
    """The component graph of one config, and the tasks that run it.

    Args:
        config_path: a ``.alloy`` file or a directory of them (or ``config_text``).
        config_text: config source used instead of a path (the embedded default).
        storage_path: ``--storage.path``; each component gets ``<storage_path>/<id>/``.
        registry: where the agent's metrics are exposed (a fresh one if ``None``).
        stability_level: ``--stability.level``.
        drain_timeout: how long writers may flush at shutdown; ``None``: each
            endpoint's ``queue_config.drain_timeout`` (Alloy's 15 s by default).
        url_overrides: TEST-ONLY rewriting of ``loki.write`` endpoint URL prefixes
            (``{"http://loki:3100": "http://127.0.0.1:4100"}``), so an unchanged config
            can be pointed at a fake Loki; empty in production.
        on_logging: called with the ``logging`` block on every successful (re)load.
    """

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        config_text: str | None = None,
        storage_path: str | Path = "data-minilog",
        registry: CollectorRegistry | None = None,
        stability_level: str = STABLE,
        drain_timeout: float | None = None,
        url_overrides: Mapping[str, str] | None = None,
        on_logging: Callable[[LoggingConfig], None] | None = None,
    ) -> None:
        if (config_path is None) == (config_text is None):
            raise ValueError("give exactly one of config_path and config_text")
        self.config_path = None if config_path is None else Path(config_path)
        self.config_text = config_text
        self.storage_path = Path(storage_path)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stability_level = stability_level
        self.drain_timeout = drain_timeout
        self.url_overrides = dict(url_overrides or {})
        self._on_logging = on_logging
        self._graph: Graph | None = None
        self._live: dict[str, _Live] = {}
        self._ready = False
        self._started = False
        self._closed = False
        self._lock = asyncio.Lock()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        # Set while no export change waits for the controller.
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._controller: asyncio.Task[None] | None = None
        self.last_error: ConfigError | None = None
        #: Why the agent stopped by itself (its controller died of a bug), if it did.
        self.failure: BaseException | None = None
        #: Every secret in the components' arguments, hidden from the UI and logs.
        self.redactor = Redactor()
        #: Live debugging (the ``livedebugging`` block): who watches which component.
        self.live = LiveDebugging()
        self.live.bind(self._attach_tap)
        self.registry.register(_ComponentMetrics(self._component_registries))
        self._load_ok = Gauge(
            "minilog_config_last_load_successful",
            "Whether the last configuration load succeeded (1) or not (0).",
            registry=self.registry,
        )
        self._load_failures = Counter(
            "minilog_config_load_failures",
            "Configuration loads (startup and reloads) that failed.",
            registry=self.registry,
        )
        self._reloads = Counter(
            "minilog_config_reloads",
            "Successful configuration reloads.",
            registry=self.registry,
        )

    # ---------------------------------------------------------------- view (server)

    @property
    def ready(self) -> bool:
        """True once the first config load succeeded and its components started."""
        return self._ready

    def unhealthy_components(self) -> list[str]:
        """IDs of the components whose health is ``unhealthy``, in config order.

        As in Alloy's ``/-/healthy``, only ``unhealthy`` counts: ``unknown`` and
        ``exited`` (a component that finished its work) do not.
        """
        order = self._graph.order if self._graph else list(self._live)
        return [
            cid
            for cid in order
            if (live := self._live.get(cid)) is not None
            and live.component.health().state == "unhealthy"
        ]

    def components_info(self) -> list[dict[str, Any]]:
        """JSON-able description of every component, for the UI and its API.

        Arguments, exports, debug info and health messages pass through the agent's
        ``Redactor``: no configured secret is shown (``redact.py``).
        """
        out = []
        graph = self._graph
        for cid in graph.order if graph else []:
            live = self._live.get(cid)
            if live is None:
                continue
            health = live.component.health()
            try:
                debug = live.component.debug_info()
            except Exception as exc:  # noqa: BLE001 - one broken view must not break the UI
                debug = {"error": str(exc)}
            name = live.node.cls.name
            info = {
                "id": cid,
                "name": name,
                "label": cid[len(name) + 1 :],
                "health": health.state,
                "message": health.message,
                "updated": health.updated,
                "references": sorted(live.node.deps),
                "referenced_by": sorted(live.dependents),
                "data_flow_edges_to": list(graph.flows.get(cid, ()) if graph else ()),
                "live_debugging": live.component.supports_live_debugging,
                "arguments": live.raw_args,
                "exports": live.component.exports(),
                "debug_info": debug,
            }
            out.append(self.redactor.value(info))
        return out

    def redact_text(self, text: str) -> str:
        """``text`` with every known secret hidden (live debugging's lines)."""
        return self.redactor.text(text)

    def _attach_tap(self, component_id: str, tap: ComponentTap | None) -> bool:
        live = self._live.get(component_id)
        if live is None or not live.component.supports_live_debugging:
            return False
        live.component.set_live_tap(tap)
        return True

    async def explain(self) -> list[dict[str, Any]]:
        """Why each target of every source is shipped or not (``explain.py``), with
        what the running sources report; containers discovery does not list
        (stopped) are asked of Docker, within ``dryrun.DOCKER_TIMEOUT_S``."""
        from minilog.agent.dryrun import docker_unlisted
        from minilog.docker.client import DockerClient

        if self._graph is None:
            return []
        names = {cid: live.node.cls.name for cid, live in self._live.items()}
        deps = {cid: live.node.deps for cid, live in self._live.items()}
        rules = {}
        discovered: dict[str, list[DiscoveredTarget]] = {}
        for cid, live in list(self._live.items()):
            exports = live.component.exports()
            if names[cid] == "discovery.relabel":
                rules[cid] = exports["rules"]
            elif names[cid] == "discovery.docker":
                targets = list(exports.get("targets") or [])
                ids = {t.get(DOCKER_CONTAINER_ID, "") for t in targets}
                client = DockerClient(live.component.args.host)
                unlisted: list[DiscoveredTarget] = []
                states: dict[str, str] = {}
                try:
                    unlisted, states = await docker_unlisted(
                        client, live.component.args, ids
                    )
                except (MinilogError, TimeoutError) as exc:
                    log.debug("cannot list stopped containers", extra={"err": str(exc)})
                finally:
                    await client.aclose()
                discovered[cid] = [
                    DiscoveredTarget(
                        t, state=states.get(t.get(DOCKER_CONTAINER_ID, ""), "")
                    )
                    for t in targets
                ] + unlisted
        out: list[dict[str, Any]] = []
        for cid in self._graph.order:
            source = self._live.get(cid)
            if source is None or names[cid] not in SOURCE_KINDS:
                continue
            args = source.component.args
            pipeline = Pipeline(
                source_id=cid,
                kind=SOURCE_KINDS[names[cid]],
                paths=source_paths(cid, deps, names),
                rules=rules,
                source_labels=dict(getattr(args, "labels", {}) or {}),
                source_rules=getattr(args, "stream_rules", None),
            )
            status = {
                info.id: TargetStatus(
                    running=info.is_running,
                    position_ns=info.position_ns,
                    read_position_ns=info.read_position_ns,
                    lag_s=info.lag_s,
                    last_error=info.last_error,
                    streams={
                        name: {
                            "lines": st.lines,
                            "bytes": st.bytes,
                            "last_ns": st.last_ns,
                        }
                        for name, st in info.streams.items()
                    },
                )
                for info in getattr(source.component, "targets_info", list)()
            }
            out.extend(explain_pipeline(pipeline, discovered, status))
        return [self.redactor.value(item) for item in out]

    def component(self, component_id: str) -> Component[Any]:
        """The running component with that ID (``KeyError`` if there is none)."""
        return self._live[component_id].component

    def write_endpoints(self) -> list[tuple[str, str]]:
        """``(component id, URL)`` of every ``loki.write`` endpoint, in config order."""
        out: list[tuple[str, str]] = []
        for cid in self._graph.order if self._graph else []:
            live = self._live.get(cid)
            if live is None or live.node.cls.name != "loki.write":
                continue
            endpoints = live.raw_args.get("endpoint") or []
            out.extend((cid, str(e.get("url", ""))) for e in endpoints)
        return out

    def docker_containers(self) -> tuple[int, int] | None:
        """``(found, kept)``: distinct containers in the targets of every
        ``discovery.docker``, and in those every ``loki.source.docker`` was given (what
        relabelling kept). ``None`` when the config has no ``discovery.docker``."""
        found: set[str] = set()
        kept: set[str] = set()
        has_discovery = False
        for live in self._live.values():
            name = live.node.cls.name
            if name == "discovery.docker":
                has_discovery = True
                found |= _container_ids(live.component.exports().get("targets"))
            elif name == "loki.source.docker":
                kept |= _container_ids(live.raw_args.get("targets"))
        return (len(found), len(kept)) if has_discovery else None

    async def wait_discovered(self) -> None:
        """Return once every component's first exports (discovery's first target list)
        went through the graph: ``docker_containers()`` then counts real containers."""
        for live in list(self._live.values()):
            await live.component.wait_first_exports()
        await self._idle.wait()

    # ---------------------------------------------------------------- loading

    def _component_registries(self) -> Iterator[tuple[str, CollectorRegistry]]:
        for cid, live in list(self._live.items()):
            yield cid, live.component.metrics_registry()

    def load(self) -> Graph:
        """Parse and check the config without starting anything (``graph``).

        Raises:
            ConfigError: with every diagnostic found.
        """
        file = read_config(self.config_path, self.config_text)
        return build_graph(
            file, stability_level=self.stability_level, learn=self.redactor.learn
        )

    def _override(self, node: Node, args: dict[str, Any]) -> dict[str, Any]:
        if not self.url_overrides or node.cls.name != "loki.write":
            return args
        return rewrite_write_urls(args, self.url_overrides)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the config, build components in dependency order, start their tasks.

        Raises:
            ConfigError: the config is invalid (nothing is left running).
        """
        if self._started:
            raise RuntimeError("Agent.start() called twice")
        try:
            graph = self.load()
        except ConfigError as exc:
            self._record_failure(exc)
            raise
        async with self._lock:
            try:
                await self._apply(graph)
            except BaseException as exc:
                if isinstance(exc, ConfigError):
                    self._record_failure(exc)
                await self._stop_all(list(self._live))
                raise
            self._started = True
            self._controller = asyncio.create_task(
                self._run_controller(), name="minilog-controller"
            )
            self._record_success(graph)
            self._ready = True

    def request_stop(self) -> None:
        """Ask ``run()`` to shut down gracefully (signal handlers call this)."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        """Return once ``request_stop()`` was called."""
        await self._stop.wait()

    async def run(self) -> None:
        """``start()``, run until ``request_stop()`` or cancellation, then shut down.

        Raises:
            BaseException: ``failure``, when the agent stopped because its controller
                died of a bug.
        """
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.aclose()
        if self.failure is not None:
            raise self.failure

    async def aclose(self) -> None:
        """Graceful shutdown in the fixed order; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ready = False
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.cancel()
            # Its own failure is handled inside (see _run_controller).
            await asyncio.gather(controller, return_exceptions=True)
        async with self._lock:
            await self._stop_all(list(self._live))

    async def reload(self) -> None:
        """Re-read the config; on success diff the graph by component ID and apply it.

        On failure the running graph stays untouched (last good config) and the error is
        both logged and raised.

        Raises:
            ConfigError: the new config is invalid.
        """
        if self._closed or not self._started:
            raise ConfigError("the agent is not running")
        try:
            graph = self.load()
        except ConfigError as exc:
            self._record_failure(exc)
            log.error(
                "reload failed, keeping the last good config", extra={"err": str(exc)}
            )
            raise
        async with self._lock:
            try:
                await self._apply(graph)
            except ConfigError as exc:
                self._record_failure(exc)
                log.error("reload failed while applying", extra={"err": str(exc)})
                raise
            self._reloads.inc()
            self._record_success(graph)
        log.info("config reloaded")

    def _record_failure(self, exc: ConfigError) -> None:
        self.last_error = exc
        self._load_ok.set(0)
        self._load_failures.inc()

    def _record_success(self, graph: Graph) -> None:
        self.last_error = None
        self._load_ok.set(1)
        self.live.set_enabled(graph.livedebugging.enabled)
        if self._on_logging is not None:
            self._on_logging(graph.logging)

    # ---------------------------------------------------------------- graph changes

    def _scope(self) -> dict[str, Mapping[str, Any]]:
        return {cid: live.component.exports() for cid, live in self._live.items()}

    async def _apply(self, graph: Graph) -> None:
        """Make the running graph match ``graph``: create, update, stop the removed.

        Evaluation errors with live values are collected; the components already
        changed keep their new state (as in Alloy, which evaluates node by node), the
        failing ones keep their last good arguments and turn unhealthy.
        """
        removed = [cid for cid in self._live if cid not in graph.nodes]
        diagnostics: list[Diagnostic] = []
        created: list[str] = []
        creation_failed = False
        for cid in graph.order:
            node = graph.nodes[cid]
            live = self._live.get(cid)
            try:
                raw = decode_args(node, self._scope())
                self.redactor.learn(raw)
                raw = self._override(node, raw)
                if live is None:
                    args = node.cls.parse_args(
                        raw, node.block, stability_level=self.stability_level
                    )
                    self._live[cid] = _Live(node, await self._create(node, args), raw)
                    created.append(cid)
                else:
                    live.node = node
                    if raw != live.raw_args:
                        args = node.cls.parse_args(
                            raw, node.block, stability_level=self.stability_level
                        )
                        await self._update(live, args)
                        live.raw_args = raw
                        if live.component.health().state == "unhealthy":
                            live.component.set_health("healthy", "updated")
            except ConfigError as exc:
                diagnostics.extend(exc.diagnostics)
                if live is not None:
                    live.component.set_health("unhealthy", str(exc))
                else:
                    creation_failed = True
        self._graph = graph
        self._relink()
        if not creation_failed:
            # A new component that could not start (say, a renamed listener whose port
            # the old one still holds) leaves the removed ones running: the reload
            # failed, so they keep serving until one succeeds.
            await self._stop_all(removed)
        for cid in created:
            self._launch(self._live[cid])
        if diagnostics:
            raise ConfigError(diagnostics)

    async def _create(self, node: Node, args: Any) -> Component[Any]:
        """Construct and start one component; failures become positioned diagnostics."""
        try:
            component = node.cls(self._options(node.id), args)
        except ConfigError as exc:
            raise _at(node.block, exc) from exc
        except (MinilogError, ValueError, OSError) as exc:
            raise ConfigError(_diag_at(node.block, f"{node.id}: {exc}")) from exc
        # A component rebuilt while watched (a reload) is watched on.
        component.set_live_tap(self.live.tap_for(node.id))
        try:
            await component.start()
        except (MinilogError, ValueError, OSError) as exc:
            await component.stop_unstarted()
            message = f"{node.id}: cannot start: {exc}"
            raise ConfigError(_diag_at(node.block, message)) from exc
        return component

    async def _update(self, live: _Live, args: Any) -> None:
        try:
            await live.component.update(args)
        except (MinilogError, ValueError, OSError) as exc:
            if isinstance(exc, ConfigError):
                raise _at(live.node.block, exc) from exc
            message = f"{live.node.id}: update failed: {exc}"
            raise ConfigError(_diag_at(live.node.block, message)) from exc

    def _relink(self) -> None:
        for live in self._live.values():
            live.dependents.clear()
        for cid, live in self._live.items():
            for dep in live.node.deps:
                if dep in self._live:
                    self._live[dep].dependents.add(cid)

    def _options(self, cid: str) -> ComponentOptions:
        return ComponentOptions(
            id=cid,
            data_path=self.storage_path / cid,
            registry=CollectorRegistry(auto_describe=True),
            logger=component_logger(cid),
            on_exports=lambda: self._exports_changed(cid),
            stability_level=self.stability_level,
            drain_timeout=self.drain_timeout,
        )

    def _launch(self, live: _Live) -> None:
        live.task = asyncio.create_task(
            self._run_component(live), name=f"component {live.node.id}"
        )

    async def _run_component(self, live: _Live) -> None:
        """A component's task: its outcome becomes its health (as in Alloy, a failed
        component is reported, the others run on)."""
        try:
            await live.component.run()
        except Exception as exc:
            live.component.set_health("unhealthy", f"component exited: {exc}")
            log.error(
                "component run() failed",
                exc_info=exc,
                extra={"component_id": live.node.id},
            )
            return
        live.component.set_health("exited", "component shut down normally")

    def _exports_changed(self, cid: str) -> None:
        self._dirty.add(cid)
        self._idle.clear()
        self._wake.set()

    async def _run_controller(self) -> None:
        """The controller's task: a bug in it stops the agent (``failure``), rather
        than leaving the graph without its cascade."""
        try:
            await self._control()
        except Exception as exc:
            log.error("the component controller stopped", exc_info=exc)
            self.failure = exc
            self.request_stop()

    async def _control(self) -> None:
        """Re-evaluates dependents of components whose exports changed (the cascade)."""
        while True:
            await self._wake.wait()
            async with self._lock:
                self._wake.clear()
                while self._dirty and self._graph is not None:
                    dirty, self._dirty = self._dirty, set()
                    affected: set[str] = set()
                    for cid in dirty:
                        live = self._live.get(cid)
                        if live is not None:
                            affected |= live.dependents
                    for cid in self._graph.order:
                        if cid in affected and cid in self._live:
                            await self._reevaluate(self._live[cid])
                if not self._dirty:
                    self._idle.set()

    async def _reevaluate(self, live: _Live) -> None:
        node = live.node
        try:
            raw = decode_args(node, self._scope())
            self.redactor.learn(raw)
            raw = self._override(node, raw)
            if raw == live.raw_args:
                return
            args = node.cls.parse_args(
                raw, node.block, stability_level=self.stability_level
            )
            await live.component.update(args)
        except ConfigError as exc:
            live.component.set_health("unhealthy", str(exc))
            log.warning(
                "failed to re-evaluate component; keeping its last good arguments",
                extra={"component_id": node.id, "err": str(exc)},
            )
            return
        except Exception as exc:
            # A component bug must not stop the controller: later cascades still run.
            live.component.set_health("unhealthy", f"update failed: {exc}")
            log.error(
                "component update failed", exc_info=exc, extra={"component_id": node.id}
            )
            return
        live.raw_args = raw
        if live.component.health().state == "unhealthy":
            live.component.set_health("healthy", "updated")

    async def _stop_all(self, ids: Iterable[str]) -> None:
        """Stop components phase by phase; in a phase, dependents before their deps."""
        wanted = set(ids)
        order = self._graph.order if self._graph else list(self._live)
        # Components removed by a reload are no longer in the graph's order.
        ranked = [c for c in order if c in wanted] + [
            c for c in wanted if c not in order
        ]
        stopped: list[_Live] = []
        for phase in PHASES:
            for cid in reversed(ranked):
                live = self._live.get(cid)
                if live is None or live.node.cls.phase != phase:
                    continue
                await self._stop_one(live)
                stopped.append(self._live.pop(cid))
        for live in stopped:
            try:
                async with asyncio.timeout(30):
                    await live.component.finalize()
            except Exception as exc:  # one component's cleanup must not skip the rest
                log.error(
                    "component cleanup failed",
                    exc_info=exc,
                    extra={"component_id": live.node.id},
                )

    async def _stop_one(self, live: _Live) -> None:
        task, live.task = live.task, None
        if task is None:
            await live.component.stop_unstarted()
            return
        task.cancel()
        # Writers flush inside the drain timeout; the extra margin only guards a bug.
        try:
            async with asyncio.timeout((self.drain_timeout or _MAX_DRAIN_S) + 10.0):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            log.error(
                "component did not stop in time", extra={"component_id": live.node.id}
            )


def _at(block: Block, exc: ConfigError) -> ConfigError:
    """Position diagnostics that have no place (raised below the config layer)."""
    pos = block.pos
    return ConfigError(
        [
            d if d.line else Diagnostic(pos.file, pos.line, pos.col, d.message)
            for d in exc.diagnostics
        ]
    )


def _container_ids(targets: Any) -> set[str]:
    if not isinstance(targets, list):
        return set()
    return {
        str(t[DOCKER_CONTAINER_ID])
        for t in targets
        if isinstance(t, Mapping) and t.get(DOCKER_CONTAINER_ID)
    }


def _diag_at(block: Block, message: str) -> Diagnostic:
    return Diagnostic(block.pos.file, block.pos.line, block.pos.col, message)
