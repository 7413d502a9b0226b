"""The agent HTTP server: readiness, health, reload, metrics and the UI endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from minilog.agent.runtime import Agent
from minilog.agent.server import AgentServer, parse_listen_addr
from minilog.errors import ConfigError, Diagnostic
from minilog.testing import FakeLoki


class FakeAgent:
    def __init__(self) -> None:
        self.ready = False
        self.registry = CollectorRegistry()
        self.unhealthy: list[str] = []
        self.reload_error: ConfigError | None = None
        self.reloads = 0
        Counter("minilog_test_things", "things", registry=self.registry).inc(3)

    def unhealthy_components(self) -> list[str]:
        return self.unhealthy

    def components_info(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "loki.source.docker.app",
                "name": "loki.source.docker",
                "health": "healthy",
                "message": "started",
                "debug_info": {
                    "targets_info": [{"labels": '{service="<b>"}', "position_ns": 7}]
                },
            }
        ]

    async def reload(self) -> None:
        self.reloads += 1
        if self.reload_error is not None:
            raise self.reload_error


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeAgent, str]]:
    agent = FakeAgent()
    server = AgentServer(agent, host="127.0.0.1", port=0)
    await server.start()
    try:
        yield agent, server.url
    finally:
        await server.aclose()


async def get(url: str, method: str = "GET") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        return resp.status, await resp.text(), resp.headers.get("Content-Type", "")


async def test_ready_turns_200_after_the_first_load(
    served: tuple[FakeAgent, str],
) -> None:
    agent, url = served
    assert (await get(url + "/-/ready"))[:2] == (503, "minilog is not ready.\n")
    agent.ready = True
    assert (await get(url + "/-/ready"))[:2] == (200, "minilog is ready.\n")


async def test_healthy_lists_unhealthy_components(
    served: tuple[FakeAgent, str],
) -> None:
    # As Alloy v1.18's handler: 500 and one component *name* per unhealthy component
    # (Alloy's ComponentName), in the agent's order. Behaviour change: minilog used to
    # list IDs; the IDs and the reasons are in the UI and its JSON.
    agent, url = served
    assert (await get(url + "/-/healthy"))[:2] == (
        200,
        "All minilog components are healthy.\n",
    )
    agent.unhealthy = ["loki.write.b", "discovery.docker.a", "loki.write.a"]
    status, body, ctype = await get(url + "/-/healthy")
    assert (status, body) == (
        500,
        "unhealthy components: loki.write, discovery.docker, loki.write\n",
    )
    assert ctype == "text/plain; charset=utf-8"


async def test_reload_answers_200_or_400_with_the_diagnostics(
    served: tuple[FakeAgent, str],
) -> None:
    agent, url = served
    assert (await get(url + "/-/reload"))[:2] == (200, "config reloaded\n")
    agent.reload_error = ConfigError([Diagnostic("c.alloy", 3, 5, "bad thing")])
    status, body, _ = await get(url + "/-/reload", "POST")
    assert status == 400
    assert "c.alloy:3:5: bad thing" in body
    assert agent.reloads == 2


async def test_metrics_and_component_views(served: tuple[FakeAgent, str]) -> None:
    _, url = served
    status, body, ctype = await get(url + "/metrics")
    assert status == 200 and "minilog_test_things_total 3.0" in body
    assert ctype.startswith("text/plain")
    status, body, ctype = await get(url + "/api/v0/web/components")
    assert status == 200 and ctype == "application/json"
    assert '"position_ns":7' in body
    status, body, ctype = await get(url + "/")
    assert status == 200 and ctype.startswith("text/html")
    assert "loki.source.docker.app" in body
    assert "&lt;b&gt;" in body and "<b>" not in body  # label values are escaped


def test_parse_listen_addr() -> None:
    assert parse_listen_addr("0.0.0.0:12345") == ("0.0.0.0", 12345)
    assert parse_listen_addr("[::1]:80") == ("::1", 80)
    assert parse_listen_addr(":9") == ("0.0.0.0", 9)
    for bad in ("nope", "host:", "h:99999"):
        with pytest.raises(ValueError, match="listen address"):
            parse_listen_addr(bad)


async def test_server_over_a_real_agent(tmp_path: Path) -> None:
    async with FakeLoki() as loki:
        config = tmp_path / "c.alloy"
        endpoint = f'  endpoint {{\n    url = "{loki.push_url}"\n  }}\n'
        config.write_text('loki.write "out" {\n' + endpoint + "}\n")
        agent = Agent(config, storage_path=tmp_path / "data")
        server = AgentServer(agent, host="127.0.0.1", port=0)
        await server.start()
        try:
            assert (await get(server.url + "/-/ready"))[0] == 503
            await agent.start()
            assert (await get(server.url + "/-/ready"))[0] == 200
            assert (await get(server.url + "/-/healthy"))[0] == 200
            config.write_text("loki.write {")
            status, body, _ = await get(server.url + "/-/reload", "POST")
            assert status == 400 and str(config) in body
            status, body, _ = await get(server.url + "/api/v0/web/components")
            assert '"id":"loki.write.out"' in body
            status, body, _ = await get(server.url + "/metrics")
            assert "minilog_config_load_failures_total 1.0" in body
        finally:
            await server.aclose()
            await agent.aclose()
