"""The agent image (``Dockerfile``), built as compose builds it here.

Run as the README says for a non-root user (uid 473, the socket's group added), with
Alloy's default command and a volume where Alloy keeps its data: it ships a container's
lines, turns healthy through its own ``HEALTHCHECK``, and the positions land in the
volume. The runtime stage holds the virtualenv and no compiler, pip or pip cache.
Skipped, with the reason, without Docker Compose v2 or the local base image
(``scripts/setup-compose``).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import REPO, docker_config, free_port, paced_script, wait_until
from docker_helpers import TEST_LABEL

from minilog.testing import FakeLoki

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

IMAGE = "minilog:latest"
COMPOSE = tuple(
    arg
    for name in ("docker-compose.yml", "docker-compose.host-network.yml")
    for arg in ("-f", str(REPO / "compose" / name))
)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=600, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def image(docker_client: Any) -> str:
    if _run("docker", "compose", "version", check=False).returncode != 0:
        pytest.skip("Docker Compose v2 is not available: run scripts/setup-compose")
    try:
        docker_client.images.get("minilog-base:bookworm")
    except Exception:
        pytest.skip("no minilog-base:bookworm image: run scripts/setup-compose")
    _run("docker", "compose", *COMPOSE, "-p", "minilog-image-test", "build", "alloy")
    return IMAGE


def test_the_image_runs_as_alloys_does(docker_client: Any, image: str) -> None:
    config = docker_client.images.get(image).attrs["Config"]
    assert config["Entrypoint"] == ["minilog"]
    assert config["Cmd"] == [
        "run",
        "/etc/alloy/config.alloy",
        "--storage.path=/var/lib/alloy/data",
    ]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "curl" not in " ".join(config["Healthcheck"]["Test"])
    out = _run(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        f"{TEST_LABEL}=1",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "minilog --version; ls /opt/minilog/bin; "
        "command -v gcc cc || echo no-compiler; "
        "ls -d /root/.cache/pip 2>/dev/null || echo no-pip-cache; "
        "ls /opt/minilog/lib/python3*/site-packages | grep -x pip "
        "|| echo no-pip-in-venv",
    ).stdout
    assert out.startswith("minilog, version ")
    assert "no-compiler" in out
    assert "no-pip-cache" in out
    assert "no-pip-in-venv" in out
    # The default config is the seed's pipeline.
    shipped = _run(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        f"{TEST_LABEL}=1",
        "--entrypoint",
        "cat",
        image,
        "/etc/alloy/config.alloy",
    ).stdout
    assert shipped == (REPO / "compose" / "alloy" / "config.alloy").read_text()


@pytest.fixture
def volume(docker_client: Any) -> Iterator[str]:
    name = f"minilog-image-test-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(name, labels={TEST_LABEL: "1"})
    try:
        yield name
    finally:
        _run("docker", "volume", "rm", "-f", name, check=False)


async def test_non_root_with_group_add_ships_and_keeps_positions_in_the_volume(
    tmp_path: Path, docker_client: Any, docker_containers: Any, image: str, volume: str
) -> None:
    name = f"minilog-image-{uuid.uuid4().hex[:10]}"
    docker_containers(paced_script(name, 20, every=5, pause="0.1"), name=name)
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    async with FakeLoki() as loki:
        config = tmp_path / "config.alloy"
        config.write_text(docker_config(name, loki.push_url))
        config.chmod(0o644)
        agent = docker_client.containers.run(
            image,
            # Alloy's default command, on a port of its own (host network).
            [
                "run",
                "/etc/alloy/config.alloy",
                "--storage.path=/var/lib/alloy/data",
                f"--server.http.listen-addr=127.0.0.1:{free_port()}",
            ],
            name=f"{name}-agent",
            user="473",
            group_add=[str(socket_gid)],
            network_mode="host",
            labels={TEST_LABEL: "1"},
            volumes={
                str(config): {"bind": "/etc/alloy/config.alloy", "mode": "ro"},
                "/var/run/docker.sock": {
                    "bind": "/var/run/docker.sock",
                    "mode": "ro",
                },
                volume: {"bind": "/var/lib/alloy/data", "mode": "rw"},
            },
            detach=True,
        )
        try:
            await loki.wait_for_entries(20, timeout=60)
            assert sorted(loki.lines()) == sorted(f"{name} {i}" for i in range(1, 21))
            agent.stop(timeout=20)  # SIGTERM: positions saved on the way out
            agent.reload()
            assert agent.attrs["State"]["ExitCode"] == 0, agent.logs().decode()
        finally:
            agent.remove(force=True)
    listing = _run(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        f"{TEST_LABEL}=1",
        "-v",
        f"{volume}:/data:ro",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "cat /data/loki.source.docker.logs/positions.json",
    ).stdout
    assert name in listing  # the positions file carries the target's labels


async def test_the_healthcheck_turns_healthy(docker_client: Any, image: str) -> None:
    """The image's own probe, on a port moved with ``MINILOG_READY_URL``."""
    probe = docker_client.images.get(image).attrs["Config"]["Healthcheck"]["Test"]
    port = free_port()
    agent = docker_client.containers.run(
        image,
        [
            "run",
            "/etc/alloy/config.alloy",
            f"--server.http.listen-addr=127.0.0.1:{port}",
        ],
        name=f"minilog-image-health-{uuid.uuid4().hex[:8]}",
        network_mode="host",
        labels={TEST_LABEL: "1"},
        environment={"MINILOG_READY_URL": f"http://127.0.0.1:{port}/-/ready"},
        volumes={
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "ro"}
        },
        # The image's own test, every 0.5 s instead of 10 s so that this is quick.
        healthcheck={"test": probe, "interval": 500_000_000, "retries": 3},
        detach=True,
    )
    try:

        def healthy() -> bool:
            agent.reload()
            status: str = agent.attrs["State"].get("Health", {}).get("Status", "")
            return status == "healthy"

        await wait_until(healthy, 30, "the image's healthcheck to pass")
    finally:
        agent.remove(force=True)
