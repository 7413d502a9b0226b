"""``loki.source.docker``'s json-file path against Docker's own rotation (``max-size``,
``max-file``, ``compress=true``) on the real Docker Engine (skipped without it): every
line once and in order across rotations and restarts, Docker deleting unread files
while the agent is stopped (a gap, logged and counted) and while it runs with a
blocked receiver (held open: nothing lost), and switching ``logs_from`` across restarts.

The container's main process only sleeps; the test writes its log in bursts with
``docker exec ... > /proc/1/fd/1`` (the main process's stdout), so what is on disk when
the agent stops or starts is known, not raced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import itertools
import logging
import os
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from source_helpers import Blocking, Recorder, eventually, make_source, running

from minilog.docker.logfiles import chain
from minilog.labels import DOCKER_CONTAINER_ID

pytestmark = pytest.mark.docker

#: About 34 records of the lines below per file: a rotation every 34 lines.
ROTATING = {"max-size": "4k", "max-file": "3", "compress": "true"}
PAD = "x" * 40


@pytest.fixture
async def client() -> AsyncGenerator[Any, None]:
    from docker_helpers import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from minilog.docker.client import DockerClient

    c = DockerClient()
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def containers(docker_containers: Any) -> Iterator[Any]:
    yield docker_containers


def target(container: Any) -> dict[str, str]:
    return {
        DOCKER_CONTAINER_ID: container.id,
        "__meta_docker_container_name": "/rot",
        "job": "t",
    }


def names(first: int, last: int) -> list[str]:
    return [f"n{i}-{PAD}" for i in range(first, last + 1)]


async def write(container: Any, first: int, last: int) -> None:
    """Lines ``first..last`` on the container's stdout, returning once they are
    written (Docker logs each before the pipe takes the next)."""
    script = (
        f"i={first}; while [ $i -le {last} ]; do echo n$i-{PAD}; i=$((i+1)); done"
        " > /proc/1/fd/1"
    )
    result = await asyncio.to_thread(container.exec_run, ["sh", "-c", script])
    assert result.exit_code == 0, result.output


def log_path(container: Any) -> str:
    container.reload()
    return str(container.attrs["LogPath"])


def on_disk(path: str) -> list[str]:
    """Every line Docker keeps for the container, oldest first.

    Docker renames, gzips and deletes rotated files while they are listed: a file gone
    between the listing and its read means the listing is stale, so list again.
    """
    for _ in range(100):
        lines: list[str] = []
        try:
            for name in chain(path):
                data = Path(name).read_bytes()
                if name.endswith(".gz"):
                    data = gzip.decompress(data)
                lines += [
                    orjson.loads(r)["log"].rstrip("\n") for r in data.splitlines()
                ]
        except (FileNotFoundError, EOFError, gzip.BadGzipFile):
            continue  # caught Docker mid-rotation (or mid-gzip)
        return lines
    raise AssertionError(f"{path}: Docker kept rotating while its files were read")


def compressed(path: str) -> bool:
    """Docker gzips a rotated file after the rotation: every rotated file is done."""
    rotated = chain(path)[:-1]
    return bool(rotated) and all(name.endswith(".gz") for name in rotated)


def held(path: str) -> tuple[bool, int]:
    """What this process (the agent under test) holds open of the container's log:
    whether the live file, and how many of its files (live, rotated, deleted)."""
    try:
        live = os.stat(path).st_ino
    except FileNotFoundError:
        live = -1
    holds_live, count = False, 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/self/fd/{fd}").startswith(path):
                continue
            count += 1
            holds_live = holds_live or os.stat(f"/proc/self/fd/{fd}").st_ino == live
    return holds_live, count


async def write_held(container: Any, path: str, first: int, last: int) -> None:
    """Lines ``first..last`` in bursts of less than a file, each once the agent holds
    the live file open or holds all it will (the one it reads and ``max-file``
    more): as a container logging at a human pace, whose rotations the agent sees
    one by one (a burst of several rotations within a millisecond can delete a file
    before anyone could open it)."""
    bound = 1 + int(ROTATING["max-file"])

    def ready() -> bool:
        # Docker itself races with two rotations before the first gzip is done
        # (it deletes the newer ".1"): let each gzip finish.
        rotated = chain(path)[:-1]
        done = all(name.endswith(".gz") for name in rotated)
        holds_live, count = held(path)
        return done and (holds_live or count >= bound)

    for start in range(first, last + 1, 25):
        await eventually(ready)
        await write(container, start, min(start + 24, last))


async def written(container: Any, path: str, last: int) -> None:
    """Until Docker has the line ``last`` in its file and finished compressing."""
    want = names(last, last)[0]
    await eventually(lambda: compressed(path) and want in on_disk(path))


async def test_rotated_files_are_read_in_order_once_across_a_restart(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("exec sleep 3600", log_options={**ROTATING, "max-file": "5"})
    path = log_path(container)
    await write(container, 1, 100)  # about three rotations
    await written(container, path, 100)
    first = Recorder()
    source = make_source(client, [first], tmp_path, logs_from="file")
    source.update_targets([target(container)])
    async with running(source):
        await first.wait_for(lambda: len(first.lines()) >= 100)
        assert source.targets_info()[0].reading_from == "file"
    assert first.lines() == names(1, 100)
    # Written while the agent is stopped: the position (line 100) ends up in a
    # rotated, gzipped file, which the restart reads from.
    await write(container, 101, 200)
    await written(container, path, 200)
    kept = on_disk(path)
    assert names(100, 100)[0] in kept, "the position must still be on disk"
    resumed_in = [n for n in chain(path) if names(100, 100)[0].encode() in _raw(n)]
    assert resumed_in and resumed_in[0].endswith(".gz")
    second = Recorder()
    registry = CollectorRegistry()
    source = make_source(
        client, [second], tmp_path, logs_from="file", registry=registry
    )
    source.update_targets([target(container)])
    async with running(source):
        await second.wait_for(lambda: names(200, 200)[0] in second.lines())
    assert second.lines() == names(101, 200)
    resumes = "minilog_source_docker_resumes_total"
    assert registry.get_sample_value(resumes, {"mode": "file"}) == 1
    assert registry.get_sample_value("minilog_source_docker_file_gaps_total") == 0


def _raw(name: str) -> bytes:
    data = Path(name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


async def test_files_deleted_while_the_agent_was_stopped_are_a_gap_logged_once(
    client: Any, containers: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    container = containers("exec sleep 3600", log_options=ROTATING)
    path = log_path(container)
    await write(container, 1, 20)
    first = Recorder()
    source = make_source(client, [first], tmp_path, logs_from="file")
    source.update_targets([target(container)])
    async with running(source):
        await first.wait_for(lambda: len(first.lines()) >= 20)
    assert first.lines() == names(1, 20)
    # About ten rotations with max-file 3: Docker deletes lines never read.
    await write(container, 21, 400)
    await written(container, path, 400)
    kept = on_disk(path)
    assert names(21, 21)[0] not in kept
    assert kept == names(401 - len(kept), 400)
    second = Recorder()
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="minilog.docker.tailer")
    source = make_source(
        client, [second], tmp_path, logs_from="file", registry=registry
    )
    source.update_targets([target(container)])
    async with running(source):
        await second.wait_for(lambda: names(400, 400)[0] in second.lines())
        gap_error = source.targets_info()[0].last_error
    # What Docker kept is shipped once, in order; what it deleted is reported.
    assert second.lines() == kept
    assert registry.get_sample_value("minilog_source_docker_file_gaps_total") == 1
    seconds = registry.get_sample_value("minilog_source_docker_file_gap_seconds_total")
    assert seconds is not None and seconds > 0
    warnings = [r for r in caplog.records if "rotated away" in r.getMessage()]
    assert len(warnings) == 1
    assert container.id[:12] in warnings[0].getMessage()
    assert "may be lost" in gap_error


async def test_nothing_is_lost_while_a_blocked_agent_holds_the_rotated_files(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("exec sleep 3600", log_options=ROTATING)
    path = log_path(container)
    await write(container, 1, 10)
    blocked = Blocking()
    registry = CollectorRegistry()
    source = make_source(
        client, [blocked], tmp_path, logs_from="file", registry=registry
    )
    source.update_targets([target(container)])
    async with running(source):
        # The reader waits in its first send (Loki down): its file is the live one.
        await asyncio.wait_for(blocked.entered.wait(), 20)
        # Five rotations: Docker deletes the file after the one being read, and
        # the one after that, before the reader gets to them.
        await write_held(container, path, 11, 180)
        await written(container, path, 180)
        assert names(50, 50)[0] not in on_disk(path), "unread lines were deleted"
        blocked.release.set()
        await blocked.wait_for(lambda: names(180, 180)[0] in blocked.lines())
    assert blocked.lines() == names(1, 180)
    assert registry.get_sample_value("minilog_source_docker_file_gaps_total") == 0


async def test_more_rotations_than_held_files_while_blocked_are_a_gap(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("exec sleep 3600", log_options=ROTATING)
    path = log_path(container)
    await write(container, 1, 10)
    blocked = Blocking()
    registry = CollectorRegistry()
    source = make_source(
        client, [blocked], tmp_path, logs_from="file", registry=registry
    )
    source.update_targets([target(container)])
    async with running(source):
        await asyncio.wait_for(blocked.entered.wait(), 20)
        # Past max-file (3) held files Docker deletes what is not held.
        await write_held(container, path, 11, 500)
        await written(container, path, 500)
        kept = on_disk(path)
        blocked.release.set()
        await blocked.wait_for(lambda: names(500, 500)[0] in blocked.lines())
        gap_error = source.targets_info()[0].last_error
    got = blocked.lines()
    # In order, none twice, the newest files whole; the lines lost are one span.
    assert len(got) == len(set(got))
    assert got[-len(kept) :] == kept
    numbers = [int(line[1:].split("-")[0]) for line in got]
    assert numbers == sorted(numbers)
    holes = [(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1]
    assert len(holes) == 1
    assert registry.get_sample_value("minilog_source_docker_file_gaps_total") == 1
    assert "may be lost" in gap_error


@pytest.mark.parametrize("order", [("api", "file", "api"), ("file", "api", "file")])
async def test_switching_logs_from_across_restarts_loses_and_repeats_nothing(
    order: tuple[str, str, str], client: Any, containers: Any, tmp_path: Path
) -> None:
    # Uncompressed: Docker 20.10's API skips records of a compressed rotated file
    # when asked with ``since`` (README, "Container logs from disk").
    rotating = {"max-size": "4k", "max-file": "5"}
    container = containers("exec sleep 3600", log_options=rotating)
    got: list[str] = []
    for round_, logs_from in enumerate(order):
        first, last = round_ * 40 + 1, round_ * 40 + 40
        await write(container, first, last)
        newest = names(last, last)[0]
        rec = Recorder()
        source = make_source(client, [rec], tmp_path, logs_from=logs_from)
        source.update_targets([target(container)])
        async with running(source):
            await rec.wait_for(functools.partial(_has, rec, newest))
            assert source.targets_info()[0].reading_from == logs_from
        got += rec.lines()
    assert got == names(1, 120)


def _has(rec: Recorder, line: str) -> bool:
    return line in rec.lines()


async def test_max_file_1_is_followed_across_its_rotations(
    client: Any, containers: Any, tmp_path: Path
) -> None:
    # max-size alone means max-file=1. Docker 20.10 then renames the live file over
    # the one ".1" it keeps; Docker 23+ unlinks it; Docker 19.03 truncated it in place
    # (``test_jsonfile_truncation.py``). One line at a time, each read before the next
    # is written, so no rotation takes a line the agent had not read.
    container = containers("exec sleep 3600", log_options={"max-size": "1k"})
    path = log_path(container)
    rec = Recorder()
    registry = CollectorRegistry()
    source = make_source(client, [rec], tmp_path, logs_from="file", registry=registry)
    source.update_targets([target(container)])
    sizes = []
    async with running(source):
        for i in range(1, 41):
            await write(container, i, i)
            await rec.wait_for(functools.partial(_has, rec, names(i, i)[0]))
            sizes.append(os.stat(path).st_size)
        assert source.targets_info()[0].reading_from == "file"
    assert any(b < a for a, b in itertools.pairwise(sizes)), "Docker rotated it"
    assert rec.lines() == names(1, 40)
    errors = "loki_source_docker_target_parsing_errors_total"
    assert registry.get_sample_value(errors) == 0
    assert registry.get_sample_value("minilog_source_docker_file_gaps_total") == 0
