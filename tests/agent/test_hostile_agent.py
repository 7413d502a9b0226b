"""The real agent process under the hostile push mix of issue 16, with a 1,024 file
limit, while a real container's lines must keep arriving at the fake Loki.

The agent runs ``loki.source.docker`` and ``loki.source.api`` into one ``loki.write``.
Docker's own log of the container is the ground truth; the agent's peak RSS comes from
``/proc/<pid>/status`` (``VmHWM``).
"""

from __future__ import annotations

import asyncio
import resource
import uuid
from pathlib import Path

import aiohttp
import pytest
from agent_helpers import (
    docker_config,
    docker_lines,
    free_port,
    paced_script,
    read_positions,
    start_agent_process,
)
from docker_helpers import ContainerStarter
from hostile_helpers import HostileBodies, hostile_mix

from minilog.testing import FakeLoki

__all__: list[str] = []

pytestmark = pytest.mark.docker

MAX_PEAK_RSS_KB = 256 * 1000
LINES = 12_000


def vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def limit_files() -> None:
    """``ulimit -n 1024`` (soft and hard) in the agent's process."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


async def probe_health(url: str, stop: asyncio.Event) -> list[int]:
    """``/-/healthy`` until ``stop``; each answer's status, 0 for none within 5 s."""
    statuses = []
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(600):  # bounded: 5 minutes of probes at most
            try:
                async with session.get(url + "/-/healthy") as resp:
                    await resp.read()
                    statuses.append(resp.status)
            except (aiohttp.ClientError, TimeoutError):
                statuses.append(0)
            try:
                async with asyncio.timeout(0.5):
                    await stop.wait()
                break
            except TimeoutError:
                pass
    return statuses


@pytest.mark.timeout(240)
async def test_a_hostile_push_mix_neither_bloats_the_agent_nor_stops_docker_shipping(
    tmp_path: Path, docker_containers: ContainerStarter
) -> None:
    name = f"minilog-hostile-{uuid.uuid4().hex[:10]}"
    api_port = free_port()
    storage = tmp_path / "data"
    async with FakeLoki() as loki:
        config = tmp_path / "agent.alloy"
        config.write_text(
            docker_config(name, loki.push_url)
            + f"""
loki.source.api "in" {{
  http {{
    listen_address      = "127.0.0.1"
    listen_port         = {api_port}
    server_read_timeout = "2s"
  }}
  forward_to = [loki.write.out.receiver]
}}
"""
        )
        agent = await start_agent_process(config, storage, preexec_fn=limit_files)
        try:
            container = docker_containers(
                paced_script("n", LINES, every=400, pause="0.2"), name=name
            )
            bodies = HostileBodies.build()
            await loki.wait_for_entries(200, timeout=30)
            stop = asyncio.Event()
            prober = asyncio.create_task(probe_health(agent.url, stop))
            before = loki.entry_count
            reports = await hostile_mix("127.0.0.1", api_port, bodies, hold_s=6.0)
            during = loki.entry_count - before
            stop.set()
            health = await prober
            await loki.wait_for_entries(LINES, timeout=90)
            peak_kb = vm_hwm_kb(agent.proc.pid)
            saved = read_positions(storage)
            timed_out = await agent.metric(
                "minilog_source_api_connections_timed_out_total"
            )
        finally:
            rc = await agent.stop()
        records = docker_lines(container)
        got = [
            (entry.timestamp_ns, entry.line)
            for labels, entry in loki.entries
            if labels.get("container") == name
        ]
        pushed = [labels for labels, _ in loki.entries if "container" not in labels]

    # Every container line, once, in order: the Docker source kept shipping.
    assert len(records) == LINES
    assert got == records
    assert during > 0, "no container line arrived while the attack ran"
    assert pushed == []  # no bomb got through
    assert container.id in saved  # positions were saved throughout
    assert peak_kb <= MAX_PEAK_RSS_KB, f"agent peak RSS {peak_kb} kB"
    # /-/healthy answered every probe.
    assert health and set(health) == {200}
    # The bombs were refused (413: larger than the budget; 503: budget spent now),
    # none accepted; the huge JSON push too.
    for attack in ("gzip_bombs", "snappy_bombs", "big_json"):
        assert set(reports[attack].statuses) <= {413, 503}, reports[attack]
        assert sum(reports[attack].statuses.values()) > 0
    # 1,150 slow or idle connections against a cap of (1024 - 256) / 2 = 384: the
    # first 384 accepted cannot finish a request within the 2 s server_read_timeout,
    # so at least that many were cut by a deadline; the others waited in the listen
    # backlog, holding no descriptor of the agent's.
    assert timed_out >= 384
    # No error line per connection, no flood of identical lines.
    errors = [line for line in agent.lines if "level=error" in line]
    assert errors == []
    assert len(agent.lines) < 30, "".join(agent.lines)
    assert rc == 0
