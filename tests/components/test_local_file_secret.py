"""A password kept out of ``config.alloy`` with ``local.file`` (``is_secret = true``)
reaches Loki as basic auth and appears in no output of the running agent.

The agent (``python -m minilog run``) pushes through a gateway that, like an
authenticating proxy in front of Loki, refuses any request without the password and
hands the rest to a ``FakeLoki``. Lines are pushed into the agent's
``loki.source.api``. The password file is then rewritten: the agent re-reads it,
re-evaluates ``loki.write``, and later pushes carry the new password. ``/metrics``,
``/``, ``/api/v0/web/components`` and the agent's stderr (through a graceful shutdown)
are collected and searched for both passwords and their basic-auth encodings.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from agent_helpers import free_port, start_agent_process
from aiohttp import web

from minilog.testing import FakeLoki

USER = "tenant-1"
FIRST = "pw-first-Qx81"
SECOND = "pw-second-Lm27"
LINES = 10


def basic(password: str) -> str:
    return base64.b64encode(f"{USER}:{password}".encode()).decode()


#: In a second ``local.file`` no component references: only its ``Secret`` type
#: can hide it (nothing else teaches the agent's redactor that text).
UNUSED = "token-unused-Ve40"
SECRETS = (FIRST, SECOND, basic(FIRST), basic(SECOND), UNUSED)


@dataclass
class Outputs:
    metrics: str = ""
    page: str = ""
    components: str = ""
    stderr: str = ""
    refused: int = 0
    #: Entries that reached Loki, by the password they were sent with.
    accepted: dict[str, int] = field(default_factory=dict)


async def _collect(tmp_path: Path) -> Outputs:
    out = Outputs(accepted={FIRST: 0, SECOND: 0})
    allowed = {FIRST}
    password_file = tmp_path / "loki-password"
    password_file.write_text(FIRST)
    (tmp_path / "unused-token").write_text(UNUSED)
    async with FakeLoki() as loki, aiohttp.ClientSession() as session:

        async def gateway(request: web.Request) -> web.Response:
            sent = request.headers.get("Authorization", "")
            password = next((p for p in allowed if sent == f"Basic {basic(p)}"), None)
            if password is None:
                out.refused += 1
                return web.Response(status=401, text="unauthorized")
            body = await request.read()
            headers = {
                k: request.headers[k]
                for k in ("Content-Type", "Content-Encoding")
                if k in request.headers
            }
            async with session.post(loki.push_url, data=body, headers=headers) as up:
                if up.status == 204:
                    out.accepted[password] += 1
                return web.Response(status=up.status, body=await up.read())

        app = web.Application()
        app.router.add_post("/loki/api/v1/push", gateway)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        gateway_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", gateway_port).start()
        api_port = free_port()
        config = tmp_path / "agent.alloy"
        config.write_text(
            f"""
local.file "loki_password" {{
  filename  = "{password_file}"
  is_secret = true
}}

local.file "unused_token" {{
  filename  = "{tmp_path / "unused-token"}"
  is_secret = true
}}

loki.source.api "in" {{
  http {{
    listen_address = "127.0.0.1"
    listen_port    = {api_port}
  }}
  labels     = {{ job = "local-file-secret" }}
  forward_to = [loki.write.out.receiver]
}}

loki.write "out" {{
  endpoint {{
    url        = "http://127.0.0.1:{gateway_port}/loki/api/v1/push"
    batch_wait = "20ms"
    basic_auth {{
      username = "{USER}"
      password = local.file.loki_password.content
    }}
  }}
}}
"""
        )

        async def push(first: int, count: int) -> None:
            body = {
                "streams": [
                    {
                        "stream": {"source": "test"},
                        "values": [
                            [str(10**18 + i), f"line {i}"]
                            for i in range(first, first + count)
                        ],
                    }
                ]
            }
            async with session.post(
                f"http://127.0.0.1:{api_port}/loki/api/v1/push",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 204, await resp.text()

        try:
            agent = await start_agent_process(config, tmp_path / "data")
            try:
                await push(0, LINES)
                await loki.wait_for_entries(LINES, timeout=20)
                # Rotate the password: the gateway takes both while the agent
                # re-reads the file; then one line at a time until a push carries
                # the new one (each awaited at Loki, bounded in count).
                allowed.add(SECOND)
                password_file.write_text(SECOND)
                sent = LINES
                while out.accepted[SECOND] == 0:
                    assert sent < LINES + 400, "the new password was never used"
                    await push(sent, 1)
                    sent += 1
                    await loki.wait_for_entries(sent, timeout=20)
                allowed.discard(FIRST)
                await push(sent, LINES)
                sent += LINES
                await loki.wait_for_entries(sent, timeout=20)
                out.metrics = (await agent.get("/metrics"))[1]
                out.page = (await agent.get("/"))[1]
                # Every component's detail (Alloy's list has no arguments).
                listed = orjson.loads((await agent.get("/api/v0/web/components"))[1])
                details = [
                    (await agent.get(f"/api/v0/web/components/{c['localID']}"))[1]
                    for c in listed
                ]
                out.components = "[" + ",".join(details) + "]"
                assert await agent.stop() == 0
            finally:
                await agent.kill()
        finally:
            await runner.cleanup()
        out.stderr = "".join(agent.lines)
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    yield asyncio.run(_collect(tmp_path_factory.mktemp("local-file-secret")))


def test_the_password_from_the_file_was_used_and_rotated(outputs: Outputs) -> None:
    # Every push authenticated: the password was read from the file and sent, so
    # its absence below means it was hidden, not missing.
    assert outputs.refused == 0
    assert outputs.accepted[FIRST] >= 1
    assert outputs.accepted[SECOND] >= 1


@pytest.mark.parametrize("where", ["metrics", "page", "components", "stderr"])
def test_the_password_appears_in_no_output(outputs: Outputs, where: str) -> None:
    text = getattr(outputs, where)
    assert text, where
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {where}"


def test_the_ui_shows_secret_for_the_content_and_the_password(
    outputs: Outputs,
) -> None:
    info = {c["localID"]: c for c in orjson.loads(outputs.components)}
    local = info["local.file.loki_password"]
    assert local["health"]["state"] == "healthy"
    assert local["exports"] == {"content": "(secret)"}
    assert info["local.file.unused_token"]["exports"] == {"content": "(secret)"}
    assert local["arguments"]["is_secret"] is True
    endpoint = info["loki.write.out"]["arguments"]["endpoint"][0]
    assert endpoint["basic_auth"]["password"] == "(secret)"
    assert info["loki.write.out"]["referencesTo"] == ["local.file.loki_password"]
