"""The agent HTTP server: readiness, health, reload, metrics and the UI endpoints."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_helpers import wait_until
from prometheus_client import CollectorRegistry, Counter

from minilog.agent.livedebug import DISABLED_MESSAGE, LiveDebugging
from minilog.agent.runtime import Agent
from minilog.agent.server import AgentServer, parse_listen_addr
from minilog.components.base import Fanout
from minilog.errors import ConfigError, Diagnostic
from minilog.model import LogEntry, StreamBatch
from minilog.testing import FakeLoki


class FakeAgent:
    def __init__(self) -> None:
        self.ready = False
        self.registry = CollectorRegistry()
        self.unhealthy: list[str] = []
        self.reload_error: ConfigError | None = None
        self.reloads = 0
        Counter("minilog_test_things", "things", registry=self.registry).inc(3)
        self.live = LiveDebugging()

    def unhealthy_components(self) -> list[str]:
        return self.unhealthy

    def components_info(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "loki.source.docker.app",
                "name": "loki.source.docker",
                "label": "app",
                "health": "healthy",
                "message": "started",
                "updated": 0.5,
                "references": ["loki.write.out"],
                "referenced_by": [],
                "data_flow_edges_to": ["loki.write.out"],
                "live_debugging": True,
                "arguments": {"host": "unix:///var/run/docker.sock"},
                "exports": {},
                "debug_info": {
                    "targets_info": [{"labels": '{service="<b>"}', "position_ns": 7}]
                },
            }
        ]

    async def explain(self) -> list[dict[str, Any]]:
        return [{"source": "s", "name": "web", "id": "abc", "shipped": True}]

    def redact_text(self, text: str) -> str:
        return text.replace("hunter2", "(secret)")

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
    # Behaviour change: the JSON has Alloy's shapes (component.Info); the list has no
    # arguments, exports or debug info, the detail at /components/{id} has them.
    status, body, ctype = await get(url + "/api/v0/web/components")
    assert status == 200 and ctype == "application/json"
    (listed,) = json.loads(body)
    assert listed == {
        "name": "loki.source.docker",
        "type": "block",
        "localID": "loki.source.docker.app",
        "moduleID": "",
        "label": "app",
        "referencesTo": ["loki.write.out"],
        "referencedBy": [],
        "dataFlowEdgesTo": ["loki.write.out"],
        "health": {
            "state": "healthy",
            "message": "started",
            "updatedTime": "1970-01-01T00:00:00.500000Z",
        },
        "original": "",
        "liveDebuggingEnabled": True,
    }
    status, body, _ = await get(url + "/api/v0/web/components/loki.source.docker.app")
    detail = json.loads(body)
    assert detail["debugInfo"]["targets_info"][0]["position_ns"] == 7
    assert detail["arguments"] == {"host": "unix:///var/run/docker.sock"}
    assert (await get(url + "/api/v0/web/components/loki.write.nope"))[0] == 404
    status, body, ctype = await get(url + "/api/v0/web/explain?target=web")
    assert status == 200 and json.loads(body)[0]["name"] == "web"
    assert json.loads((await get(url + "/api/v0/web/explain?target=x"))[1]) == []
    # The page and its assets are package files: no build step, nothing external.
    status, body, ctype = await get(url + "/")
    assert status == 200 and ctype.startswith("text/html")
    assert 'src="ui/app.js"' in body and "http" not in body.replace('xmlns="http', "")
    status, body, ctype = await get(url + "/ui/app.js")
    assert status == 200 and "javascript" in ctype and "viewGraph" in body


async def test_state_changing_routes_take_only_alloys_methods(
    served: tuple[FakeAgent, str],
) -> None:
    # Alloy: /-/reload is GET or POST (gorilla Methods), the debug stream is GET.
    agent, url = served
    for method in ("PUT", "DELETE", "HEAD", "PATCH"):
        assert (await get(url + "/-/reload", method))[0] == 405, method
        status = (await get(url + "/api/v0/web/debug/loki.source.docker.app", method))[
            0
        ]
        assert status == 405, method
    assert agent.reloads == 0


async def test_live_debugging_is_refused_while_disabled(
    served: tuple[FakeAgent, str],
) -> None:
    agent, url = served
    status, body, _ = await get(url + "/api/v0/web/debug/loki.source.docker.app")
    assert status == 400 and body == DISABLED_MESSAGE + "\n"
    agent.live.set_enabled(True)
    status, body, _ = await get(url + "/api/v0/web/debug/loki.source.docker.app")
    assert status == 400 and "does not support live debugging" in body


async def test_live_debugging_streams_sse_and_alloys_text(
    served: tuple[FakeAgent, str],
) -> None:
    agent, url = served
    agent.live.set_enabled(True)
    fanout = Fanout()
    agent.live.bind(lambda cid, tap: _set_tap(fanout, tap))
    batch = StreamBatch(
        {"service": "web"}, [LogEntry(1_700_000_000_123456789, "pw hunter2")]
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(
            url + "/api/v0/web/debug/loki.source.docker.app",
            headers={"Accept": "text/event-stream"},
        ) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert await resp.content.readuntil(b"\n\n") == (
                b'event: hello\ndata: {"component":"loki.source.docker.app",'
                b'"capacity":1000}\n\n'
            )
            await fanout.send(batch)
            event = await resp.content.readuntil(b"\n\n")
            assert event.startswith(b"event: entry\ndata: ")
            entry = json.loads(event.split(b"data: ", 1)[1])
            assert entry == {
                "timestamp": "2023-11-14T22:13:20.123456789Z",
                "timestamp_ns": 1_700_000_000_123456789,
                "line": "pw (secret)",
                "labels": {"service": "web"},
                "structured_metadata": {},
            }
        async with session.get(
            url + "/api/v0/web/debug/loki.source.docker.app"
        ) as resp:
            await fanout.send(batch)
            text = await resp.content.readuntil(b"|;|")
            assert text == (
                b"[OUT]: timestamp: 2023-11-14T22:13:20.123456789Z, "
                b"entry: pw (secret), "
                b'labels: {service="web"}, structured_metadata: {}|;|'
            )
    # The last viewer gone, the tap is removed: the hot path is back to one None check.
    await wait_until(lambda: fanout.tap is None, 5, "the tap to be removed")


def _set_tap(fanout: Fanout, tap: Any) -> bool:
    fanout.tap = tap
    return True


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
            assert '"localID":"loki.write.out"' in body
            status, body, _ = await get(server.url + "/metrics")
            assert "minilog_config_load_failures_total 1.0" in body
        finally:
            await server.aclose()
            await agent.aclose()
