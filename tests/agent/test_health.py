"""Health that tells the truth: components report why they are unhealthy and recover.

Unit level: the problem bookkeeping of ``Component``, discovery's status against a
scripted client. Component level, in process: ``discovery.docker`` and
``loki.source.docker`` against a fake Docker Engine on a unix socket that is missing,
then answering, and a positions file on a read-only then writable tmpfs. Agent level:
``python -m minilog run`` as an unprivileged user against a socket that hangs (at
startup), disappears, refuses permission (a real EACCES: the socket is root's, mode
0600) and comes back, with ``/-/healthy`` and ``/-/ready`` answering as Alloy's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from agent_helpers import AgentProcess, start_agent_process, wait_until
from discovery_helpers import FakeDocker, Published
from fake_docker import FakeDockerEngine
from fs_helpers import (
    as_user,
    fs_fault_unavailable_reason,
    remount,
    tiny_tmpfs,
    user_unavailable_reason,
)
from prometheus_client import CollectorRegistry

from minilog.agent.logsetup import component_logger
from minilog.components import COMPONENT_TYPES, Component, ComponentOptions
from minilog.config import Scope, parse
from minilog.config.ast import Block
from minilog.docker.discovery import DockerDiscovery
from minilog.errors import DockerUnavailableError
from minilog.testing import FakeLoki

# ------------------------------------------------------------------ unit level


class Plain(Component):
    name = "test.plain"
    phase = "source"

    async def update(self, args: Any) -> None:
        pass


def plain() -> Plain:
    opts = ComponentOptions(
        id="test.plain.x",
        data_path=Path("/nonexistent"),
        registry=CollectorRegistry(),
        logger=component_logger("test.plain.x"),
    )
    return Plain(opts, {})


def test_problems_make_a_component_unhealthy_until_each_is_cleared() -> None:
    c = plain()
    assert (c.health().state, c.health().message) == ("healthy", "started")
    c.report_problem("docker", "cannot reach Docker")
    c.report_problem("positions", "cannot save positions")
    assert c.health().state == "unhealthy"
    assert c.health().message == "cannot reach Docker; cannot save positions"
    c.clear_problem("docker", "Docker is back")
    assert (c.health().state, c.health().message) == (
        "unhealthy",
        "cannot save positions",
    )
    c.clear_problem("positions", "saved again")
    assert (c.health().state, c.health().message) == ("healthy", "saved again")


def test_the_runtime_health_wins_over_the_components_own_view() -> None:
    c = plain()
    c.report_problem("docker", "cannot reach Docker")
    c.set_health("exited", "stopped")
    assert c.health().state == "exited"
    c.set_health("unhealthy", "bad config")
    c.clear_problem("docker")
    # Clearing its own problem does not clear what the runtime set.
    assert (c.health().state, c.health().message) == ("unhealthy", "bad config")


async def test_discovery_status_says_why_and_when_it_recovers() -> None:
    fake = FakeDocker()
    statuses: asyncio.Queue[str | None] = asyncio.Queue()
    discovery = DockerDiscovery(
        fake, refresh_interval=0.5, on_status=statuses.put_nowait, slow_after_s=0.05
    )
    fake.fail = DockerUnavailableError("Docker socket /x does not exist")
    task = asyncio.create_task(discovery.run(Published()))
    try:
        async with asyncio.timeout(10):
            first = await statuses.get()
            assert first == "cannot list containers: Docker socket /x does not exist"
            assert discovery.error == first
            fake.fail = None
            assert await statuses.get() is None
            # A daemon that accepts the request and never answers: late, then given up.
            gate = asyncio.Event()
            fake.gate = gate
            assert await statuses.get() == (
                "cannot list containers: the Docker daemon has not answered for 0.05 s"
            )
            assert await statuses.get() == (
                "cannot list containers: the Docker daemon did not answer within 0.5 s"
            )
            fake.gate = None
            gate.set()
            assert await statuses.get() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Each change was reported once: nothing else is queued.
    assert statuses.empty()


# ------------------------------------------------------------------ component level


def build(text: str, data_path: Path) -> Any:
    block = parse(text, "test.alloy").body[0]
    assert isinstance(block, Block)
    cls = COMPONENT_TYPES[block.full_name]
    args = cls.parse_args(cls.decode(block, Scope(components={})), block)
    opts = ComponentOptions(
        id=block.id,
        data_path=data_path / block.id,
        registry=CollectorRegistry(auto_describe=True),
        logger=component_logger(block.id),
    )
    return cls(opts, args)


async def wait_health(
    component: Component, state: str, text: str = "", timeout_s: float = 20
) -> str:
    def ok() -> bool:
        health = component.health()
        return health.state == state and text in health.message

    await wait_until(ok, timeout_s, f"{component.id} {state} with {text!r}")
    return component.health().message


@pytest.mark.parametrize("kind", ["discovery.docker", "loki.source.docker"])
async def test_a_missing_socket_is_unhealthy_until_docker_answers(
    tmp_path: Path, kind: str
) -> None:
    engine = FakeDockerEngine(tmp_path / "docker.sock")
    extra = "targets = []\n  forward_to = []\n" if kind == "loki.source.docker" else ""
    component = build(
        f'{kind} "x" {{\n  host = "{engine.host}"\n  {extra}}}\n', tmp_path
    )
    task = asyncio.create_task(component.run())
    try:
        message = await wait_health(component, "unhealthy", "does not exist")
        assert str(engine.path) in message
        await engine.start()
        await wait_health(component, "healthy", "reachable again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await component.finalize()
        await engine.aclose()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    reason = fs_fault_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with tiny_tmpfs(tmp_path / "mnt") as mount:
        yield mount


async def test_positions_that_cannot_be_saved_make_the_source_unhealthy(
    tmp_path: Path, tmpfs: Path
) -> None:
    engine = FakeDockerEngine(tmp_path / "docker.sock")
    await engine.start()
    # A damaged positions file on a read-only disk: the recovered state cannot be
    # saved, so the source says so, and recovers once the disk is writable again.
    positions = tmpfs / "loki.source.docker.x" / "positions.json"
    positions.parent.mkdir()
    positions.write_bytes(b"{broken")
    remount(tmpfs, read_only=True)
    try:
        component = build(
            f'loki.source.docker "x" {{\n  host = "{engine.host}"\n'
            "  targets = []\n  forward_to = []\n}\n",
            tmpfs,
        )
        health = component.health()
        assert health.state == "unhealthy"
        assert health.message.startswith(f"cannot save positions file {positions}: ")
        assert "Read-only file system" in health.message
        task = asyncio.create_task(component.run())
        try:
            remount(tmpfs, read_only=False)
            await wait_health(component, "healthy", "saved again")
            assert orjson.loads(positions.read_bytes()) == {}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await component.finalize()
    finally:
        remount(tmpfs, read_only=False)
        await engine.aclose()


# ------------------------------------------------------------------ agent level


def health_config(engine: FakeDockerEngine, loki: FakeLoki) -> str:
    return f"""
discovery.docker "containers" {{
  host             = "{engine.host}"
  refresh_interval = "3s"
}}

loki.source.docker "logs" {{
  host       = "{engine.host}"
  targets    = discovery.docker.containers.targets
  forward_to = [loki.write.out.receiver]
}}

loki.write "out" {{
  endpoint {{
    url = "{loki.push_url}"
  }}
}}
"""


@pytest.fixture
async def unprivileged_agent(
    tmp_path: Path,
) -> AsyncIterator[Callable[[Path], Any]]:
    """Starts ``python -m minilog run`` as ``nobody``; killed at teardown."""
    reason = user_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    started: list[AgentProcess] = []

    async def start(config: Path) -> AgentProcess:
        storage = tmp_path / "data"
        storage.mkdir(exist_ok=True)
        storage.chmod(0o777)
        agent = await start_agent_process(config, storage, prefix=as_user([]))
        started.append(agent)
        return agent

    yield start
    for agent in started:
        await agent.kill()


async def component_health(agent: AgentProcess) -> dict[str, tuple[str, str]]:
    status, body = await agent.get("/api/v0/web/components")
    assert status == 200
    return {
        c["localID"]: (c["health"]["state"], c["health"]["message"])
        for c in orjson.loads(body)
    }


async def wait_both(agent: AgentProcess, state: str, text: str) -> None:
    ids = ("discovery.docker.containers", "loki.source.docker.logs")

    async def ok() -> bool:
        health = await component_health(agent)
        return all(health[i][0] == state and text in health[i][1] for i in ids)

    try:
        await wait_until(ok, 30, f"both Docker components {state} with {text!r}")
    except AssertionError:
        raise AssertionError(f"{await component_health(agent)}") from None


@pytest.mark.timeout(180)
async def test_agent_health_follows_a_hanging_missing_forbidden_then_healthy_docker(
    tmp_path: Path, unprivileged_agent: Callable[[Path], Any]
) -> None:
    engine = FakeDockerEngine(tmp_path / "docker.sock")
    async with FakeLoki() as loki:
        config = tmp_path / "agent.alloy"
        config.write_text(health_config(engine, loki))
        # 1. Docker accepts connections and never answers: the agent still starts,
        # and its endpoints answer at once.
        engine.hang()
        await engine.start(mode=0o666)
        agent: AgentProcess = await unprivileged_agent(config)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(agent.url + "/-/ready") as resp:
                assert (resp.status, await resp.text()) == (200, "minilog is ready.\n")
            async with session.get(agent.url + "/-/healthy") as resp:
                assert resp.status in (200, 500)
        await wait_both(agent, "unhealthy", "answer")
        health = await component_health(agent)
        assert health["discovery.docker.containers"][1] == (
            f"cannot list containers: Docker at {engine.host} did not answer within 3 s"
        )
        assert health["loki.source.docker.logs"][1] == (
            f"cannot reach Docker: Docker at {engine.host} has not answered for 5 s"
        )
        assert health["loki.write.out"][0] == "healthy"
        status, body = await agent.get("/-/healthy")
        assert (status, body) == (
            500,
            "unhealthy components: discovery.docker, loki.source.docker\n",
        )
        # /-/ready is about the config, as in Alloy.
        assert (await agent.get("/-/ready"))[0] == 200

        # 2. The socket goes away.
        await engine.aclose()
        await wait_both(agent, "unhealthy", "does not exist")

        # 3. It comes back, but only root may use it: a real EACCES for nobody.
        engine.answer()
        await engine.start(mode=0o600)
        await wait_both(agent, "unhealthy", "permission denied on Docker socket")
        health = await component_health(agent)
        assert "uid 65534" in health["loki.source.docker.logs"][1]

        # 4. Permission granted: healthy again, and /-/healthy says so.
        os.chmod(engine.path, 0o666)
        await wait_both(agent, "healthy", "reachable again")
        assert await agent.get("/-/healthy") == (
            200,
            "All minilog components are healthy.\n",
        )
        assert await agent.stop() == 0
        await engine.aclose()
    # One outage, one warning and one recovery line per component, not one per retry.
    assert agent.log_count('level=warn msg="discovery.docker:') == 1
    assert agent.log_count("discovery.docker: Docker is reachable again") == 1
    assert agent.log_count('level=warn msg="cannot reach Docker:') == 1, "".join(
        agent.lines
    )
    assert agent.log_count('msg="Docker is reachable again"') == 1
