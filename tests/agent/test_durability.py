"""Durability of the whole agent against real Docker: kill -9, Loki outages, container
stop/start, short-lived containers and churn.

Docker's own log of each container is the ground truth: what reaches the fake Loki is
compared with it record for record. The agent runs as ``python -m minilog run`` where
its process dies or restarts, in-process where tasks and fds are counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from agent_helpers import (
    SOURCE_ID,
    AgentProcess,
    StartAgent,
    docker_config,
    docker_lines,
    metric_sum,
    only_stream,
    paced_script,
    read_positions,
    resume_index,
    wait_until,
)
from docker_helpers import ContainerStarter
from prometheus_client import generate_latest

from minilog.agent.runtime import Agent
from minilog.testing import FakeLoki

__all__: list[str] = []

pytestmark = pytest.mark.docker


@pytest.fixture
def name() -> str:
    """A container name unique to this test, also the keep-rule of its config."""
    return f"minilog-dur-{uuid.uuid4().hex[:10]}"


def write_config(tmp_path: Path, name_regex: str, loki: FakeLoki, **kw: Any) -> Path:
    path = tmp_path / "agent.alloy"
    path.write_text(docker_config(name_regex, loki.push_url, **kw))
    return path


# ------------------------------------------------------------------ 1. kill -9 / TERM


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("sig", "tty"),
    [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGKILL, True)],
    ids=["kill", "term", "kill-tty"],
)
async def test_agent_death_loses_nothing_and_resends_only_past_the_saved_position(
    tmp_path: Path,
    loki: FakeLoki,
    agents: StartAgent,
    docker_containers: ContainerStarter,
    name: str,
    sig: signal.Signals,
    tty: bool,
) -> None:
    # A TTY container's log is raw text, not frames: it resumes with ``since`` alone.
    total = 3000
    storage = tmp_path / "data"
    config = write_config(tmp_path, name, loki)
    first = await agents(config)
    container = docker_containers(
        paced_script("seq", total, every=20, pause="0.05"), name=name, tty=tty
    )
    await loki.wait_for_entries(600, timeout=40)
    # A position must be on disk, or a kill would only test "start from scratch".
    await wait_until(
        lambda: container.id in read_positions(storage), 10, "a saved position"
    )
    # Some more lines, so the kill likely lands between two saves of the position.
    await loki.wait_for_entries(loki.entry_count + 300, timeout=30)
    first.proc.send_signal(sig)
    rc = await first.wait()
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    before = only_stream(loki, name)
    saved = read_positions(storage)[container.id]
    records = docker_lines(container)
    assert len(before) < total, "everything was shipped before the agent died"
    # Lines came in Docker's order, none twice.
    assert before == records[: len(before)]
    resume_at = resume_index(records, saved)
    # Durability: the saved position never runs ahead of what Loki accepted.
    assert resume_at <= len(before)
    if sig == signal.SIGTERM:
        # Graceful: everything read was flushed and its position saved.
        assert resume_at == len(before)

    await agents(config)
    await loki.wait_for_entries(len(before) + total - resume_at, timeout=60)
    after = only_stream(loki, name)[len(before) :]
    records = docker_lines(container)
    assert len(records) == total
    # The new agent resumes exactly at the saved position and ships the rest once.
    assert after == records[resume_at:]
    got = {int(line.split()[1]) for _, line in before + after}
    assert got == set(range(1, total + 1))
    duplicates = records[resume_at : len(before)]
    if sig == signal.SIGTERM:
        assert duplicates == []
    else:
        # Only what was accepted after the last save (saved every second) comes twice.
        newest_before = before[-1][0]
        assert all(ts >= saved[0] for ts, _ in duplicates)
        assert all(newest_before - ts < 3_000_000_000 for ts, _ in duplicates)


@pytest.mark.timeout(120)
async def test_kill_while_loki_fails_loses_nothing_read_but_unacknowledged(
    tmp_path: Path,
    loki: FakeLoki,
    agents: StartAgent,
    docker_containers: ContainerStarter,
    name: str,
) -> None:
    total = 1500
    storage = tmp_path / "data"
    config = write_config(tmp_path, name, loki)
    first = await agents(config)
    container = docker_containers(
        paced_script("seq", total, every=20, pause="0.05"), name=name
    )
    await loki.wait_for_entries(100, timeout=40)
    loki.faults.respond(503)
    # Lines read but unacknowledged for over a second: the positions flusher (every
    # second) has run meanwhile, and must not have saved them as done.
    await _wait_for_metric_above(first, "minilog_source_docker_lag_seconds", 1.5)
    await first.kill()
    before = only_stream(loki, name)
    records = docker_lines(container)
    assert len(records) > len(before) + 20, "the agent had nothing unacknowledged"
    resume_at = resume_index(records, read_positions(storage)[container.id])
    assert resume_at <= len(before)

    loki.faults.clear()
    await agents(config)
    await loki.wait_for_entries(len(before) + total - resume_at, timeout=60)
    assert only_stream(loki, name)[len(before) :] == docker_lines(container)[resume_at:]


# ------------------------------------------------------------------ 2. Loki outage


@pytest.mark.timeout(120)
async def test_loki_outage_backs_off_then_delivers_everything_once_in_order(
    tmp_path: Path,
    loki: FakeLoki,
    agents: StartAgent,
    docker_containers: ContainerStarter,
    name: str,
) -> None:
    total = 1500
    agent = await agents(write_config(tmp_path, name, loki))
    container = docker_containers(
        paced_script("seq", total, every=15, pause="0.05"), name=name
    )
    await loki.wait_for_entries(100, timeout=40)
    retries = "loki_write_batch_retries_total"
    assert await agent.metric(retries) == 0

    # Down: connections refused.
    await loki.aclose()
    down_at = len(docker_lines(container))
    await wait_until(
        lambda: len(docker_lines(container)) > down_at + 150,
        20,
        "the container to keep logging while Loki is down",
    )
    retried_down = await _wait_for_metric_above(agent, retries, 2)
    assert (await agent.get("/-/ready"))[0] == 200

    # Up again but answering 503 (set before it listens, so no push slips through).
    loki.faults.respond(503)
    await loki.start()
    seen = loki.requests.count
    await loki.wait_for_requests(seen + 3, timeout=20)
    assert loki.requests.statuses[503] >= 3
    assert await agent.metric(retries) >= retried_down + 3
    assert (await agent.get("/-/ready"))[0] == 200
    assert loki.entry_count < total

    loki.faults.clear()
    await loki.wait_for_entries(total, timeout=60)
    # Exactly what Docker holds, once each, in its order: nothing lost or repeated.
    assert only_stream(loki, name) == docker_lines(container)
    assert await agent.metric("loki_write_dropped_entries_total") == 0


async def _wait_for_metric_above(
    agent: AgentProcess, metric: str, above: float, timeout_s: float = 20
) -> float:
    value = 0.0

    async def check() -> bool:
        nonlocal value
        value = await agent.metric(metric)
        return value > above

    await wait_until(check, timeout_s, f"{metric} > {above}", interval_s=0.2)
    return value


@pytest.mark.timeout(120)
async def test_a_400_is_dropped_once_counted_and_never_read_again(
    tmp_path: Path,
    loki: FakeLoki,
    agents: StartAgent,
    docker_containers: ContainerStarter,
    name: str,
) -> None:
    storage = tmp_path / "data"
    config = write_config(tmp_path, name, loki)
    agent = await agents(config)
    loki.faults.respond(400, "entry out of order")
    # The "good" lines wait for a file the test creates with docker exec.
    container = docker_containers(
        "for i in 1 2 3 4 5; do echo bad $i; done; "
        "while [ ! -e /go ]; do sleep 0.05; done; "
        "for i in 1 2 3 4 5; do echo good $i; done; exec sleep 600",
        name=name,
    )
    dropped = await _wait_for_metric_above(agent, "loki_write_dropped_entries_total", 4)
    assert dropped == 5
    assert (
        await agent.metric("loki_write_dropped_entries_total", reason="ingester_error")
        == 5
    )
    pushes = loki.requests.count
    assert pushes == loki.requests.statuses[400] >= 1
    assert await agent.metric("loki_write_batch_retries_total") == 0
    assert agent.log_count("dropping batch") == pushes
    # Settled by the drop: the position moves past the bad lines.
    last_bad = docker_lines(container)[-1]
    assert last_bad[1] == "bad 5"
    await wait_until(
        lambda: read_positions(storage).get(container.id, (0, 0)) >= (last_bad[0], 1),
        10,
        "the position to pass the dropped lines",
    )
    loki.faults.clear()
    agent.proc.send_signal(signal.SIGTERM)
    assert await agent.wait() == 0

    # A new agent, now facing a healthy Loki, does not read the dropped lines again.
    again = await agents(config)
    await asyncio.to_thread(container.exec_run, ["sh", "-c", ": > /go"])
    await loki.wait_for_entries(5, timeout=30)
    again.proc.send_signal(signal.SIGTERM)
    assert await again.wait() == 0
    assert [line for _, line in only_stream(loki, name)] == [
        f"good {i}" for i in range(1, 6)
    ]
    assert loki.requests.statuses[400] == pushes


@pytest.mark.timeout(90)
async def test_container_removed_while_the_agent_is_down_leaves_the_positions_file(
    tmp_path: Path,
    loki: FakeLoki,
    agents: StartAgent,
    docker_containers: ContainerStarter,
    name: str,
) -> None:
    storage = tmp_path / "data"
    config = write_config(tmp_path, f"{name}-.*", loki)
    first = await agents(config)
    gone = docker_containers("echo one; exec sleep 600", name=f"{name}-gone")
    kept = docker_containers("echo two; exec sleep 600", name=f"{name}-kept")
    await loki.wait_for_entries(2, timeout=30)
    await wait_until(
        lambda: {gone.id, kept.id} <= set(read_positions(storage)), 10, "positions"
    )
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait() == 0
    await asyncio.to_thread(gone.remove, force=True)

    await agents(config)
    # No tailer ever sees it go: the source's check at start must drop its position.
    await wait_until(
        lambda: gone.id not in read_positions(storage), 15, "the stale position"
    )
    assert kept.id in read_positions(storage)
    assert sorted(loki.lines()) == ["one", "two"]


# ------------------------------------------------------------------ 3-5. in-process


@pytest.fixture
async def run_agent(
    tmp_path: Path, loki: FakeLoki
) -> AsyncIterator[Callable[[str], Any]]:
    """An in-process ``Agent`` on ``docker_config(name_regex, ...)``; closed after."""
    started: list[Agent] = []

    async def start(name_regex: str) -> Agent:
        config = write_config(tmp_path, name_regex, loki)
        agent = Agent(config, storage_path=tmp_path / "data")
        started.append(agent)
        await agent.start()
        return agent

    yield start
    for agent in started:
        await agent.aclose()


@pytest.mark.timeout(90)
async def test_stopped_then_restarted_container_resumes_where_it_stopped(
    loki: FakeLoki,
    run_agent: Callable[[str], Any],
    docker_containers: ContainerStarter,
    name: str,
) -> None:
    await run_agent(name)
    # Each run prints its own lines: a marker file tells the second run from the first.
    container = docker_containers(
        "if [ -e /ran ]; then p=after; else p=before; : > /ran; fi; "
        'for i in 1 2 3 4 5; do echo "$p $i"; done; exec sleep 600',
        name=name,
    )
    await loki.wait_for_entries(5, timeout=30)
    # In threads: the agent shares this event loop and must run meanwhile.
    await asyncio.to_thread(container.stop, timeout=0)
    await asyncio.to_thread(container.start)
    await loki.wait_for_entries(10, timeout=30)
    assert only_stream(loki, name) == docker_lines(container)
    assert [line for _, line in only_stream(loki, name)] == [
        *(f"before {i}" for i in range(1, 6)),
        *(f"after {i}" for i in range(1, 6)),
    ]


@pytest.mark.timeout(90)
async def test_short_lived_containers_have_every_line_shipped(
    loki: FakeLoki,
    run_agent: Callable[[str], Any],
    docker_containers: ContainerStarter,
    name: str,
) -> None:
    await run_agent(f"{name}-.*")
    containers = [
        docker_containers(
            f"for i in 1 2 3 4 5; do echo {k} $i; done", name=f"{name}-{k}"
        )
        for k in range(4)
    ]
    for container in containers:
        status = await asyncio.to_thread(container.wait, timeout=10)
        assert status["StatusCode"] == 0
    await loki.wait_for_entries(20, timeout=30)
    streams = loki.streams()
    for k, container in enumerate(containers):
        got = streams[f'{{container="{name}-{k}"}}']
        assert [(e.timestamp_ns, e.line) for e in got] == docker_lines(container)
        assert [e.line for e in got] == [f"{k} {i}" for i in range(1, 6)]


def open_fds() -> dict[str, str]:
    """This process's open fds and what each points at (for a readable failure)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed between the listing and the readlink
    return out


def describe_sockets(targets: list[str]) -> list[str]:
    """``socket:[inode]`` with the unix path or TCP ports it belongs to, when known."""
    known: dict[str, str] = {}
    for table in ("unix", "tcp", "tcp6"):
        with open(f"/proc/net/{table}") as f:
            next(f)
            for row in f:
                cols = row.split()
                if table == "unix":
                    known[cols[6]] = f"unix {cols[7] if len(cols) > 7 else '?'}"
                else:
                    known[cols[9]] = f"{table} {cols[1]}->{cols[2]} st={cols[3]}"
    out = []
    for target in targets:
        inode = target.removeprefix("socket:[").removesuffix("]")
        out.append(f"{target} {known.get(inode, '')}".strip())
    return out


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("docker_client")  # for its skip without a Docker Engine
async def test_container_churn_leaves_no_tasks_fds_or_positions(
    tmp_path: Path,
    loki: FakeLoki,
    run_agent: Callable[[str], Any],
    name: str,
) -> None:
    batches, per_batch = 10, 20
    agent = await run_agent(f"{name}-.*")
    source = agent.component(SOURCE_ID)
    # The baseline is taken once discovery has listed containers (its idle state).
    await wait_until(
        lambda: (
            metric_sum(
                generate_latest(agent.registry).decode(),
                "prometheus_sd_refresh_duration_seconds_count",
            )
            > 0
        ),
        20,
        "the first discovery refresh",
    )
    base_tasks, base_fds = len(asyncio.all_tasks()), open_fds()
    # A client of its own, closed before fds are counted: its pooled connections are
    # the test's, not the agent's.
    client = docker.from_env()
    starter = ContainerStarter(client)
    removed: list[str] = []
    first_ids: set[str] = set()
    try:
        for b in range(batches):
            names = [f"{name}-{b}-{k}" for k in range(per_batch)]
            containers = await asyncio.gather(
                *(asyncio.to_thread(starter, f"echo hello {n}", name=n) for n in names)
            )
            await loki.wait_for_entries((b + 1) * per_batch, timeout=60)
            if b == 0:
                # Positions were saved: their removal below is then a real check.
                first_ids.update(c.id for c in containers)
                await wait_until(
                    lambda: first_ids <= set(read_positions(tmp_path / "data")),
                    10,
                    "positions of the first batch",
                )
            await asyncio.gather(
                *(asyncio.to_thread(c.remove, force=True) for c in containers)
            )
            removed.extend(c.id for c in containers)
    finally:
        starter.remove_all()
        client.close()

    lines = sorted(loki.lines())
    assert lines == sorted(
        f"hello {name}-{b}-{k}" for b in range(batches) for k in range(per_batch)
    )
    await wait_until(
        lambda: not source.debug_info()["targets_info"], 60, "every tailer to end"
    )
    await wait_until(
        lambda: not set(removed) & set(read_positions(tmp_path / "data")),
        15,
        "positions of removed containers to leave the file",
    )
    # Tasks come back to the idle baseline (slack for a refresh in progress).
    await wait_until(
        lambda: len(asyncio.all_tasks()) <= base_tasks + 2, 15, "tasks to end"
    )
    # A leak grows with the containers; the Docker client's keep-alive pool is bounded
    # by the tailers that ran at once and empties after aiohttp's 15 s idle timeout.
    # (Two fds of slack: the writer's connection to FakeLoki, both ends.)
    assert len(open_fds()) <= len(base_fds) + 2 * per_batch + 4
    try:
        await wait_until(lambda: len(open_fds()) <= len(base_fds) + 4, 45, "fds")
    except AssertionError:
        now = open_fds()
        new = sorted(v for k, v in now.items() if base_fds.get(k) != v)
        raise AssertionError(f"fds left open: {describe_sockets(new)}") from None
    metrics = generate_latest(agent.registry).decode()
    assert metric_sum(metrics, "minilog_source_docker_tailers_active") == 0
    assert metric_sum(metrics, "minilog_source_docker_tailer_crashes_total") == 0
