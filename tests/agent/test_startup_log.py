"""What ``minilog run`` says at start: the config it runs, each endpoint (without
credentials), how many containers discovery found and how many relabelling kept."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import docker_config, start_agent_process

from minilog.loki.push import url_without_userinfo
from minilog.testing import FakeLoki


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://bob:s3cret@loki:3100/push", "http://loki:3100/push"),
        ("https://token@loki.example/x?y=1", "https://loki.example/x?y=1"),
        ("http://loki:3100/loki/api/v1/push", "http://loki:3100/loki/api/v1/push"),
        ("http://a:b@[::1]:3100/p", "http://[::1]:3100/p"),
    ],
)
def test_endpoint_urls_are_shown_without_userinfo(url: str, shown: str) -> None:
    assert url_without_userinfo(url) == shown


def _fields(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}


@pytest.mark.docker
async def test_run_says_what_it_will_do(tmp_path: Path, docker_containers: Any) -> None:
    tag = f"minilog-start-{uuid.uuid4().hex[:10]}"
    for i in range(2):
        docker_containers("exec sleep 600", name=f"{tag}-keep-{i}")
    docker_containers("exec sleep 600", name=f"{tag}-other")
    async with FakeLoki() as loki:
        with_credentials = loki.push_url.replace("http://", "http://bob:s3cret@")
        config = tmp_path / "config.alloy"
        config.write_text(docker_config(f"{tag}-keep-.*", with_credentials))
        agent = await start_agent_process(config, tmp_path / "data")
        try:
            await agent.wait_for_log("containers discovered")
        finally:
            assert await agent.stop() == 0

    log = "".join(agent.lines)
    assert "s3cret" not in log
    plan = [_fields(line) for line in agent.lines]
    assert {"msg": "running config", "config": str(config)}.items() <= next(
        f.items() for f in plan if f.get("msg") == "running config"
    )
    endpoints = [f for f in plan if f.get("msg") == "shipping logs to endpoint"]
    assert [(f["component_id"], f["url"]) for f in endpoints] == [
        ("loki.write.out", loki.push_url)
    ]
    discovered = next(f for f in plan if f.get("msg") == "containers discovered")
    # The daemon is shared: other containers may exist, but ours are there.
    assert int(discovered["containers_found"]) >= 3
    assert int(discovered["containers_kept"]) == 2


@pytest.mark.docker
async def test_run_warns_when_relabelling_keeps_nothing(
    tmp_path: Path, docker_containers: Any
) -> None:
    docker_containers("exec sleep 600", name=f"minilog-start-{uuid.uuid4().hex[:10]}")
    async with FakeLoki() as loki:
        config = tmp_path / "config.alloy"
        config.write_text(docker_config("no-container-has-this-name", loki.push_url))
        agent = await start_agent_process(config, tmp_path / "data")
        try:
            await agent.wait_for_log("relabelling kept none")
        finally:
            assert await agent.stop() == 0
    discovered = next(
        _fields(line) for line in agent.lines if "containers discovered" in line
    )
    assert int(discovered["containers_found"]) >= 1
    assert discovered["containers_kept"] == "0"
