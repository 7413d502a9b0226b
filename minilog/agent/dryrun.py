"""``minilog explain``: evaluate a config up to its sources without starting the agent.

The graph is checked as ``minilog validate`` checks it (``graph.load_graph``), then
walked in dependency order with real exports where they decide which targets a source
gets: ``discovery.docker`` lists the Docker daemon once (the discovery's own
``refresh``), ``discovery.relabel`` is built (it is a pure function of its
arguments), every other component gets its placeholder exports. Nothing is tailed and
nothing is sent. The targets Docker has but discovery does not list (stopped
containers) are listed too, with the labels discovery would give them.

Also used by the running agent's explanation for those stopped containers
(:func:`docker_unlisted`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry

from minilog.agent.explain import (
    SOURCE_KINDS,
    DiscoveredTarget,
    Pipeline,
    explain_pipeline,
    source_paths,
)
from minilog.agent.graph import Graph, decode_args, load_graph
from minilog.components import ComponentOptions
from minilog.components.base import STABLE
from minilog.components.discovery_docker import DiscoveryDockerArgs
from minilog.docker.client import DockerClient
from minilog.docker.discovery import DockerDiscovery, build_targets, merge_filters
from minilog.errors import DockerError
from minilog.labels import DOCKER_CONTAINER_ID
from minilog.relabel import RelabelRules

__all__ = ["DOCKER_TIMEOUT_S", "docker_unlisted", "explain_config", "matches"]

log = logging.getLogger(__name__)

#: Components evaluated with real exports (the rest get placeholders).
_EVALUATED: Final = frozenset({"discovery.docker", "discovery.relabel"})

#: The most one Docker call of ``minilog explain`` (or of the UI's list of stopped
#: containers) may take.
DOCKER_TIMEOUT_S: Final = 10.0


def _state_text(container: Mapping[str, Any]) -> str:
    return str(container.get("State") or container.get("Status") or "unknown")


async def docker_unlisted(
    client: DockerClient, args: DiscoveryDockerArgs, listed: set[str]
) -> tuple[list[DiscoveredTarget], dict[str, str]]:
    """Containers Docker has but ``listed`` lacks (discovery lists running ones only),
    with the targets discovery would build for them; and every container's state."""
    filters = {
        k: v
        for k, v in merge_filters(
            [(f.name, list(f.values)) for f in args.filter]
        ).items()
        if k != "status"
    }
    async with asyncio.timeout(DOCKER_TIMEOUT_S):
        everything = await client.containers(all=True, filters=filters or None)
        missing = [c for c in everything if str(c.get("Id")) not in listed]
        networks = await client.networks() if missing else []
    state = {str(c.get("Id")): _state_text(c) for c in everything}
    return [
        DiscoveredTarget(
            labels,
            state=f"{state.get(labels.get(DOCKER_CONTAINER_ID, ''), '')}: "
            "discovery.docker lists running containers only",
            listed=False,
        )
        for labels in build_targets(
            missing,
            networks,
            port=args.port,
            host_networking_host=args.host_networking_host,
            match_first_network=args.match_first_network,
        )
    ], state


async def _discover_docker(
    args: DiscoveryDockerArgs,
) -> tuple[list[dict[str, str]], list[DiscoveredTarget]]:
    client = DockerClient(args.host)
    try:
        discovery = DockerDiscovery(
            client,
            filters=[(f.name, list(f.values)) for f in args.filter],
            port=args.port,
            host_networking_host=args.host_networking_host,
            match_first_network=args.match_first_network,
            refresh_interval=min(args.refresh_interval, DOCKER_TIMEOUT_S),
        )
        targets = await discovery.refresh(client)
        if targets is None:
            raise DockerError(discovery.error or "cannot list containers")
        ids = {t.get(DOCKER_CONTAINER_ID, "") for t in targets}
        unlisted, states = await docker_unlisted(client, args, ids)
        listed = [
            DiscoveredTarget(t, state=states.get(t.get(DOCKER_CONTAINER_ID, ""), ""))
            for t in targets
        ]
        return targets, listed + unlisted
    except TimeoutError:
        raise DockerError(
            f"Docker at {client.host} did not answer within {DOCKER_TIMEOUT_S:g} s"
        ) from None
    finally:
        await client.aclose()


def _options(cid: str) -> ComponentOptions:
    return ComponentOptions(
        id=cid,
        data_path=Path("/nonexistent") / cid,
        registry=CollectorRegistry(),
        logger=log,
    )


async def _evaluate(graph: Graph, stability_level: str) -> list[dict[str, Any]]:
    scope: dict[str, Mapping[str, Any]] = {}
    discovered: dict[str, list[DiscoveredTarget]] = {}
    rules: dict[str, RelabelRules] = {}
    pipelines: list[Pipeline] = []
    names = {cid: node.cls.name for cid, node in graph.nodes.items()}
    deps = {cid: node.deps for cid, node in graph.nodes.items()}
    for cid in graph.order:
        node = graph.nodes[cid]
        name = node.cls.name
        if name not in _EVALUATED and name not in SOURCE_KINDS:
            scope[cid] = node.cls.placeholder_exports(cid)
            continue
        raw = decode_args(node, scope)
        args = node.cls.parse_args(raw, node.block, stability_level=stability_level)
        if name == "discovery.docker":
            targets, seen = await _discover_docker(args)
            scope[cid] = {"targets": targets}
            discovered[cid] = seen
        elif name == "discovery.relabel":
            component = node.cls(_options(cid), args)
            scope[cid] = component.exports()
            rules[cid] = scope[cid]["rules"]
        else:
            scope[cid] = node.cls.placeholder_exports(cid)
        if name in SOURCE_KINDS:
            pipelines.append(
                Pipeline(
                    source_id=cid,
                    kind=SOURCE_KINDS[name],
                    paths=source_paths(cid, deps, names),
                    rules=rules,
                    source_labels=dict(args.labels),
                    source_rules=args.stream_rules,
                )
            )
    out: list[dict[str, Any]] = []
    for pipeline in pipelines:
        out.extend(explain_pipeline(pipeline, discovered))
    return out


def matches(explanation: Mapping[str, Any], wanted: str) -> bool:
    """``wanted`` names this target: its name (with or without ``/``) or an ID
    prefix."""
    wanted = wanted.lstrip("/")
    return bool(wanted) and (
        explanation["name"] == wanted or str(explanation["id"]).startswith(wanted)
    )


async def explain_config(
    path: str | Path,
    target: str | None = None,
    *,
    stability_level: str = STABLE,
) -> list[dict[str, Any]]:
    """Explanations of every source target of the config at ``path`` (those named
    ``target`` only, when given).

    Raises:
        ConfigError: the config is invalid.
        DockerError: Docker could not be listed.
    """
    graph = load_graph(path, stability_level=stability_level)
    explanations = await _evaluate(graph, stability_level)
    if target is not None:
        explanations = [e for e in explanations if matches(e, target)]
    return explanations
