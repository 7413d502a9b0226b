"""Docker helpers shared by tests: availability check, test image, container cleanup.

Every container started here carries the label ``minilog.test=1`` and no bridge
network, so a leftover is easy to find (``docker ps -a --filter label=minilog.test=1``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import docker
import docker.errors

__all__ = [
    "TEST_IMAGE",
    "TEST_LABEL",
    "ContainerStarter",
    "docker_host",
    "docker_unavailable_reason",
    "start_container",
]

#: FROM scratch + busybox-static (``sh``, ``echo``, ``seq``, ``sleep``, ``printf``);
#: built by ``scripts/build-test-image``.
TEST_IMAGE = "minilog-busybox:test"
TEST_LABEL = "minilog.test"


def docker_host() -> str:
    """The Engine address the tests use: ``DOCKER_HOST`` or the default unix socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_unavailable_reason() -> str | None:
    """``None`` when the Engine answers and has the test image, else a skip reason."""
    host = docker_host()
    if host.startswith("unix://") and not os.path.exists(host[len("unix://") :]):
        return f"Docker Engine not reachable at {host} (no socket)"
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        return f"Docker Engine not reachable at {host}: {exc}"
    try:
        client.ping()
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        return f"test image {TEST_IMAGE} missing: run scripts/build-test-image"
    except Exception as exc:
        return f"Docker Engine not reachable at {host}: {exc}"
    finally:
        client.close()
    return None


def start_container(
    client: Any,
    cmd: str | Sequence[str],
    *,
    name: str | None = None,
    tty: bool = False,
    labels: Mapping[str, str] | None = None,
    network_mode: str = "none",
    detach: bool = True,
    log_options: Mapping[str, str] | None = None,
) -> Any:
    """Run ``cmd`` in ``TEST_IMAGE``; a string command runs under ``sh -c``.
    ``log_options``: the json-file driver's ``--log-opt`` values (``max-size``, ...).

    Returns the docker SDK ``Container`` (started, not waited for). The caller removes
    it; prefer the ``docker_containers`` fixture, which does.
    """
    if network_mode not in ("none", "host") and not network_mode.startswith(
        "container:"
    ):
        raise ValueError("tests must not use a bridge network: use 'none' or 'host'")
    command = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    return client.containers.run(
        TEST_IMAGE,
        command,
        name=name,
        tty=tty,
        labels={**(labels or {}), TEST_LABEL: "1"},
        network_mode=network_mode,
        detach=detach,
        log_config=(
            {"type": "json-file", "config": dict(log_options)}
            if log_options is not None
            else None
        ),
    )


class ContainerStarter:
    """``start_container`` bound to a client; remembers what it started, for cleanup."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.started: list[Any] = []

    def __call__(
        self,
        cmd: str | Sequence[str],
        *,
        name: str | None = None,
        tty: bool = False,
        labels: Mapping[str, str] | None = None,
        network_mode: str = "none",
        detach: bool = True,
        log_options: Mapping[str, str] | None = None,
    ) -> Any:
        container = start_container(
            self.client,
            cmd,
            name=name,
            tty=tty,
            labels=labels,
            network_mode=network_mode,
            detach=detach,
            log_options=log_options,
        )
        self.started.append(container)
        return container

    def remove_all(self) -> None:
        """Force-remove every container started here (already removed ones are fine)."""
        for container in self.started:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        self.started.clear()
