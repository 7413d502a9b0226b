"""The provisioned Grafana dashboard (``compose/grafana/provisioning/dashboards/``)
against a real Prometheus scraping a real ``minilog run`` that ships a real container's
lines to a ``FakeLoki``: every query of every panel returns data.

Prometheus is the Debian package's binary (``apt-get install prometheus``; the compose
setup script installs it); the test is skipped without it. Grafana itself is not
needed: a panel's data is what its PromQL returns, with ``$__rate_interval`` set as
Grafana would for a 1 s scrape interval.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from agent_helpers import (
    REPO,
    docker_config,
    free_port,
    paced_script,
    start_agent_process,
)

from minilog.testing import FakeLoki

pytestmark = pytest.mark.docker

DASHBOARD = (
    REPO / "compose" / "grafana" / "provisioning" / "dashboards" / "minilog.json"
)
#: What Grafana's ``$__rate_interval`` comes to with a 1 s scrape interval is 4 scrapes;
#: a longer window keeps counters seen once (the 429s) in the result for the whole test.
RATE_INTERVAL = "30s"


def panel_queries() -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            out.append((panel["title"], expr))
    return out


def test_the_dashboard_is_provisioned_against_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = (
        REPO / "compose" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    ).read_text()
    assert "uid: prometheus" in datasources
    assert dashboard["uid"] == "minilog"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"], panel["title"]
    titles = {p["title"] for p in dashboard["panels"]}
    # What the issue asks the dashboard to show.
    for wanted in (
        "Lines sent per endpoint",
        "Bytes sent per endpoint",
        "Drops by reason",
        "Retries and 429s",
        "Queue fill against capacity",
        "Targets per container",
        "Read lag per container",
        "Age of the saved positions",
    ):
        assert wanted in titles


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[Any]:
    """Start ``prometheus`` on a free port; yields a function that sets its target."""
    binary = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus")
    procs: list[asyncio.subprocess.Process] = []
    logs: list[IO[bytes]] = []

    async def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: minilog\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=_log_file(tmp_path / "prometheus.log", logs),
        )
        procs.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
    for log in logs:
        log.close()


def _log_file(path: Path, opened: list[IO[bytes]]) -> IO[bytes]:
    log = path.open("wb")
    opened.append(log)
    return log


async def _query(session: aiohttp.ClientSession, base: str, expr: str) -> list[Any]:
    try:
        async with session.get(base + "/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json(content_type=None)
    except aiohttp.ClientConnectionError:
        return []  # Prometheus is still starting
    assert body["status"] == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


async def test_every_panel_query_returns_data(
    tmp_path: Path, docker_containers: Any, prometheus: Any
) -> None:
    name = f"minilog-dash-{uuid.uuid4().hex[:10]}"
    async with FakeLoki() as loki:
        # Two 429s first: the retries and 429 panels need them to exist.
        loki.faults.respond(429, times=2)
        container = docker_containers(
            paced_script(name, 1_000_000, every=5, pause="0.2"), name=name
        )
        config = tmp_path / "config.alloy"
        config.write_text(docker_config(name, loki.push_url))
        agent = await start_agent_process(config, tmp_path / "data")
        try:
            base = await prometheus(agent.url.removeprefix("http://"))
            await loki.wait_for_entries(10, timeout=30)
            queries = panel_queries()
            empty: list[tuple[str, str]] = queries
            results: dict[str, list[Any]] = {}
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 60
                while empty and time.monotonic() < deadline:
                    for _, expr in empty:
                        results[expr] = await _query(session, base, expr)
                    empty = [(t, e) for t, e in empty if not results[e]]
                    if empty:
                        # Prometheus scrapes on its own clock: nothing to await.
                        await asyncio.sleep(0.5)
        finally:
            await agent.kill()
    assert not empty, f"panels whose query returned no data: {empty}"

    def values(expr: str) -> dict[str, float]:
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(
                r["value"][1]
            )
            for r in results[expr]
        }

    first = dict(reversed(queries))  # each panel's first query
    host = loki.push_url.split("/")[2]
    assert values(first["Lines sent per endpoint"])[f"host={host}"] > 0
    assert values(first["Targets per container"]) == {
        f"container={name},container_id={container.id[:12]}": 1.0
    }
    assert list(values(first["Read lag per container"])) == [f"container={name}"]
    queue = [values(e) for t, e in queries if t == "Queue fill against capacity"]
    # queue_config.capacity's default, 10 MiB, against what the queue holds.
    assert queue[1] == {f"host={host}": float(10 << 20)}
    assert 0 <= queue[0][f"host={host}"] < 10 << 20
    for series in (values(e) for t, e in queries if t == "Retries and 429s"):
        assert f"host={host}" in series
