"""End to end: the compose stack of ``compose/`` brought up for real with this machine's
override (host networking, local stand-in images), all but Grafana.

Checks that every demo service's lines are in Loki under exactly ``{service="<name>"}``
and no other container's are, and that ``docker kill`` of the ``alloy`` container in the
middle of the stream, then ``docker start``, loses no line and sends none twice
(compared with ``docker logs``, and with the count of lines Loki's distributor
received, which sees a duplicate that Loki's storage would fold away). ``down -v`` runs
whatever happened.

Skipped, with the reason, when Docker Compose v2 or an image is missing
(``scripts/setup-compose`` provides them), or when a port or a container name the seed
fixes (Loki 3100 and 9095, the agent 12345, Prometheus 9090; ``loki``, ``alloy``...) is
taken on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_helpers import REPO, docker_lines, metric_sum
from docker_helpers import TEST_LABEL
from loki_helpers import QueriedStream, query_range, total_entries

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

COMPOSE_DIR = REPO / "compose"
FILES = ("docker-compose.yml", "docker-compose.host-network.yml")
DEMO = ("web-gateway", "order-api", "fulfillment-worker")
INFRA = ("loki", "alloy", "prometheus")
#: Loki HTTP and gRPC, the agent, Prometheus: fixed by the seed's files.
PORTS = (3100, 9095, 12345, 9090)
IMAGES = (
    "grafana/loki:3.6.0",
    "busybox:1.35",
    "prom/prometheus:v2.42.0",
    "minilog-base:bookworm",
)
LOKI = "http://127.0.0.1:3100"
AGENT = "http://127.0.0.1:12345"
PROJECT_PREFIX = "minilog-e2e-"


def _run(*args: str, timeout: float = 300, check: bool = True) -> str:
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _skip_reason(client: Any) -> str | None:
    try:
        _run("docker", "compose", "version", timeout=30)
    except (AssertionError, OSError, subprocess.TimeoutExpired):
        return "Docker Compose v2 is not available: run scripts/setup-compose"
    import docker.errors

    for image in IMAGES:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            return f"image {image} is missing: run scripts/setup-compose"
    for name in (*INFRA, *DEMO):
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            continue
        project = container.labels.get("com.docker.compose.project", "")
        if project.startswith(PROJECT_PREFIX):
            # Left by a run of this test that could not clean up: take it down.
            _compose(project, Path("/nonexistent"), "down", "-v", check=False)
            continue
        return f"a container named {name} exists (not this test's): the seed fixes it"
    taken = [p for p in PORTS if _port_taken(p)]
    if taken:
        return f"ports the seed's stack needs are in use here: {taken}"
    return None


def _compose(project: str, extra: Path, *args: str, check: bool = True) -> str:
    files: list[str] = []
    for name in FILES:
        files += ["-f", str(COMPOSE_DIR / name)]
    if extra.exists():
        files += ["-f", str(extra)]
    return _run(
        "docker", "compose", "-p", project, *files, *args, timeout=600, check=check
    )


@pytest.fixture
def stack(docker_client: Any, tmp_path: Path) -> Iterator[Any]:
    reason = _skip_reason(docker_client)
    if reason is not None:
        pytest.skip(reason)
    project = PROJECT_PREFIX + uuid.uuid4().hex[:8]
    # The suite's rule: every test container carries the test label.
    labels = tmp_path / "test-labels.yml"
    labels.write_text(
        "services:\n"
        + "".join(
            f'  {name}:\n    labels:\n      {TEST_LABEL}: "1"\n'
            for name in (*INFRA, *DEMO)
        )
    )

    def compose(*args: str, check: bool = True) -> str:
        return _compose(project, labels, *args, check=check)

    try:
        yield compose
    finally:
        compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False)


async def _service_streams(
    session: aiohttp.ClientSession, selector: str, start_ns: int
) -> list[QueriedStream]:
    return await query_range(
        session,
        LOKI,
        selector,
        start_ns=start_ns,
        end_ns=time.time_ns() + 60 * 10**9,
        limit=5000,
    )


def _entries(streams: list[QueriedStream]) -> list[tuple[int, str]]:
    return sorted((e.timestamp_ns, e.line) for s in streams for e in s.entries)


async def _poll(what: str, timeout_s: float, check: Any) -> None:
    """Await ``check()`` true; the stack offers no event to wait on (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.5)


async def _kill_after_a_saved_push(session: aiohttp.ClientSession) -> None:
    sent = -1.0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with session.get(AGENT + "/metrics") as resp:
            text = await resp.text()
        now_sent = metric_sum(text, "loki_write_sent_entries_total")
        saved = metric_sum(text, "minilog_source_docker_positions_age_seconds") == 0
        if sent >= 0 and now_sent > sent and saved:
            _run("docker", "kill", "alloy")
            return
        sent = now_sent
        await asyncio.sleep(0.02)  # the agent's metrics offer no event: poll, bounded
    raise AssertionError("no push was acknowledged and saved within 60 s")


async def test_the_seed_stack_ships_every_line_once_across_a_kill(
    stack: Any, docker_client: Any
) -> None:
    start_ns = time.time_ns() - 60 * 10**9
    # --wait: Loki and the agent healthy (the agent's HEALTHCHECK asks /-/ready).
    stack("up", "-d", "--build", "--wait", "--wait-timeout", "240")
    containers = {name: docker_client.containers.get(name) for name in DEMO}
    alloy = docker_client.containers.get("alloy")
    assert alloy.attrs["State"]["Health"]["Status"] == "healthy"

    async with aiohttp.ClientSession() as session:

        async def each_service_has(counts: dict[str, int]) -> bool:
            for name, count in counts.items():
                streams = await _service_streams(
                    session, f'{{service="{name}"}}', start_ns
                )
                if total_entries(streams) < count:
                    return False
            return True

        await _poll(
            "5 lines of each service in Loki",
            60,
            lambda: each_service_has(dict.fromkeys(DEMO, 5)),
        )

        # Mid-stream: the services keep writing while the agent is dead, and the
        # agent holds lines it has read and not sent. The kill lands just after a push
        # was acknowledged and its positions saved: in the few milliseconds between
        # Loki's answer and the positions write, a kill makes at-least-once delivery
        # send that batch again, which is not what this test is about.
        before = {n: len(docker_lines(c)) for n, c in containers.items()}
        await _kill_after_a_saved_push(session)

        async def written_while_dead() -> bool:
            return all(
                len(docker_lines(c)) >= before[n] + 5 for n, c in containers.items()
            )

        await _poll("lines written while the agent is down", 30, written_while_dead)
        alloy.reload()
        if alloy.status != "running":
            _run("docker", "start", "alloy")

        async def agent_ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(AGENT + "/-/ready") as resp:
                    return resp.status == 200
            return False

        await _poll("the agent ready again", 60, agent_ready)
        # What was written before and while the agent was down reaches Loki.
        after = {n: len(docker_lines(c)) for n, c in containers.items()}
        await _poll("the backlog shipped", 60, lambda: each_service_has(after))
        # Freeze what Docker holds, then let the agent ship the rest.
        stack("stop", "--timeout", "5", *DEMO)
        expected = {n: docker_lines(c) for n, c in containers.items()}

        counts = {n: len(lines) for n, lines in expected.items()}

        async def all_shipped() -> bool:
            return await each_service_has(counts)

        await _poll("every line Docker holds queryable in Loki", 60, all_shipped)

        for name in DEMO:
            streams = await _service_streams(session, f'{{service="{name}"}}', start_ns)
            # Exactly the stream label the seed's relabelling gives (Loki adds its
            # service_name from it).
            assert {frozenset(s.labels.items()) for s in streams} == {
                frozenset({"service": name, "service_name": name}.items())
            }
            # No line lost, with Docker's own timestamps.
            assert _entries(streams) == sorted(expected[name]), name

        # No other container's lines: the demo services are the only values of the
        # only label the pipeline sets.
        async with session.get(LOKI + "/loki/api/v1/labels") as resp:
            assert set((await resp.json())["data"]) == {"service", "service_name"}
        async with session.get(LOKI + "/loki/api/v1/label/service/values") as resp:
            assert sorted((await resp.json())["data"]) == sorted(DEMO)

        # None sent twice: Loki's storage folds an exact duplicate away, its
        # distributor counts every line it was sent.
        async with session.get(LOKI + "/metrics") as resp:
            received = metric_sum(
                await resp.text(), "loki_distributor_lines_received_total"
            )
        assert received == sum(len(lines) for lines in expected.values())
