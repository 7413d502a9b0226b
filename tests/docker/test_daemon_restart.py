"""The Docker daemon restarting under a running agent: it reconnects, loses nothing and
sends nothing twice.

This test stops and starts the machine's one Docker daemon, so every other Docker test
would fail while it runs: it is skipped unless ``MINILOG_TEST_DOCKERD_RESTART=1``, and
``scripts/test`` runs it on its own after the rest of the suite.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path

import docker
import pytest
from agent_helpers import REPO, docker_config, docker_lines
from docker_helpers import TEST_IMAGE, TEST_LABEL, docker_unavailable_reason

from minilog.agent.runtime import Agent
from minilog.testing import FakeLoki

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        os.environ.get("MINILOG_TEST_DOCKERD_RESTART") != "1",
        reason="restarts the shared Docker daemon: scripts/test runs it last, alone "
        "(MINILOG_TEST_DOCKERD_RESTART=1)",
    ),
]


def _dockerd_pid() -> int:
    out = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True)
    pids = out.stdout.split()
    if len(pids) != 1:
        pytest.skip(f"expected one dockerd process, found {pids or 'none'}")
    return int(pids[0])


def _restart_dockerd() -> None:
    """Stop the daemon, wait for it to exit, start it again (blocking)."""
    pid = _dockerd_pid()
    os.kill(pid, signal.SIGTERM)
    # No event tells a foreign process's exit: poll, bounded.
    for _ in range(600):
        if not Path(f"/proc/{pid}").exists():
            break
        subprocess.run(["sleep", "0.1"], check=True)
    else:
        raise AssertionError("dockerd did not exit within 60 s of SIGTERM")
    subprocess.run([str(REPO / "scripts" / "start-dockerd")], check=True, timeout=120)


@pytest.mark.timeout(240)
async def test_agent_reconnects_after_a_daemon_restart(tmp_path: Path) -> None:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    name = f"minilog-restart-{uuid.uuid4().hex[:10]}"
    client = docker.from_env()
    client.containers.run(
        TEST_IMAGE,
        ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'],
        name=name,
        detach=True,
        network_mode="none",
        labels={TEST_LABEL: "1"},
        # Brought back by the restarted daemon (same ID): its log grows in one file.
        restart_policy={"Name": "always"},
    )
    config = tmp_path / "agent.alloy"
    async with FakeLoki() as loki:
        config.write_text(docker_config(name, loki.push_url))
        agent = Agent(config, storage_path=tmp_path / "data")
        try:
            await agent.start()
            await loki.wait_for_entries(5, timeout=30)
            await asyncio.to_thread(_restart_dockerd)
            before = loki.entry_count
            await loki.wait_for_entries(before + 10, timeout=60)
        finally:
            await agent.aclose()
        fresh = docker.from_env()
        try:
            held = await asyncio.to_thread(docker_lines, fresh.containers.get(name))
        finally:
            await asyncio.to_thread(fresh.containers.get(name).remove, force=True)
        got = [(e.timestamp_ns, e.line) for _, e in loki.entries]
    assert len(got) == len(set(got)), "an entry was sent twice"
    last = max(ts for ts, _ in got)
    # Everything Docker holds up to the newest entry received arrived, in its order,
    # from before the restart and after it.
    assert got == [rec for rec in held if rec[0] <= last]
    assert got[0][1] == "tick 1"
    assert len(got) > before >= 5
