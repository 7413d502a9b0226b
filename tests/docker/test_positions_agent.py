"""The positions file under damage and a failing disk, with the real agent and Docker.

Each test runs ``python -m minilog run`` twice on one container. The container prints a
first part of its log, the first agent ships it and is killed (``kill -9``: no final
save, so ``positions.json`` and its backup ``positions.json.bak`` hold two different
saves), then the container prints the rest. Between the two runs the file is damaged,
or saving was made impossible. Docker's own log is the ground truth: the second agent
must ship exactly the records after the position it can prove delivered, the backup's
(or all of them when there is none), in Docker's order, and none may be missing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_helpers import (
    SOURCE_ID,
    AgentProcess,
    docker_config,
    docker_lines,
    only_stream,
    positions_file,
    read_positions,
    resume_index,
    wait_until,
)
from docker_helpers import ContainerStarter
from fs_helpers import fill, fs_fault_unavailable_reason, tiny_tmpfs

from minilog.testing import FakeLoki

pytestmark = pytest.mark.docker

FIRST = 600  # lines printed before the first agent is killed
TOTAL = 1000  # lines in all

# Injected into the second agent's interpreter (see the unreadable case): root reads
# every file, so the permission error is raised at the read boundary instead.
UNREADABLE_HOOK = """\
import errno, os, pathlib

_target = os.environ.get("MINILOG_TEST_UNREADABLE")
if _target:
    _read_bytes = pathlib.Path.read_bytes

    def _refuse(self):
        if str(self) == _target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return _read_bytes(self)

    pathlib.Path.read_bytes = _refuse
"""


def gated_script(*parts: int) -> str:
    """Prints ``n 1``, ``n 2``, ... in parts of the given sizes; before each part but
    the first it waits for ``/go<k>``; then stays up (the test removes it)."""
    script = "i=0; "
    for k, size in enumerate(parts):
        if k:
            script += f"while [ ! -e /go{k} ]; do sleep 0.05; done; "
        script += (
            f'n=$((i+{size})); while [ $i -lt $n ]; do i=$((i+1)); echo "n $i"; '
            "if [ $((i % 40)) -eq 0 ]; then sleep 0.02; fi; done; "
        )
    return script + "exec sleep 600"


async def release(container: Any, part: int) -> None:
    await asyncio.to_thread(container.exec_run, ["sh", "-c", f": > /go{part}"])


def read_file_positions(path: Path) -> dict[str, tuple[int, int]]:
    raw = orjson.loads(path.read_bytes())
    return {cid: (p["ts_ns"], p.get("count_at_ts", 0)) for cid, p in raw.items()}


def position_of(records: list[tuple[int, str]], index: int) -> tuple[int, int]:
    """The saved position that covers ``records[:index + 1]``."""
    ts = records[index][0]
    return ts, sum(1 for t, _ in records[: index + 1] if t == ts)


@pytest.fixture
def name() -> str:
    return f"minilog-pos-{uuid.uuid4().hex[:10]}"


async def wait_saved(storage: Path, container: Any, lines: int) -> None:
    """Until the positions file covers the first ``lines`` records."""
    records = docker_lines(container)
    assert len(records) == lines
    await wait_until(
        lambda: (
            read_positions(storage).get(container.id) == position_of(records, lines - 1)
        ),
        10,
        f"the position of line {lines} saved",
    )


async def first_run(
    tmp_path: Path,
    storage: Path,
    loki: FakeLoki,
    agents: Callable[..., Any],
    docker_containers: ContainerStarter,
    name: str,
) -> tuple[Any, Path, list[tuple[int, str]]]:
    """Ship the first part in two saves, kill -9, let the container print the rest.

    Returns the container, the agent config and what Loki got from the first agent.
    """
    config = tmp_path / "agent.alloy"
    config.write_text(docker_config(name, loki.push_url))
    agent = await agents(config, storage)
    half = FIRST // 2
    container = docker_containers(
        gated_script(half, FIRST - half, TOTAL - FIRST), name=name
    )
    await loki.wait_for_entries(half, timeout=60)
    await wait_saved(storage, container, half)
    await release(container, 1)
    await loki.wait_for_entries(FIRST, timeout=60)
    await wait_saved(storage, container, FIRST)
    await agent.kill()
    await release(container, 2)
    await wait_until(
        lambda: len(docker_lines(container)) == TOTAL, 20, "the rest of the log"
    )
    return container, config, only_stream(loki, name)


async def second_run_ships_exactly(
    loki: FakeLoki,
    agent: AgentProcess,
    storage: Path,
    container: Any,
    name: str,
    before: list[tuple[int, str]],
    resume_at: int,
) -> list[tuple[int, str]]:
    """Waits until the second agent saved the end of the log; checks what it sent."""
    records = docker_lines(container)
    await loki.wait_for_entries(len(before) + TOTAL - resume_at, timeout=60)
    await wait_until(
        lambda: (
            read_positions(storage).get(container.id) == position_of(records, TOTAL - 1)
        ),
        20,
        "the end of the log saved by the second agent",
    )
    # Everything it read is acknowledged and saved: nothing more is on its way.
    after = only_stream(loki, name)[len(before) :]
    assert after == records[resume_at:]
    assert {line for _, line in before + after} == {line for _, line in records}
    assert await agent.stop() == 0
    return after


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "garbage": lambda p: p.write_bytes(b"\x8b\x00garbage\xff{"),
    "wrong-shape": lambda p: p.write_bytes(b'{"positions": [1, 2, 3]}'),
    "directory": _directory,
    "empty": lambda p: p.write_bytes(b""),
    "unreadable": lambda p: None,  # see UNREADABLE_HOOK
    "garbage-without-backup": lambda p: p.write_bytes(b"garbage"),
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_damaged_positions_file_resends_only_what_cannot_be_proven_delivered(
    tmp_path: Path,
    loki: FakeLoki,
    agents: Callable[..., Any],
    docker_containers: ContainerStarter,
    name: str,
    damage: str,
) -> None:
    storage = tmp_path / "data"
    container, config, before = await first_run(
        tmp_path, storage, loki, agents, docker_containers, name
    )
    path = positions_file(storage)
    backup = path.with_name("positions.json.bak")
    saved = read_file_positions(path)[container.id]
    older = read_file_positions(backup)[container.id]
    records = docker_lines(container)
    # Two different saves: resuming from the backup is visible in the count.
    assert older < saved == position_of(records, FIRST - 1)
    assert len(before) == FIRST

    DAMAGE[damage](path)
    extra: dict[str, Any] = {}
    if damage == "garbage-without-backup":
        backup.unlink()
        resume_at = 0  # nothing can be proven delivered: the whole log again
    else:
        resume_at = resume_index(records, older)
    if damage == "unreadable":
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(UNREADABLE_HOOK)
        extra = {"pythonpath": [hook], "env": {"MINILOG_TEST_UNREADABLE": str(path)}}
    assert 0 <= resume_at < FIRST

    agent = await agents(config, storage, **extra)
    after = await second_run_ships_exactly(
        loki, agent, storage, container, name, before, resume_at
    )
    # Sent twice: exactly the records between the backup's position and the file's.
    assert len(after) == TOTAL - resume_at
    assert len(before) + len(after) - TOTAL == FIRST - resume_at
    # Said once, with the path; the damaged file is kept beside it.
    assert agent.log_count("is damaged") == 1
    (line,) = [x for x in agent.lines if "is damaged" in x]
    assert str(path) in line and "level=warn" in line
    asides = [p for p in path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(asides) == 1
    if damage == "garbage-without-backup":
        assert "no backup" in line
    else:
        assert f"resumed from its backup {backup}" in line


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    reason = fs_fault_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with tiny_tmpfs(tmp_path / "mnt", size_kib=64) as mount:
        yield mount


@pytest.mark.timeout(150)
async def test_a_full_disk_keeps_shipping_says_so_and_a_restart_resends_only_the_rest(
    tmp_path: Path,
    tmpfs: Path,
    loki: FakeLoki,
    agents: Callable[..., Any],
    docker_containers: ContainerStarter,
    name: str,
) -> None:
    storage = tmpfs / "data"
    config = tmp_path / "agent.alloy"
    config.write_text(docker_config(name, loki.push_url))
    agent = await agents(config, storage)
    container = docker_containers(gated_script(FIRST, TOTAL - FIRST), name=name)
    await loki.wait_for_entries(FIRST, timeout=60)
    await wait_saved(storage, container, FIRST)
    filler = fill(tmpfs)

    async def source_health() -> tuple[str, str]:
        _, body = await agent.get("/api/v0/web/components")
        info = {c["localID"]: c for c in orjson.loads(body)}
        health = info[SOURCE_ID]["health"]
        return health["state"], health["message"]

    # The rest is shipped while no position can be saved, and the source says why.
    await release(container, 1)
    await loki.wait_for_entries(TOTAL, timeout=60)

    async def unhealthy() -> bool:
        return (await source_health())[0] == "unhealthy"

    await wait_until(unhealthy, 20, "the source unhealthy")
    state, message = await source_health()
    assert state == "unhealthy"
    assert message.startswith(f"cannot save positions file {positions_file(storage)}")
    assert "No space left on device" in message
    assert (await agent.get("/-/healthy")) == (
        500,
        "unhealthy components: loki.source.docker\n",
    )
    # The file still holds the last position saved before the disk filled up.
    records = docker_lines(container)
    assert read_positions(storage)[container.id] == position_of(records, FIRST - 1)
    assert agent.log_count("cannot save positions file") == 1
    await agent.kill()
    before = only_stream(loki, name)
    assert before == records

    # Space again: a new agent re-sends exactly what was shipped after the last save.
    filler.unlink()
    second = await agents(config, storage)
    after = await second_run_ships_exactly(
        loki, second, storage, container, name, before, FIRST
    )
    assert len(after) == TOTAL - FIRST
    assert second.log_count("is damaged") == 0
