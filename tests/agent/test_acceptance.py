"""Acceptance: the UNCHANGED seed config, run by ``minilog run``, against the real
Docker Engine.

The seed hard-codes ``http://loki:3100/loki/api/v1/push``. The config file is not
edited: the agent runs with the test-only flag
``--testing.url-override=http://loki:3100=<fake>``, which rewrites ``loki.write``
endpoint URLs with that prefix (the flag is documented as test-only and does nothing
unless given). The first test ships to a ``FakeLoki``; the second to a real Loki 3.6
(the ``loki_base`` fixture: ``LOKI_URL``, else one the session starts) and reads the
lines back through ``query_range``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_helpers import AgentProcess, docker_lines, start_agent_process
from docker_helpers import TEST_LABEL
from loki_helpers import DETECTED_LEVEL, expected_stream_labels, wait_for_entries

from minilog.testing import FakeLoki

pytestmark = pytest.mark.docker

SEED = Path(__file__).resolve().parents[1] / "data" / "alloy" / "seed-config.alloy"
SECOND_NS = 1_000_000_000
SHIPPED = ("web-gateway", "order-api", "fulfillment-worker")
NOT_SHIPPED = "inventory-db"


@pytest.fixture
def app_containers(
    docker_client: Any, docker_containers: Any
) -> Iterator[Callable[..., Any]]:
    """Start a container under one of the seed's service names (clearing a stale test
    one)."""

    def start(name: str, run_id: str, count: int) -> Any:
        try:
            old = docker_client.containers.get(name)
        except Exception:
            old = None
        if old is not None:
            if old.labels.get(TEST_LABEL) != "1":
                pytest.skip(
                    f"a container named {name} exists and is not a test container"
                )
            old.remove(force=True)
        line = f"{name} {run_id} line $i"
        script = f'for i in $(seq 1 {count}); do echo "{line}"; done; sleep 120'
        return docker_containers(script, name=name)

    yield start


@pytest.fixture
async def run_seed(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    procs: list[AgentProcess] = []

    async def start(loki_base: str) -> AgentProcess:
        agent = await start_agent_process(
            SEED,
            tmp_path / "data",
            f"--testing.url-override=http://loki:3100={loki_base}",
        )
        procs.append(agent)
        return agent

    yield start
    for agent in procs:
        await agent.kill()


async def test_seed_config_ships_the_three_services_to_fake_loki(
    app_containers: Callable[..., Any], run_seed: Callable[[str], Any]
) -> None:
    run_id = uuid.uuid4().hex[:12]
    async with FakeLoki() as loki:
        # Two services log before the agent starts, one after: backlog and discovery.
        early = [
            app_containers(n, run_id, 5) for n in ("order-api", "fulfillment-worker")
        ]
        other = app_containers(NOT_SHIPPED, run_id, 5)
        agent = await run_seed(loki.url)
        late = app_containers("web-gateway", run_id, 5)
        await loki.wait_for_entries(15, timeout=30)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                agent.url + "/api/v0/web/components/loki.source.docker.app_logs"
            ) as resp,
        ):
            source = await resp.json()
        assert await agent.stop() == 0

    # The UI's view of the Docker source: each target's final labels and tail position.
    targets = source["debugInfo"]["targets_info"]
    assert sorted(t["final_labels"]["stdout"]["service"] for t in targets) == sorted(
        SHIPPED
    )
    for t in targets:
        assert t["final_labels"]["stdout"] == {
            "service": t["final_labels"]["stdout"]["service"]
        }
        assert t["read_position_ns"] > 0  # committed position_ns follows the ack

    containers = {c.name: c for c in [*early, late]}
    got: dict[str, list[tuple[int, str]]] = {}
    for labels, entry in loki.entries:
        assert NOT_SHIPPED not in entry.line
        got.setdefault(labels.get("service", "?"), []).append(
            (entry.timestamp_ns, entry.line)
        )
        assert labels == {"service": labels["service"]}, labels
    assert set(got) == set(SHIPPED)
    for name in SHIPPED:
        # Exactly what Docker holds, once each, with Docker's own timestamps.
        assert got[name] == docker_lines(containers[name])
        assert [line for _, line in got[name]] == [
            f"{name} {run_id} line {i}" for i in range(1, 6)
        ]
    assert [line for _, line in docker_lines(other)]  # it did log; it was filtered out


@pytest.mark.loki
async def test_seed_config_ships_to_a_real_loki(
    app_containers: Callable[..., Any],
    run_seed: Callable[[str], Any],
    loki_base: str,
) -> None:
    base = loki_base
    run_id = uuid.uuid4().hex[:12]
    start_ns = time.time_ns() - 60 * SECOND_NS
    containers = {name: app_containers(name, run_id, 3) for name in SHIPPED}
    other = app_containers(NOT_SHIPPED, run_id, 3)
    agent = await run_seed(base)

    services = "web-gateway|order-api|fulfillment-worker|inventory-db"
    async with aiohttp.ClientSession() as session:
        streams = await wait_for_entries(
            session,
            base,
            f'{{service=~"{services}"}} |= "{run_id}"',
            3 * len(SHIPPED),
            start_ns=start_ns,
            end_ns=time.time_ns() + 120 * SECOND_NS,
            attempts=120,  # discovery, the first tail and batch_wait: up to ~30 s
        )
    assert await agent.stop() == 0
    got = {stream.labels.get("service", "?"): stream for stream in streams}
    # On a miss, the agent's own account of what it discovered and sent.
    assert set(got) == set(SHIPPED), "".join(agent.lines[-40:])
    for name, stream in got.items():
        # The agent sends the one label; Loki 3 adds service_name from it.
        assert stream.labels == expected_stream_labels({"service": name})
        assert [(e.timestamp_ns, e.line) for e in stream.entries] == docker_lines(
            containers[name]
        )
        # The agent sends no structured metadata; Loki 3.6 adds its detected_level,
        # "unknown" for these lines that name no level.
        assert [e.structured_metadata for e in stream.entries] == [
            {DETECTED_LEVEL: "unknown"}
        ] * len(stream.entries)
    assert docker_lines(other)
