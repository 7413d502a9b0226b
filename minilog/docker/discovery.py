"""``discovery.docker``: Docker containers and networks -> ``__meta_docker_*`` targets.

Owns the pure target builder (Prometheus 3.13.2's Docker SD, label for label) and the
refresh loop that lists containers periodically and at once on Docker ``/events``, keeps
short-lived containers published long enough to be read, and publishes only changes.
It does not talk HTTP (``client``) or relabel (``minilog.relabel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram, Summary

from minilog.backoff import Backoff
from minilog.docker.client import DockerClient, since_arg
from minilog.errors import ConfigError, DockerError, DockerUnavailableError
from minilog.labels import (
    ADDRESS_LABEL,
    DOCKER_CONTAINER_ID,
    DOCKER_CONTAINER_LABEL_PREFIX,
    DOCKER_CONTAINER_NAME,
    DOCKER_CONTAINER_NETWORK_MODE,
    DOCKER_NETWORK_ID,
    DOCKER_NETWORK_INGRESS,
    DOCKER_NETWORK_INTERNAL,
    DOCKER_NETWORK_IP,
    DOCKER_NETWORK_LABEL_PREFIX,
    DOCKER_NETWORK_NAME,
    DOCKER_NETWORK_SCOPE,
    DOCKER_PORT_PRIVATE,
    DOCKER_PORT_PUBLIC,
    DOCKER_PORT_PUBLIC_IP,
)

__all__ = [
    "DEFAULT_HOST_NETWORKING_HOST",
    "DEFAULT_PORT",
    "DEFAULT_REFRESH_INTERVAL_S",
    "SLOW_AFTER_S",
    "ClientSource",
    "DiscoveryMetrics",
    "DockerAPI",
    "DockerDiscovery",
    "build_targets",
    "merge_filters",
    "sanitize_label_name",
]

log = logging.getLogger(__name__)


#: Prometheus/Alloy defaults of ``discovery.docker``: the port of a target whose
#: container publishes none, the address of ``host``-network targets, and the seconds
#: between full refreshes.
DEFAULT_PORT: Final = 80
DEFAULT_HOST_NETWORKING_HOST: Final = "localhost"
DEFAULT_REFRESH_INTERVAL_S: Final = 60.0

#: Events after which the container list may differ. Network connect/disconnect change a
#: container's networks (and so its targets); the rest change the set of containers.
_EVENT_FILTERS: Final[Mapping[str, Sequence[str]]] = {
    "type": ["container", "network"],
    "event": [
        "create",
        "start",
        "die",
        "destroy",
        "rename",
        "pause",
        "unpause",
        "connect",
        "disconnect",
    ],
}

_INVALID_LABEL_CHARS: Final = re.compile(r"[^a-zA-Z0-9_]")

#: A Docker call still unanswered after this many seconds makes its component
#: unhealthy (it goes on waiting: a slow daemon is not a dead one). A listing of even
#: thousands of containers takes well under a second.
SLOW_AFTER_S: Final = 5.0


@functools.lru_cache(maxsize=4096)
def sanitize_label_name(name: str) -> str:
    """Prometheus ``strutil.SanitizeLabelName``: every code point outside
    ``[a-zA-Z0-9_]`` becomes one ``_`` (no collapsing, no lower-casing)."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def merge_filters(filters: Sequence[tuple[str, Sequence[str]]]) -> dict[str, list[str]]:
    """Alloy's ``filter`` blocks as Docker filters: blocks with the same name merge into
    one list of values (first-seen order, no repeats). Docker then ORs those values,
    except for ``label``, whose values must all match; different names are ANDed."""
    merged: dict[str, list[str]] = {}
    for name, values in filters:
        bucket = merged.setdefault(name, [])
        bucket.extend(v for v in values if v not in bucket)
    return merged


def _join_host_port(host: str, port: int | str) -> str:
    # Go's net.JoinHostPort: brackets only when the host holds a colon (IPv6).
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _network_labels(networks: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    by_id: dict[str, dict[str, str]] = {}
    for net in networks:
        labels = {
            DOCKER_NETWORK_ID: str(net.get("Id") or ""),
            DOCKER_NETWORK_NAME: str(net.get("Name") or ""),
            DOCKER_NETWORK_SCOPE: str(net.get("Scope") or ""),
            DOCKER_NETWORK_INTERNAL: "true" if net.get("Internal") else "false",
            DOCKER_NETWORK_INGRESS: "true" if net.get("Ingress") else "false",
        }
        for key, value in sorted((net.get("Labels") or {}).items()):
            labels[DOCKER_NETWORK_LABEL_PREFIX + sanitize_label_name(key)] = str(value)
        by_id[labels[DOCKER_NETWORK_ID]] = labels
    return by_id


def _networks_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return dict((container.get("NetworkSettings") or {}).get("Networks") or {})


def _network_mode(container: Mapping[str, Any]) -> str:
    return str((container.get("HostConfig") or {}).get("NetworkMode") or "")


def build_targets(
    containers: Sequence[Mapping[str, Any]],
    networks: Sequence[Mapping[str, Any]],
    *,
    port: int = DEFAULT_PORT,
    host_networking_host: str = DEFAULT_HOST_NETWORKING_HOST,
    match_first_network: bool = True,
) -> list[dict[str, str]]:
    """Prometheus 3.13.2 ``discovery/moby`` targets (alloy-spec.md §1.3), in list order.

    ``containers`` are ``GET /containers/json`` items, ``networks`` ``GET /networks``
    items. Per container: one target per (network, TCP port), or one fallback target
    per network without a TCP port (``__address__`` = ``IP:port``, or
    ``host_networking_host`` alone in ``host`` mode). A container without networks
    borrows them through a ``container:<id>`` chain of listed containers, else yields
    nothing. Empty values (``__meta_docker_network_ip`` of a ``none`` network) are kept
    as Prometheus keeps them. Go iterates maps in random order; here networks go by
    name and colliding sanitised label names resolve in sorted order, last one wins.
    """
    net_labels = _network_labels(networks)
    by_id = {str(c.get("Id")): c for c in containers}
    targets: list[dict[str, str]] = []
    for c in containers:
        names = c.get("Names") or []
        if not names:
            continue
        mode = _network_mode(c)
        common = {
            DOCKER_CONTAINER_ID: str(c.get("Id") or ""),
            DOCKER_CONTAINER_NAME: str(names[0]),
            DOCKER_CONTAINER_NETWORK_MODE: mode,
        }
        for key, value in sorted((c.get("Labels") or {}).items()):
            common[DOCKER_CONTAINER_LABEL_PREFIX + sanitize_label_name(key)] = str(
                value
            )

        nets = _networks_of(c)
        chain_mode, seen = mode, {common[DOCKER_CONTAINER_ID]}
        # Follow container:<id> until a container with networks; Prometheus loops
        # unguarded, the seen-set only stops a cycle from hanging us.
        while not nets and chain_mode.startswith("container:"):
            ref = chain_mode[len("container:") :]
            other = by_id.get(ref)
            if other is None or ref in seen:
                break
            seen.add(ref)
            nets = _networks_of(other)
            chain_mode = _network_mode(other)

        if match_first_network and len(nets) > 1:
            present = sorted(name for name, n in nets.items() if n is not None)
            if present:
                nets = {present[0]: nets[present[0]]}

        ports = [p for p in c.get("Ports") or () if p.get("Type") == "tcp"]
        for _, net in sorted(nets.items()):
            if net is None:
                continue
            ip = str(net.get("IPAddress") or "")
            extra = net_labels.get(str(net.get("NetworkID") or ""), {})
            for p in ports:
                private = str(int(p.get("PrivatePort") or 0))
                target = {DOCKER_NETWORK_IP: ip, DOCKER_PORT_PRIVATE: private}
                public = int(p.get("PublicPort") or 0)
                if public > 0:
                    target[DOCKER_PORT_PUBLIC] = str(public)
                    target[DOCKER_PORT_PUBLIC_IP] = str(p.get("IP") or "")
                target.update(common)
                target.update(extra)
                target[ADDRESS_LABEL] = _join_host_port(ip, private)
                targets.append(target)
            if not ports:
                target = {DOCKER_NETWORK_IP: ip, **common, **extra}
                # Host-mode containers publish no ports: the address is the host itself.
                target[ADDRESS_LABEL] = (
                    host_networking_host
                    if mode == "host"
                    else _join_host_port(ip, port)
                )
                targets.append(target)
    return targets


@runtime_checkable
class DockerAPI(Protocol):
    """What discovery uses of ``docker.client.DockerClient`` (a test seam)."""

    async def containers(
        self, *, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]: ...

    async def networks(self) -> list[dict[str, Any]]: ...

    def events(
        self,
        *,
        filters: Mapping[str, Sequence[str]] | None = None,
        since: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class DiscoveryMetrics:
    """Prometheus' service-discovery refresh metrics (``mechanism="docker"``) on one
    registry. The component keeps one for its life and hands it to each discovery it
    builds, so the counters go on across a rebuild, as Alloy's do."""

    __slots__ = ("duration", "failures", "histogram")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "prometheus_sd_refresh_failures",
            "Refreshes of service discovery that failed.",
            ["mechanism"],
            registry=registry,
        ).labels(mechanism="docker")
        self.duration = Summary(
            "prometheus_sd_refresh_duration_seconds",
            "Time taken by one service discovery refresh.",
            ["mechanism"],
            registry=registry,
        ).labels(mechanism="docker")
        self.histogram = Histogram(
            "prometheus_sd_refresh_duration_histogram_seconds",
            "Time taken by one service discovery refresh.",
            ["mechanism"],
            registry=registry,
            buckets=(0.01, 0.1, 1, 10),  # Prometheus discovery/refresh metrics
        ).labels(mechanism="docker")


ClientSource = DockerAPI | Callable[[], DockerAPI] | str | None


class DockerDiscovery:
    """``discovery.docker`` as a task: lists containers, publishes their targets.

    Args:
        client: a :class:`DockerAPI` (used, not closed), a factory of one, or a host
            string / ``None`` (``DOCKER_HOST``) from which a ``DockerClient`` is made;
            factories' and hosts' clients are owned and closed when :meth:`run` ends.
        filters: Alloy ``filter`` blocks, ``(name, values)``; see :func:`merge_filters`.
            A ``status`` filter makes Docker list stopped containers too.
        port, host_networking_host, match_first_network: as in :func:`build_targets`.
        refresh_interval: seconds between full refreshes (Alloy: ``1m``).
        exited_grace_s: how long a container stays published after it died (below).
        registry: where ``prometheus_sd_refresh_*`` go (a private one when ``None``).
        clock: monotonic seconds, for the grace period.
        wall_clock: Unix seconds, for Docker's ``/events?since=``.

    Refreshes run at start, every ``refresh_interval``, and at once after any container
    event (create, start, die, destroy, rename, (un)pause) or network (dis)connect, so a
    new container is published within milliseconds (Alloy throttles its exports to one
    per 5 s and polls every minute); publishing happens only when the target list
    changed (the first successful refresh always publishes, even an empty list).

    Short-lived containers: one seen in a ``start`` or ``die`` event is *pinned*.
    Pinned containers that the normal list misses (it holds running containers only,
    unless a ``status`` filter is set) are listed again with ``all=1``, restricted to
    their IDs and the user's filters minus ``status``, and published with the rest.
    A pin ends at the container's ``destroy`` event, when Docker no longer lists it, or
    on the first refresh at least ``exited_grace_s`` after it died (its ``die`` event,
    or, when that event was missed, the first refresh that saw it not running). So a
    container that printed a line and exited before the list call is still published,
    for long enough that its remaining logs can be read once. With a ``status`` filter
    nothing is pinned: the user chose the states, and Docker's list alone decides.

    Failures: a failed refresh keeps the previous targets, counts
    ``prometheus_sd_refresh_failures_total{mechanism="docker"}`` and is retried with
    backoff; an unreachable daemon is logged once (with what to do about it), and its
    return once. The events stream reconnects by itself and replays what it missed.
    A refresh gives up after ``refresh_interval`` (Prometheus's HTTP timeout for this
    discovery), so a daemon that accepts connections but never answers cannot stall
    discovery for ever.

    Health: ``on_status(message)`` is called whenever the state changes: with why
    refreshing fails (unreachable, an error, or no answer for ``slow_after_s``), and
    with ``None`` once a refresh succeeds again; ``error`` holds the current one.
    """

    def __init__(
        self,
        client: ClientSource = None,
        *,
        filters: Sequence[tuple[str, Sequence[str]]] = (),
        port: int = DEFAULT_PORT,
        host_networking_host: str = DEFAULT_HOST_NETWORKING_HOST,
        match_first_network: bool = True,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL_S,
        exited_grace_s: float = 60.0,
        registry: CollectorRegistry | None = None,
        metrics: DiscoveryMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_status: Callable[[str | None], None] | None = None,
        slow_after_s: float = SLOW_AFTER_S,
    ) -> None:
        if refresh_interval <= 0:
            raise ConfigError("refresh_interval must be greater than 0")
        self._where = "the Docker daemon"
        if client is None or isinstance(client, str):
            # Constructing does no I/O; a bad host raises ConfigError now, not in run().
            self._where = f"Docker at {DockerClient(client).host}"
            client = functools.partial(DockerClient, client)
        self._client_source: DockerAPI | Callable[[], DockerAPI] = client
        self._filters = merge_filters(filters)
        # Docker lists stopped containers whenever a status filter is present.
        self._list_all = "status" in self._filters
        self._pin_filters = {k: v for k, v in self._filters.items() if k != "status"}
        self._port = port
        self._host_networking_host = host_networking_host
        self._match_first_network = match_first_network
        self._refresh_interval = refresh_interval
        self._grace = exited_grace_s
        if metrics is None:
            metrics = DiscoveryMetrics(
                registry if registry is not None else CollectorRegistry()
            )
        self._metrics = metrics
        self._clock = clock
        # Events are replayed from a little before this object was made, not from when
        # its task first runs: on a busy machine that can be seconds later, and a
        # container that started and died in between (never listed: it is not running)
        # would be missed for good.
        self._events_since = f"{wall_clock() - 1.0:.9f}"
        self._wakeup = asyncio.Event()
        # container ID -> monotonic time it died (None: started, not seen dead yet)
        self._pinned: dict[str, float | None] = {}
        self._targets: list[dict[str, str]] = []
        self._published_key: list[tuple[tuple[str, str], ...]] | None = None
        self._unavailable_logged = False
        self._on_status = on_status
        self._slow_after_s = slow_after_s
        self._error: str | None = None

    @property
    def error(self) -> str | None:
        """Why the last refresh failed (or why the current one is late); None if it
        succeeded."""
        return self._error

    def _set_late(self, error: str) -> None:
        # Only a healthy discovery turns unhealthy for a late answer: once a refresh
        # failed, its reason stays until one succeeds (no flapping between the two).
        if self._error is None:
            self._set_error(error)

    def _set_error(self, error: str | None) -> None:
        if error != self._error:
            self._error = error
            if self._on_status is not None:
                self._on_status(error)

    @property
    def targets(self) -> list[dict[str, str]]:
        """The targets last published (empty before the first successful refresh)."""
        return self._targets

    def _open_client(self) -> tuple[DockerAPI, bool]:
        source = self._client_source
        # A class has the protocol's attributes too, but it is a factory.
        if isinstance(source, type) or not isinstance(source, DockerAPI):
            return source(), True
        return source, False

    async def run(self, publish: Callable[[list[dict[str, str]]], None]) -> None:
        """Discover until cancelled, calling ``publish(targets)`` on every change."""
        client, owned = self._open_client()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._follow_events(client), name="docker-events")
                await self._refresh_loop(client, publish)
        finally:
            if owned:
                async with asyncio.timeout(5):
                    await client.aclose()

    async def _refresh_loop(
        self, client: DockerAPI, publish: Callable[[list[dict[str, str]]], None]
    ) -> None:
        backoff = Backoff(0.25, min(self._refresh_interval, 10.0))
        while True:
            self._wakeup.clear()
            targets = await self.refresh(client)
            if targets is None:
                delay = backoff.next_delay()
            else:
                backoff.reset()
                delay = self._refresh_interval
                key = sorted(tuple(sorted(t.items())) for t in targets)
                if key != self._published_key:
                    self._published_key = key
                    self._targets = targets
                    publish(targets)
            expiry = self._next_pin_expiry()
            if expiry is not None:
                delay = min(delay, max(expiry - self._clock(), 0.0))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    def _next_pin_expiry(self) -> float | None:
        died = [t for t in self._pinned.values() if t is not None]
        return min(died) + self._grace if died else None

    async def refresh(self, client: DockerAPI) -> list[dict[str, str]] | None:
        """One refresh: the new targets, or ``None`` if it failed (counted, logged)."""
        started = time.perf_counter()
        where = getattr(client, "host", None)
        where = f"Docker at {where}" if isinstance(where, str) else self._where
        late = asyncio.get_running_loop().call_later(
            self._slow_after_s,
            self._set_late,
            f"cannot list containers: {where} has not answered for "
            f"{self._slow_after_s:g} s",
        )
        try:
            async with asyncio.timeout(self._refresh_interval):
                containers = await self._list(client)
                networks = await client.networks()
        except (DockerUnavailableError, TimeoutError) as exc:
            self._metrics.failures.inc()
            why = (
                str(exc)
                if isinstance(exc, DockerError)
                else f"{where} did not answer within {self._refresh_interval:g} s"
            )
            if not self._unavailable_logged:
                self._unavailable_logged = True
                log.warning("discovery.docker: %s (retrying with backoff)", why)
            else:
                log.debug("discovery.docker: still unavailable: %s", why)
            self._set_error(f"cannot list containers: {why}")
            return None
        except DockerError as exc:
            self._metrics.failures.inc()
            log.warning("discovery.docker: unable to refresh targets: %s", exc)
            self._set_error(f"cannot list containers: {exc}")
            return None
        finally:
            late.cancel()
            elapsed = time.perf_counter() - started
            self._metrics.duration.observe(elapsed)
            self._metrics.histogram.observe(elapsed)
        if self._unavailable_logged:
            self._unavailable_logged = False
            log.info("discovery.docker: Docker is reachable again")
        self._set_error(None)
        return build_targets(
            containers,
            networks,
            port=self._port,
            host_networking_host=self._host_networking_host,
            match_first_network=self._match_first_network,
        )

    async def _list(self, client: DockerAPI) -> list[dict[str, Any]]:
        now = self._clock()
        for cid, died in list(self._pinned.items()):
            if died is not None and now - died >= self._grace:
                del self._pinned[cid]
        containers = await client.containers(
            all=self._list_all, filters=self._filters or None
        )
        listed = {c.get("Id") for c in containers}
        missing = [cid for cid in self._pinned if cid not in listed]
        if not missing:
            return containers
        extra = await client.containers(
            all=True, filters={**self._pin_filters, "id": missing}
        )
        # Docker's id filter matches substrings; keep exact IDs only.
        wanted = set(missing)
        extra = [c for c in extra if c.get("Id") in wanted]
        found = {c.get("Id") for c in extra}
        for cid in missing:
            if cid not in found:
                self._pinned.pop(cid, None)
        for c in extra:
            cid = str(c.get("Id"))
            if c.get("State") != "running" and self._pinned.get(cid) is None:
                self._pinned[cid] = now  # its die event was missed: grace starts now
        return containers + extra

    def _on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("Type") == "container":
            action = str(event.get("Action") or event.get("status") or "")
            cid = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
            # A status filter says which states the user wants listed: Docker's list
            # alone decides then, exactly as in Alloy.
            if cid and not self._list_all:
                if action == "start":
                    self._pinned[cid] = None
                elif action == "die":
                    self._pinned[cid] = self._clock()
                elif action == "destroy":
                    self._pinned.pop(cid, None)
        self._wakeup.set()

    async def _follow_events(self, client: DockerAPI) -> None:
        since = self._events_since
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                async for event in client.events(filters=_EVENT_FILTERS, since=since):
                    backoff.reset()
                    since = _event_since(event, since)
                    self._on_event(event)
            except DockerError as exc:
                # The refresh loop reports an unreachable daemon; this would repeat it.
                log.debug("discovery.docker: events stream failed: %s", exc)
            await asyncio.sleep(backoff.next_delay())


def _event_since(event: Mapping[str, Any], default: str) -> str:
    nanos = event.get("timeNano")
    if isinstance(nanos, int) and nanos > 0:
        return since_arg(nanos) or default
    seconds = event.get("time")
    return str(seconds) if isinstance(seconds, int) else default
