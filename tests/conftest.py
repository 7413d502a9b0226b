"""Docker fixtures shared by every test module (and nothing else).

``docker_client`` skips the test when the Engine or the test image is unavailable;
``docker_containers`` starts labelled containers and force-removes them at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from docker_helpers import ContainerStarter, docker_unavailable_reason

__all__ = ["docker_client", "docker_containers"]


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
