"""``loki.source.file`` in a real agent process killed with ``kill -9`` mid-file: the
restart resumes from the saved position, loses nothing and sends again only what Loki
accepted after the last save."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest
from agent_helpers import StartAgent, wait_until

from minilog.testing import FakeLoki

SOURCE = "loki.source.file.files"


def config(log: Path, loki: FakeLoki) -> str:
    return (
        'local.file_match "logs" {\n'
        f'\tpath_targets = [{{"__path__" = "{log}", "job" = "kill"}}]\n'
        '\tsync_period = "100ms"\n}\n'
        f'loki.source.file "files" {{\n'
        "\ttargets    = local.file_match.logs.targets\n"
        "\tforward_to = [loki.write.out.receiver]\n}\n"
        'loki.write "out" {\n\tendpoint {\n'
        f'\t\turl = "{loki.push_url}"\n\t\tbatch_wait = "50ms"\n\t}}\n}}\n'
    )


def saved_offset(storage: Path, log: Path) -> int:
    try:
        raw = orjson.loads((storage / SOURCE / "positions.json").read_bytes())
    except FileNotFoundError:
        return 0
    entry = raw.get(str(log))
    return int(entry["offset"]) if entry else 0


@pytest.mark.timeout(90)
async def test_kill_9_resumes_at_the_saved_offset_and_loses_nothing(
    tmp_path: Path, loki: FakeLoki, agents: StartAgent
) -> None:
    log = tmp_path / "app.log"
    lines = [f"line {i:05d}" for i in range(1, 4001)]
    log.write_text("\n".join(lines[:2000]) + "\n")
    conf = tmp_path / "agent.alloy"
    conf.write_text(config(log, loki))
    storage = tmp_path / "data"
    first = await agents(conf)
    await loki.wait_for_entries(500, timeout=30)
    await wait_until(lambda: saved_offset(storage, log) > 0, 10, "a saved position")
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    before = loki.lines()
    offset = saved_offset(storage, log)
    # The saved position never runs ahead of what Loki accepted.
    text = log.read_bytes()
    resumed_at = text[:offset].count(b"\n")
    assert resumed_at <= len(before)
    assert before == lines[: len(before)]
    # Written while the agent is down.
    with log.open("a") as f:
        f.write("\n".join(lines[2000:]) + "\n")
    await agents(conf)
    await loki.wait_for_entries(len(before) + len(lines) - resumed_at, timeout=60)
    after = loki.lines()[len(before) :]
    # Exactly from the saved offset, everything once more from there, in order.
    assert after == lines[resumed_at:]
