"""No configured secret in any output of the running agent.

One agent (``python -m minilog run``) is configured with a distinct secret string in
every place a credential goes: the userinfo of a push URL, ``basic_auth.password``,
``bearer_token``, a ``headers`` value, and the userinfo of a Docker host URL. Its pushes
go through a gateway that, like an authenticating proxy in front of Loki, refuses any
request without the right credentials and hands the rest to a ``FakeLoki``. Lines are
pushed into the agent's ``loki.source.api``; once all of them reached Loki through the
three endpoints, ``/metrics``, ``/``, ``/api/v0/web/components`` and the agent's stderr
(through a graceful shutdown) are collected once and searched for every secret.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from agent_helpers import free_port, start_agent_process, wait_until
from aiohttp import web

from minilog.testing import FakeLoki

URL_USER = "urluser-7Qx2"
URL_PASS = "urlpass-K9m4"
BASIC_PASS = "basicpass-Zr81"
BEARER = "bearer-Vt35"
HEADER = "headerval-Lp62"
DOCKER_USER = "dockuser-Hw17"
DOCKER_PASS = "dockpass-Nc48"

#: The secrets whose only way into /metrics is the writer's ``host`` label.
URL_SECRETS = (URL_USER, URL_PASS)
OTHER_SECRETS = (BASIC_PASS, BEARER, HEADER, DOCKER_USER, DOCKER_PASS)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


#: What each gateway path requires (headers a request must carry, exactly).
REQUIRED = {
    "a": {"Authorization": basic(URL_USER, URL_PASS)},
    "b": {"Authorization": basic("bob", BASIC_PASS), "X-Api-Key": HEADER},
    "c": {"Authorization": f"Bearer {BEARER}"},
}
#: The derived forms an output could leak (the Authorization header values).
DERIVED = tuple(h["Authorization"].split(" ", 1)[1] for h in REQUIRED.values())
LINES = 20


@dataclass(frozen=True)
class Outputs:
    metrics: str
    page: str
    components: str
    stderr: str
    refused: int
    accepted: dict[str, int]


async def _collect(tmp_path: Path) -> Outputs:
    refused = 0
    accepted = {"a": 0, "b": 0, "c": 0}
    async with FakeLoki() as loki, aiohttp.ClientSession() as session:

        async def gateway(request: web.Request) -> web.Response:
            nonlocal refused
            path = request.match_info["path"]
            wanted = REQUIRED.get(path, {"-": "-"})
            if any(request.headers.get(k) != v for k, v in wanted.items()):
                refused += 1
                return web.Response(status=401, text="unauthorized")
            body = await request.read()
            headers = {
                k: request.headers[k]
                for k in ("Content-Type", "Content-Encoding")
                if k in request.headers
            }
            async with session.post(loki.push_url, data=body, headers=headers) as up:
                if up.status == 204:
                    accepted[path] += 1
                return web.Response(status=up.status, body=await up.read())

        app = web.Application()
        app.router.add_post("/{path}/loki/api/v1/push", gateway)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        gateway_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", gateway_port).start()
        api_port = free_port()
        closed_port = free_port()  # nothing listens: Docker is unreachable there
        base = f"127.0.0.1:{gateway_port}"
        config = tmp_path / "agent.alloy"
        config.write_text(
            f"""
discovery.docker "remote" {{
  host = "tcp://{DOCKER_USER}:{DOCKER_PASS}@127.0.0.1:{closed_port}"
}}

loki.source.api "in" {{
  http {{
    listen_address = "127.0.0.1"
    listen_port    = {api_port}
  }}
  labels     = {{ job = "secrets" }}
  forward_to = [loki.write.out.receiver]
}}

loki.write "out" {{
  // The URL userinfo becomes the request's basic auth.
  endpoint {{
    name       = "a"
    url        = "http://{URL_USER}:{URL_PASS}@{base}/a/loki/api/v1/push"
    batch_wait = "50ms"
  }}
  endpoint {{
    name       = "b"
    url        = "http://{base}/b/loki/api/v1/push"
    headers    = {{ "X-Api-Key" = "{HEADER}" }}
    batch_wait = "50ms"
    basic_auth {{
      username = "bob"
      password = "{BASIC_PASS}"
    }}
  }}
  endpoint {{
    name         = "c"
    url          = "http://{base}/c/loki/api/v1/push"
    bearer_token = "{BEARER}"
    batch_wait   = "50ms"
  }}
}}
"""
        )
        try:
            agent = await start_agent_process(config, tmp_path / "data")
            try:
                push = {
                    "streams": [
                        {
                            "stream": {"source": "test"},
                            "values": [
                                [str(10**18 + i), f"line {i}"] for i in range(LINES)
                            ],
                        }
                    ]
                }
                async with session.post(
                    f"http://127.0.0.1:{api_port}/loki/api/v1/push",
                    data=orjson.dumps(push),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    assert resp.status == 204, await resp.text()
                await loki.wait_for_entries(3 * LINES, timeout=20)

                async def discovery_failed() -> bool:
                    _, body = await agent.get("/api/v0/web/components")
                    info = {c["localID"]: c for c in orjson.loads(body)}
                    state = info["discovery.docker.remote"]["health"]["state"]
                    return bool(state == "unhealthy")

                await wait_until(discovery_failed, 20, "discovery.docker unhealthy")
                metrics = (await agent.get("/metrics"))[1]
                page = (await agent.get("/"))[1]
                # Every component's detail (Alloy's list has no arguments).
                listed = orjson.loads((await agent.get("/api/v0/web/components"))[1])
                details = [
                    (await agent.get(f"/api/v0/web/components/{c['localID']}"))[1]
                    for c in listed
                ]
                components = "[" + ",".join(details) + "]"
                assert await agent.stop() == 0
            finally:
                await agent.kill()
        finally:
            await runner.cleanup()
        assert loki.entry_count == 3 * LINES
    return Outputs(
        metrics, page, components, "".join(agent.lines), refused, dict(accepted)
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    yield asyncio.run(_collect(tmp_path_factory.mktemp("secrets")))


def test_the_credentials_were_used(outputs: Outputs) -> None:
    # Every endpoint authenticated on its first try: the secrets are configured and
    # sent, so their absence below means they were hidden, not missing.
    assert outputs.refused == 0
    assert all(n >= 1 for n in outputs.accepted.values()), outputs.accepted


@pytest.mark.parametrize("where", ["page", "components", "stderr"])
def test_no_secret_in_the_ui_its_json_or_the_logs(outputs: Outputs, where: str) -> None:
    text = getattr(outputs, where)
    for secret in (*URL_SECRETS, *OTHER_SECRETS, *DERIVED):
        assert secret not in text, f"{secret!r} in {where}"


def test_hidden_values_are_shown_as_secret(outputs: Outputs) -> None:
    info = {c["localID"]: c for c in orjson.loads(outputs.components)}
    endpoints = info["loki.write.out"]["arguments"]["endpoint"]
    assert endpoints[0]["url"].startswith("http://(secret)@127.0.0.1:")
    assert endpoints[1]["headers"] == {"X-Api-Key": "(secret)"}
    assert endpoints[1]["basic_auth"]["password"] == "(secret)"
    assert endpoints[2]["bearer_token"] == "(secret)"
    discovery = info["discovery.docker.remote"]
    assert discovery["arguments"]["host"].startswith("tcp://(secret)@127.0.0.1:")
    assert "tcp://(secret)@127.0.0.1:" in discovery["health"]["message"]
    # The unreachable Docker host was logged, with its userinfo hidden.
    assert "tcp://(secret)@127.0.0.1:" in outputs.stderr


def test_no_secret_other_than_url_userinfo_in_metrics(outputs: Outputs) -> None:
    for secret in (*OTHER_SECRETS, *DERIVED):
        assert secret not in outputs.metrics, secret


# The writer's ``host`` label is the host:port of the URL once the writer fix of
# issue 16 (helper i16-write: strip userinfo from the host label) is merged; until
# then this fails in this branch only. The lead removes the mark when merging both.
def test_no_url_userinfo_in_metrics(outputs: Outputs) -> None:
    for secret in URL_SECRETS:
        assert secret not in outputs.metrics, secret
