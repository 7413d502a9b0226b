"""discovery.docker: targets exactly as Prometheus 3.13.2 builds them; refresh loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from discovery_helpers import FakeDocker, Published
from prometheus_client import CollectorRegistry

from minilog.docker.client import DockerClient
from minilog.docker.discovery import (
    DockerDiscovery,
    build_targets,
    merge_filters,
    sanitize_label_name,
)
from minilog.errors import ConfigError, DockerError, DockerUnavailableError

DATA = Path(__file__).resolve().parents[1] / "data" / "docker"

NONE_NET = "f2df7cdf1e93e2651687c4d482519c76a055c4fffda8d0bbad56cd419ebcc54c"
HOST_NET = "48b213dbdc501edf6a105b27a44ff667db1575954f4935548bacabab3fcd6464"
BACKEND_NET = "9c3a5e1f0b7d4c2a8e6f1d3b5a7c9e0f2d4b6a8c0e1f3d5b7a9c2e4f6a8b0d1c"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def net_labels(net_id: str, name: str, **extra: str) -> dict[str, str]:
    labels = {
        "__meta_docker_network_id": net_id,
        "__meta_docker_network_name": name,
        "__meta_docker_network_scope": "local",
        "__meta_docker_network_internal": "false",
        "__meta_docker_network_ingress": "false",
    }
    labels.update(extra)
    return labels


def container(
    cid: str,
    name: str,
    *,
    mode: str = "backend",
    networks: Mapping[str, Any] | None = None,
    ports: Sequence[Mapping[str, Any]] = (),
    labels: Mapping[str, str] | None = None,
    state: str = "running",
) -> dict[str, Any]:
    return {
        "Id": cid,
        "Names": [f"/{name}"],
        "Labels": dict(labels or {}),
        "Ports": list(ports),
        "State": state,
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": dict(networks or {})},
    }


def endpoint(net_id: str, ip: str = "", ipv6: str = "") -> dict[str, Any]:
    return {"NetworkID": net_id, "IPAddress": ip, "GlobalIPv6Address": ipv6}


# -- build_targets on the recorded list ------------------------------------------------


def test_recorded_containers_give_one_fallback_target_each() -> None:
    targets = build_targets(load("containers-list.json"), load("networks.json"))
    by_name = {t["__meta_docker_container_name"]: t for t in targets}
    assert [t["__meta_docker_container_name"] for t in targets] == [
        "/fx-labels",
        "/fx-tty",
        "/fx-mixed",
        "/pa-bench-r1",
        "/order-api",
    ]
    # host mode, no ports: the address is host_networking_host with no port.
    assert by_name["/fx-labels"] == {
        "__meta_docker_container_id": (
            "f2574fcb6946c27676d29116a92a55e24070ac4da541f98ff612d91fa7c8198b"
        ),
        "__meta_docker_container_name": "/fx-labels",
        "__meta_docker_container_network_mode": "host",
        "__meta_docker_container_label_app": "web-gateway",
        "__meta_docker_container_label_weird_label_name_x": "v a l",
        "__meta_docker_network_ip": "",
        **net_labels(HOST_NET, "host"),
        "__address__": "localhost",
    }
    # --network none: an empty IP joined with the default port.
    assert by_name["/fx-mixed"] == {
        "__meta_docker_container_id": (
            "2f7ff8409f41189702ee498e0a299b896c9b8c32c30e5c95df86aca18df5364f"
        ),
        "__meta_docker_container_name": "/fx-mixed",
        "__meta_docker_container_network_mode": "none",
        "__meta_docker_container_label_com_docker_compose_service": "order-api",
        "__meta_docker_container_label_com_example_team": "payments",
        "__meta_docker_network_ip": "",
        **net_labels(NONE_NET, "none"),
        "__address__": ":80",
    }
    # An endpoint whose NetworkID matches no network gets no network labels.
    assert by_name["/pa-bench-r1"] == {
        "__meta_docker_container_id": (
            "274976780ed835cc29f9c424f5c0eb36bd9a7c4d84f127dff256d58d38385f8d"
        ),
        "__meta_docker_container_name": "/pa-bench-r1",
        "__meta_docker_container_network_mode": "default",
        "__meta_docker_network_ip": "",
        "__address__": ":80",
    }


def test_port_and_host_networking_host_arguments_shape_fallback_addresses() -> None:
    targets = build_targets(
        load("containers-list.json"),
        load("networks.json"),
        port=9100,
        host_networking_host="node-1.example",
    )
    addresses = {t["__meta_docker_container_name"]: t["__address__"] for t in targets}
    assert addresses == {
        "/fx-labels": "node-1.example",
        "/fx-tty": ":9100",
        "/fx-mixed": ":9100",
        "/pa-bench-r1": ":9100",
        "/order-api": ":9100",
    }


# -- build_targets on synthetic containers ---------------------------------------------


def test_one_target_per_tcp_port_binding_and_udp_is_skipped() -> None:
    c = container(
        "a" * 64,
        "web",
        networks={"backend": endpoint(BACKEND_NET, "172.20.0.2")},
        ports=[
            {"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": 32768, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 8080, "PublicPort": 32768, "Type": "tcp"},
            {"PrivatePort": 9000, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 53, "Type": "udp"},
        ],
    )
    targets = build_targets([c], load("networks.json"))
    backend = net_labels(
        BACKEND_NET,
        "backend",
        __meta_docker_network_internal="true",
        __meta_docker_network_label_com_docker_compose_network="backend",
        __meta_docker_network_label_tier_name="db",
    )
    common = {
        "__meta_docker_container_id": "a" * 64,
        "__meta_docker_container_name": "/web",
        "__meta_docker_container_network_mode": "backend",
        "__meta_docker_network_ip": "172.20.0.2",
        **backend,
    }
    assert targets == [
        {
            **common,
            "__meta_docker_port_private": "8080",
            "__meta_docker_port_public": "32768",
            "__meta_docker_port_public_ip": "0.0.0.0",
            "__address__": "172.20.0.2:8080",
        },
        {
            **common,
            "__meta_docker_port_private": "8080",
            "__meta_docker_port_public": "32768",
            "__meta_docker_port_public_ip": "::",
            "__address__": "172.20.0.2:8080",
        },
        {
            **common,
            "__meta_docker_port_private": "9000",
            "__address__": "172.20.0.2:9000",
        },
    ]


def test_only_udp_ports_fall_back_to_the_port_argument() -> None:
    c = container(
        "b" * 64,
        "dns",
        networks={"backend": endpoint(BACKEND_NET, "172.20.0.3")},
        ports=[{"PrivatePort": 53, "Type": "udp"}],
    )
    [target] = build_targets([c], [], port=8053)
    assert target["__address__"] == "172.20.0.3:8053"
    assert "__meta_docker_port_private" not in target


def test_match_first_network_keeps_the_name_that_sorts_first() -> None:
    nets = {
        "zeta": endpoint("z-id", "10.0.1.5"),
        "alpha": endpoint("a-id", "10.0.2.5"),
    }
    c = container("c" * 64, "multi", networks=nets)
    first = build_targets([c], [])
    assert [t["__address__"] for t in first] == ["10.0.2.5:80"]
    both = build_targets([c], [], match_first_network=False)
    assert sorted(t["__address__"] for t in both) == ["10.0.1.5:80", "10.0.2.5:80"]


def test_match_first_network_skips_null_endpoints() -> None:
    c = container(
        "d" * 64, "n", networks={"aaa": None, "bbb": endpoint("b", "10.0.0.9")}
    )
    assert [t["__address__"] for t in build_targets([c], [])] == ["10.0.0.9:80"]


def test_container_network_mode_borrows_the_networks_of_the_referenced_container() -> (
    None
):
    owner = container(
        "e" * 64, "owner", networks={"backend": endpoint(BACKEND_NET, "172.20.0.7")}
    )
    sidecar = container("f" * 64, "sidecar", mode="container:" + "e" * 64)
    targets = build_targets([sidecar, owner], load("networks.json"))
    side = targets[0]
    assert side["__meta_docker_container_name"] == "/sidecar"
    assert side["__meta_docker_container_network_mode"] == "container:" + "e" * 64
    assert side["__meta_docker_network_ip"] == "172.20.0.7"
    assert side["__meta_docker_network_name"] == "backend"
    assert side["__address__"] == "172.20.0.7:80"


def test_container_chain_is_followed_through_several_hops() -> None:
    a = container(
        "1" * 64, "a", networks={"backend": endpoint(BACKEND_NET, "172.20.0.9")}
    )
    b = container("2" * 64, "b", mode="container:" + "1" * 64)
    c = container("3" * 64, "c", mode="container:" + "2" * 64)
    targets = build_targets([c, b, a], [])
    assert [t["__address__"] for t in targets] == ["172.20.0.9:80"] * 3


def test_container_chain_to_a_host_mode_container_is_not_host_mode_itself() -> None:
    # The host-mode address rule reads the container's own mode, not the borrowed one.
    host = container("4" * 64, "h", mode="host", networks={"host": endpoint(HOST_NET)})
    side = container("5" * 64, "s", mode="container:" + "4" * 64)
    targets = build_targets([side, host], [])
    assert [t["__address__"] for t in targets] == [":80", "localhost"]


def test_containers_without_networks_or_names_yield_nothing() -> None:
    no_nets = container("6" * 64, "batch", mode="none")
    dangling = container("7" * 64, "orphan", mode="container:" + "9" * 64)
    cycle_a = container("8" * 64, "ca", mode="container:" + "9" * 64)
    cycle_b = container("9" * 64, "cb", mode="container:" + "8" * 64)
    nameless = container(
        "0" * 64, "x", networks={"backend": endpoint(BACKEND_NET, "1.2.3.4")}
    )
    nameless["Names"] = []
    assert build_targets([no_nets, dangling, cycle_a, cycle_b, nameless], []) == []


def test_ipv6_only_endpoints_have_an_empty_ip_in_prometheus_3_13() -> None:
    c = container("ab" * 32, "v6", networks={"v6net": endpoint("n", "", "fd00::5")})
    [target] = build_targets([c], [])
    assert target["__meta_docker_network_ip"] == ""
    assert target["__address__"] == ":80"


def test_ipv6_address_in_ipaddress_is_bracketed() -> None:
    c = container("cd" * 32, "v6", networks={"n": endpoint("n", "fd00::6")})
    c["Ports"] = [{"PrivatePort": 8080, "Type": "tcp"}]
    [target] = build_targets([c], [])
    assert target["__address__"] == "[fd00::6]:8080"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("com.docker.compose.service", "com_docker_compose_service"),
        ("a-b.c", "a_b_c"),
        ("é", "_"),
        ("日本", "__"),
        ("a..b", "a__b"),
        ("9lives", "9lives"),
        ("Already_Fine_1", "Already_Fine_1"),
        ("weird.label-name/x y", "weird_label_name_x_y"),
    ],
)
def test_sanitize_label_name_replaces_each_code_point(name: str, expected: str) -> None:
    assert sanitize_label_name(name) == expected


def test_recorded_labels_with_punctuation_are_sanitised() -> None:
    labels = load("inspect-labels.json")["Config"]["Labels"]
    c = container("ef" * 32, "l", networks={"none": endpoint(NONE_NET)}, labels=labels)
    [target] = build_targets([c], [])
    for key, value in labels.items():
        expected = "__meta_docker_container_label_" + "".join(
            ch if ch.isascii() and (ch.isalnum() or ch == "_") else "_" for ch in key
        )
        assert target[expected] == value


def test_merge_filters_unions_values_of_the_same_name_in_order() -> None:
    merged = merge_filters(
        [
            ("label", ["a=1", "b=2"]),
            ("status", ["running"]),
            ("label", ["b=2", "c=3"]),
        ]
    )
    assert merged == {"label": ["a=1", "b=2", "c=3"], "status": ["running"]}


# -- the refresh loop, against a scripted fake -----------------------------------------


def ids_of(targets: list[dict[str, str]]) -> set[str]:
    return {t["__meta_docker_container_id"] for t in targets}


def none_container(cid: str, name: str, state: str = "running") -> dict[str, Any]:
    return container(
        cid, name, mode="none", networks={"none": endpoint(NONE_NET)}, state=state
    )


async def running(discovery: DockerDiscovery, publish: Published) -> asyncio.Task[None]:
    task = asyncio.create_task(discovery.run(publish))
    await publish.wait_for(lambda _: True)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_first_refresh_publishes_even_an_empty_list_and_passes_filters() -> None:
    fake = FakeDocker()
    publish = Published()
    discovery = DockerDiscovery(
        fake, filters=[("label", ["a=1"]), ("label", ["b=2"])], refresh_interval=3600
    )
    task = await running(discovery, publish)
    assert publish.calls == [[]]
    assert fake.calls[0] == (False, {"label": ["a=1", "b=2"]})
    await stop(task)
    assert not fake.closed  # a client instance is borrowed, not owned


async def test_status_filter_lists_all_containers() -> None:
    fake = FakeDocker()
    fake.add(none_container("s" * 64, "stopped", state="exited"), running=False)
    publish = Published()
    discovery = DockerDiscovery(
        fake, filters=[("status", ["exited"])], refresh_interval=3600
    )
    task = await running(discovery, publish)
    assert fake.calls[0] == (True, {"status": ["exited"]})
    assert publish.ids() == {"s" * 64}
    await stop(task)


async def test_event_triggers_refresh_and_publishes_only_changes() -> None:
    fake = FakeDocker()
    fake.add(none_container("a" * 64, "one"))
    publish = Published()
    task = await running(DockerDiscovery(fake, refresh_interval=3600), publish)
    assert publish.ids() == {"a" * 64}

    # An event that changes nothing refreshes but publishes nothing new.
    before = fake.list_calls
    fake.emit("rename", "a" * 64)
    fake.add(none_container("b" * 64, "two"))
    fake.emit("start", "b" * 64)
    await publish.wait_for(lambda t: ids_of(t) == {"a" * 64, "b" * 64})
    assert fake.list_calls > before
    assert len(publish.calls) == 2
    await stop(task)


async def test_a_started_container_that_already_exited_is_still_published() -> None:
    fake = FakeDocker()
    publish = Published()
    now = [1000.0]
    discovery = DockerDiscovery(
        fake, refresh_interval=3600, exited_grace_s=30, clock=lambda: now[0]
    )
    task = await running(discovery, publish)
    # It started and exited before discovery listed: the running list never has it.
    fake.add(none_container("e" * 64, "blink", state="exited"), running=False)
    fake.emit("start", "e" * 64)
    fake.emit("die", "e" * 64)
    targets = await publish.wait_for(lambda t: ids_of(t) == {"e" * 64})
    assert targets[0]["__meta_docker_container_name"] == "/blink"
    # The follow-up list was by ID, with all=1.
    assert (True, {"id": ["e" * 64]}) in fake.calls

    # Within the grace period it stays; after it, the next refresh drops it.
    now[0] += 29
    fake.emit("rename", "x")
    await fake_refreshed(fake)
    assert publish.ids() == {"e" * 64}
    now[0] += 2
    fake.emit("rename", "x")
    await publish.wait_for(lambda t: t == [])
    await stop(task)


async def fake_refreshed(fake: FakeDocker) -> None:
    """Wait for the next list call. The fake never suspends, so the refresh it belongs
    to (and any publish) has finished by the time this test task runs again."""
    fake.listed.clear()
    async with asyncio.timeout(5):
        await fake.listed.wait()


async def test_a_status_filter_is_not_widened_by_pins() -> None:
    """status=running: an exited container stays out even though its start was seen
    (Docker's list alone decides, as in Alloy)."""
    fake = FakeDocker()
    publish = Published()
    discovery = DockerDiscovery(
        fake, filters=[("status", ["running"])], refresh_interval=3600
    )
    task = await running(discovery, publish)
    fake.add(none_container("r" * 64, "r"))
    fake.add(none_container("p" * 64, "p", state="exited"), running=False)
    fake.emit("start", "r" * 64)
    fake.emit("start", "p" * 64)
    await publish.wait_for(lambda t: ids_of(t) == {"r" * 64})
    fake.emit("rename", "x")  # one more refresh: still not pinned back in
    await fake_refreshed(fake)
    assert publish.ids() == {"r" * 64}
    assert all("id" not in filters for _, filters in fake.calls)
    await stop(task)


async def test_destroy_event_unpins_at_once() -> None:
    fake = FakeDocker()
    publish = Published()
    task = await running(DockerDiscovery(fake, refresh_interval=3600), publish)
    fake.add(none_container("d" * 64, "gone", state="exited"), running=False)
    fake.emit("start", "d" * 64)
    await publish.wait_for(lambda t: ids_of(t) == {"d" * 64})
    fake.emit(
        "destroy", "d" * 64
    )  # still "listed" by the fake: only the unpin drops it
    await publish.wait_for(lambda t: t == [])
    await stop(task)


async def test_a_pinned_container_seen_exited_without_a_die_event_gets_a_grace() -> (
    None
):
    fake = FakeDocker()
    publish = Published()
    now = [50.0]
    discovery = DockerDiscovery(
        fake, refresh_interval=3600, exited_grace_s=10, clock=lambda: now[0]
    )
    task = await running(discovery, publish)
    fake.add(none_container("m" * 64, "missed-die", state="exited"), running=False)
    fake.emit("start", "m" * 64)
    await publish.wait_for(lambda t: ids_of(t) == {"m" * 64})
    now[0] += 10
    fake.emit("rename", "x")
    await publish.wait_for(lambda t: t == [])
    await stop(task)


async def test_refresh_failure_keeps_targets_and_counts() -> None:
    fake = FakeDocker()
    fake.add(none_container("k" * 64, "keep"))
    publish = Published()
    registry = CollectorRegistry()
    discovery = DockerDiscovery(fake, refresh_interval=3600, registry=registry)
    task = await running(discovery, publish)
    fake.fail = DockerError("boom", status=500)
    fake.emit("rename", "k" * 64)
    await fake_refreshed(fake)
    assert len(publish.calls) == 1
    assert discovery.targets == publish.calls[0]
    failures = registry.get_sample_value(
        "prometheus_sd_refresh_failures_total", {"mechanism": "docker"}
    )
    assert failures == 1.0
    count = registry.get_sample_value(
        "prometheus_sd_refresh_duration_seconds_count", {"mechanism": "docker"}
    )
    assert count is not None and count >= 2
    await stop(task)


async def test_unavailable_daemon_is_logged_once_and_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="minilog.docker.discovery")
    fake = FakeDocker()
    fake.fail = DockerUnavailableError("Docker socket /x does not exist")
    publish = Published()
    registry = CollectorRegistry()
    discovery = DockerDiscovery(fake, refresh_interval=0.2, registry=registry)
    task = asyncio.create_task(discovery.run(publish))
    async with asyncio.timeout(10):
        while fake.list_calls < 3:
            fake.listed.clear()
            await fake.listed.wait()
    fake.fail = None
    fake.add(none_container("r" * 64, "back"))
    await publish.wait_for(lambda t: ids_of(t) == {"r" * 64})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "/x does not exist" in warnings[0].getMessage()
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "reachable again" in infos[0].getMessage()
    failures = registry.get_sample_value(
        "prometheus_sd_refresh_failures_total", {"mechanism": "docker"}
    )
    assert failures is not None and failures >= 3
    await stop(task)


async def test_events_stream_reconnects_and_resumes_from_the_last_event() -> None:
    fake = FakeDocker()
    fake.events_fail = [DockerUnavailableError("down")]  # the first subscription fails
    publish = Published()
    task = await running(
        DockerDiscovery(fake, refresh_interval=3600, wall_clock=lambda: 2000.5), publish
    )
    fake.add(none_container("a" * 64, "one"))
    fake.event_queue.put_nowait(
        {
            "Type": "container",
            "Action": "start",
            "Actor": {"ID": "a" * 64},
            "timeNano": 2001_000000123,
        }
    )
    await publish.wait_for(lambda t: ids_of(t) == {"a" * 64})
    fake.event_queue.put_nowait({"end_stream": True})  # the daemon closes the stream
    fake.add(none_container("b" * 64, "two"))
    fake.emit("start", "b" * 64)  # delivered on the third subscription
    await publish.wait_for(lambda t: ids_of(t) == {"a" * 64, "b" * 64})
    # Started a second early (replay covers the first list call); resumed from the
    # last event seen, so nothing in between is lost.
    assert fake.subscriptions == ["1999.500000000", "1999.500000000", "2001.000000123"]
    await stop(task)


async def test_a_client_factory_is_owned_and_closed() -> None:
    fake = FakeDocker()
    publish = Published()
    task = await running(DockerDiscovery(lambda: fake, refresh_interval=3600), publish)
    await stop(task)
    assert fake.closed


def test_refresh_interval_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="greater than 0"):
        DockerDiscovery(FakeDocker(), refresh_interval=0)


def test_a_bad_host_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="unsupported Docker host"):
        DockerDiscovery("npipe:////./pipe/docker_engine")


# -- against the real daemon -----------------------------------------------------------


@pytest.mark.docker
async def test_real_daemon_new_container_is_published_within_a_second(
    docker_client: Any, docker_containers: Any
) -> None:
    publish = Published()
    value = str(time.monotonic_ns())
    discovery = DockerDiscovery(
        None, filters=[("label", [f"minilog.disc={value}"])], refresh_interval=3600
    )
    task = await running(discovery, publish)
    assert publish.calls[-1] == []
    box = await asyncio.to_thread(
        docker_containers, "sleep 30", labels={"minilog.disc": value}
    )
    # Timed from the moment Docker reports it started (container creation itself can
    # take longer than a second on a loaded machine); refresh_interval is an hour.
    started = time.monotonic()
    targets = await publish.wait_for(lambda t: box.id in ids_of(t), limit_s=5)
    assert time.monotonic() - started < 1.0
    [target] = targets
    assert target["__meta_docker_container_name"] == f"/{box.name}"
    assert target["__meta_docker_container_network_mode"] == "none"
    assert target["__meta_docker_network_name"] == "none"
    assert target["__address__"] == ":80"
    await stop(task)


@pytest.mark.docker
async def test_real_daemon_container_that_exits_immediately_is_published(
    docker_client: Any, docker_containers: Any
) -> None:
    publish = Published()
    value = str(time.monotonic_ns())
    client = DockerClient()
    discovery = DockerDiscovery(
        client, filters=[("label", [f"minilog.disc={value}"])], refresh_interval=3600
    )
    task = await running(discovery, publish)
    box = await asyncio.to_thread(
        docker_containers, "echo x", labels={"minilog.disc": value}
    )
    await asyncio.to_thread(box.wait, timeout=10)
    targets = await publish.wait_for(lambda t: box.id in ids_of(t), limit_s=5)
    assert targets[0]["__meta_docker_container_label_minilog_disc"] == value
    # A refresh now, with the container exited (so absent from Docker's list of running
    # containers), still has it: the pin from its start event keeps it.
    box.reload()
    assert box.status == "exited"
    later = await discovery.refresh(client)
    assert later is not None and box.id in ids_of(later)
    await stop(task)
    await client.aclose()


async def test_events_are_replayed_from_when_discovery_was_made_not_when_it_runs() -> (
    None
):
    """On a busy machine the task may first run seconds after the component was built:
    a container that started and died in between is only known from its events."""
    fake = FakeDocker()
    wall = [5000.0]
    discovery = DockerDiscovery(fake, refresh_interval=3600, wall_clock=lambda: wall[0])
    wall[0] = 5030.0  # the task starts 30 s later
    task = await running(discovery, Published())
    assert fake.subscriptions == ["4999.000000000"]
    await stop(task)
