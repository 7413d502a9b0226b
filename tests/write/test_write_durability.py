"""An outage longer than ``loki.write``'s retry budget, with a ``kill -9`` inside it,
against the real agent process and real Docker containers: nothing is lost.

Docker's own log of the container is the ground truth, as in ``test_durability.py``.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest
from agent_helpers import (
    StartAgent,
    docker_config,
    docker_lines,
    only_stream,
    paced_script,
    read_positions,
    resume_index,
    wait_until,
)
from docker_helpers import ContainerStarter

from minilog.testing import FakeLoki

__all__: list[str] = []

pytestmark = pytest.mark.docker


@pytest.mark.timeout(240)
async def test_an_outage_past_the_retry_budget_with_a_kill_inside_loses_nothing(
    tmp_path: Path,
    loki: FakeLoki,
    agents: StartAgent,
    docker_containers: ContainerStarter,
) -> None:
    name = f"minilog-outage-{uuid.uuid4().hex[:10]}"
    total = 3000
    storage = tmp_path / "data"
    config = tmp_path / "agent.alloy"
    # Two attempts, 200 ms apart at most: the budget runs out within a second.
    config.write_text(
        docker_config(
            name, loki.push_url, min_backoff="50ms", max_backoff="200ms", max_retries=2
        )
    )
    first = await agents(config)
    container = docker_containers(
        paced_script("seq", total, every=20, pause="0.05"), name=name
    )
    await loki.wait_for_entries(300, timeout=40)

    await loki.aclose()  # Loki down: connections refused
    await first.wait_for_log("failing:")  # max_backoff_retries spent
    down_at = len(docker_lines(container))
    await wait_until(
        lambda: len(docker_lines(container)) > down_at + 300,
        30,
        "the container to keep logging while Loki is down",
    )
    assert await first.metric("minilog_write_endpoint_failing") == 1
    assert await first.metric("loki_write_dropped_entries_total") == 0
    assert await first.metric("minilog_write_pending_entries") > 0
    assert first.log_count("cannot reach") == 1  # once per outage, not per retry
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL

    before = only_stream(loki, name)
    records = docker_lines(container)
    saved = read_positions(storage)[container.id]
    resume_at = resume_index(records, saved)
    # The position never ran ahead of what Loki accepted.
    assert resume_at <= len(before) < len(records)
    assert before == records[: len(before)]

    second = await agents(config)
    await second.wait_for_log("failing:")  # still down: its budget runs out too
    await loki.start()  # back, on the same port
    await wait_until(
        lambda: len(docker_lines(container)) == total, 60, "every line written"
    )
    await loki.wait_for_entries(len(before) + total - resume_at, timeout=90)
    await second.wait_for_log("answers again")
    records = docker_lines(container)
    after = only_stream(loki, name)[len(before) :]
    # The restart resumed at the saved position and shipped the rest once, in order.
    assert after == records[resume_at:]
    lost = set(records) - set(before) - set(after)
    assert lost == set()
    # Only what was accepted after the last position save (once a second) came twice.
    duplicates = records[resume_at : len(before)]
    newest_before = before[-1][0]
    assert all(ts >= saved[0] for ts, _ in duplicates)
    assert all(newest_before - ts < 3_000_000_000 for ts, _ in duplicates)
    assert await second.metric("loki_write_dropped_entries_total") == 0
    assert await second.metric("minilog_write_endpoint_failing") == 0
    second.proc.send_signal(signal.SIGTERM)
    assert await second.wait() == 0
