"""Fixtures shared by test modules: Docker, a real Loki, a fake one, agent processes.

``docker_client`` skips the test when the Engine or the test image is unavailable;
``docker_containers`` starts labelled containers and force-removes them at teardown.
``loki_base`` is the base URL of a real Loki 3.6 running the seed's config
(``LOKI_URL``, else one started for the session by ``real_loki``); ``loki_starter``
starts more, each with its own config overrides. Both skip, with the reason, when no
real Loki exists. ``loki`` is a running ``FakeLoki``; ``agents`` starts agent
subprocesses (killed at teardown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import AgentProcess, StartAgent, start_agent_process
from docker_helpers import ContainerStarter, docker_unavailable_reason
from loki_helpers import loki_base_url
from real_loki import (
    LokiLauncher,
    LokiStarter,
    RunningLoki,
    launcher_or_reason,
    running_loki,
)

from minilog.testing import FakeLoki

__all__ = [
    "agents",
    "docker_client",
    "docker_containers",
    "loki",
    "loki_base",
    "loki_launcher",
    "loki_starter",
    "tenant_loki",
]


#: A test that asks for one of these (directly or through another fixture) is marked
#: ``loki``, so ``-m "not loki"`` leaves out every test against a real Loki.
_REAL_LOKI_FIXTURES = frozenset(
    {"loki_base", "loki_launcher", "loki_starter", "tenant_loki"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REAL_LOKI_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.loki)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client (``docker.from_env()``); skips without a reachable Engine."""
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import docker

    client = docker.from_env()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def docker_containers(docker_client: Any) -> Iterator[ContainerStarter]:
    """``start_container`` without the client argument; removes its containers after."""
    starter = ContainerStarter(docker_client)
    try:
        yield starter
    finally:
        starter.remove_all()


@pytest.fixture(scope="session")
def loki_launcher() -> LokiLauncher:
    """How this machine runs a Loki of its own; skips with the reason when it cannot."""
    found = launcher_or_reason()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def loki_starter(
    loki_launcher: LokiLauncher, tmp_path_factory: pytest.TempPathFactory
) -> LokiStarter:
    """Starts a Loki with config overrides, for a module-scoped fixture to enter."""

    def start(overrides: Mapping[str, Any]) -> AbstractContextManager[RunningLoki]:
        return running_loki(loki_launcher, tmp_path_factory.mktemp("loki"), overrides)

    return start


@pytest.fixture(scope="session")
def loki_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real Loki with the seed's config: ``LOKI_URL``, else one started
    for this session (fresh data directory, stopped at the end whatever happened)."""
    external = loki_base_url()
    if external is not None:
        yield external
        return
    found = launcher_or_reason()
    if isinstance(found, str):
        pytest.skip(found)
    with running_loki(found, tmp_path_factory.mktemp("loki")) as loki:
        yield loki.base_url


@pytest.fixture(scope="session")
def tenant_loki(loki_starter: LokiStarter) -> Iterator[str]:
    """Base URL of a real Loki with the seed's config and ``auth_enabled: true``
    (pushes and queries need ``X-Scope-OrgID``), started once for the session."""
    with loki_starter({"auth_enabled": True}) as loki:
        yield loki.base_url


@pytest.fixture
async def loki() -> AsyncIterator[FakeLoki]:
    """A running ``FakeLoki``, stopped after the test."""
    async with FakeLoki() as server:
        yield server


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[StartAgent]:
    """Start agent processes (on one storage path unless told); kills them at
    teardown."""
    started: list[AgentProcess] = []

    async def start(
        config: Path | None, storage: Path | None = None, *extra: str, **kw: Any
    ) -> AgentProcess:
        agent = await start_agent_process(
            config, tmp_path / "data" if storage is None else storage, *extra, **kw
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        await agent.kill()
