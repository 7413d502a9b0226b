"""Tests for ``loki.source.docker`` against the real Docker Engine (skipped without it):
the end-to-end behaviour of tailers and positions."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from source_helpers import (
    Blocking,
    Recorder,
    StreamLabel,
    eventually,
    make_source,
    running,
)

from minilog.docker.frames import parse_timestamp
from minilog.docker.positions import Positions
from minilog.labels import DOCKER_CONTAINER_ID


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


def real_target(container: Any) -> dict[str, str]:
    """A target for a docker SDK container (or a container ID)."""
    cid = container if isinstance(container, str) else container.id
    return {DOCKER_CONTAINER_ID: cid, "__meta_docker_container_name": "/x", "job": "t"}


async def to_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(params=["api", "file"])
def logs_from(request: pytest.FixtureRequest) -> str:
    """Every test on both paths: the API, and the json-file read from disk."""
    return str(request.param)


@pytest.mark.docker
async def test_real_container_stdout_stderr_and_long_line(
    logs_from: str, client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers(
        "echo out1; echo err1 >&2; printf 'long:%020000d:end\\n' 0; echo out2; sleep 60"
    )
    rec = Recorder()
    source = make_source(
        client, [rec], tmp_path, logs_from=logs_from, relabel_rules=StreamLabel()
    )
    source.update_targets([real_target(container)])
    async with running(source):
        # stdout and stderr of one read go out as two sends: wait for both.
        await rec.wait_for(lambda: "out2" in rec.lines() and "err1" in rec.lines())
    long = "long:" + "0" * 20000 + ":end"
    assert rec.lines("stdout") == ["out1", long, "out2"]
    assert rec.lines("stderr") == ["err1"]
    # One stream per call: in a combined read, err1 can fall between the long
    # line's pieces (16 KiB without a newline, then the rest) and join the first.
    docker_ts: dict[bytes, int] = {}
    for stdout in (True, False):
        raw = await to_thread(
            container.logs, timestamps=True, stdout=stdout, stderr=not stdout
        )
        for row in raw.splitlines():
            stamp, _, text = row.partition(b" ")
            docker_ts[text] = parse_timestamp(stamp)
    got_ts = {e.line.encode(): e.timestamp_ns for b in rec.batches for e in b.entries}
    for text in (b"out1", b"err1", b"out2"):
        assert got_ts[text] == docker_ts[text]


@pytest.mark.docker
async def test_real_tty_container(
    logs_from: str, client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("echo tty1; echo tty2 >&2; sleep 60", tty=True)
    rec = Recorder()
    source = make_source(
        client, [rec], tmp_path, logs_from=logs_from, relabel_rules=StreamLabel()
    )
    source.update_targets([real_target(container)])
    async with running(source):
        await rec.wait_for(lambda: len(rec.lines()) == 2)
    assert rec.lines("stdout") == ["tty1", "tty2"]


@pytest.mark.docker
async def test_source_restart_resumes_without_duplicates_or_loss(
    logs_from: str, client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers(
        "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo n$i; sleep 0.005; done"
    )
    want = [f"n{i}" for i in range(1, 401)]
    first = Recorder()
    source = make_source(client, [first], tmp_path, logs_from=logs_from)
    source.update_targets([real_target(container)])
    async with running(source):
        await first.wait_for(lambda: len(first.lines()) >= 50)
    assert 50 <= len(first.lines()) < 400, "the restart must happen mid-stream"
    second = Recorder()
    registry = CollectorRegistry()
    source = make_source(
        client, [second], tmp_path, logs_from=logs_from, registry=registry
    )
    source.update_targets([real_target(container)])
    async with running(source):
        await second.wait_for(lambda: "n400" in second.lines())
    assert first.lines() + second.lines() == want
    # resumed with since + tail (no full scan by dockerd), checked against the probe
    resumes = "minilog_source_docker_resumes_total"
    mode = "window" if logs_from == "api" else "file"
    assert registry.get_sample_value(resumes, {"mode": mode}) == 1


@pytest.mark.docker
async def test_stopped_then_restarted_container_resumes_from_its_position(
    logs_from: str, client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("echo run; echo done")
    rec = Recorder()
    source = make_source(
        client, [rec], tmp_path, logs_from=logs_from, inspect_interval_s=0.2
    )
    source.update_targets([real_target(container)])
    async with running(source):
        await rec.wait_for(lambda: len(rec.lines()) == 2)
        await to_thread(container.wait)
        await eventually(lambda: not source.targets_info()[0].is_running)
        await to_thread(container.start)
        source.poke(container.id)
        await rec.wait_for(lambda: len(rec.lines()) == 4)
        await to_thread(container.wait)
        await eventually(lambda: not source.targets_info()[0].is_running)
    assert rec.lines() == ["run", "done", "run", "done"]
    saved = Positions(tmp_path / "positions.json").get(container.id)
    assert saved is not None
    assert saved.ts_ns == rec.batches[-1].entries[-1].timestamp_ns


@pytest.mark.docker
async def test_abandoned_deliveries_are_read_again_on_next_start(
    logs_from: str, client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("echo a; sleep 0.3; echo b; sleep 60")  # two reads
    holder = Recorder(settle=False)
    # One delivery per read: the reads are settled one by one.
    source = make_source(
        client, [holder], tmp_path, logs_from=logs_from, join_window_s=0
    )
    source.update_targets([real_target(container)])
    async with running(source):
        await holder.wait_for(lambda: len(holder.lines()) == 2)
        assert [b.entries[0].line for b in holder.batches] == ["a", "b"]
        holder.batches[0].settle()
        for b in holder.batches[1:]:
            b.settle(abandoned=True)  # what a writer does with entries left at shutdown
    rec = Recorder()
    source = make_source(client, [rec], tmp_path, logs_from=logs_from)
    source.update_targets([real_target(container)])
    async with running(source):
        await rec.wait_for(lambda: "b" in rec.lines())
    assert holder.lines()[:1] + rec.lines() == ["a", "b"]


@pytest.mark.docker
async def test_stopped_container_leaving_discovery_is_read_once_then_dropped(
    logs_from: str, client: Any, docker_client: Any, tmp_path: Path
) -> None:
    from docker_helpers import TEST_IMAGE, TEST_LABEL

    container = await to_thread(
        docker_client.containers.create,
        TEST_IMAGE,
        ["sh", "-c", "echo last1; echo last2"],
        labels={TEST_LABEL: "1"},
        network_mode="none",
    )
    try:
        rec = Recorder()
        source = make_source(
            client, [rec], tmp_path, logs_from=logs_from, inspect_interval_s=30
        )
        source.update_targets([real_target(container)])
        async with running(source):
            await eventually(lambda: bool(source.targets_info()))
            await to_thread(container.start)
            await to_thread(container.wait)
            source.update_targets([])  # discovery dropped the exited container
            await rec.wait_for(lambda: len(rec.lines()) == 2)
            await eventually(lambda: not source.targets_info())
        assert rec.lines() == ["last1", "last2"]
        assert Positions(tmp_path / "positions.json").get(container.id) is not None
    finally:
        await to_thread(container.remove, force=True)


@pytest.mark.docker
async def test_unreadable_logging_driver_is_reported_not_retried_hot(
    logs_from: str, client: Any, docker_client: Any, tmp_path: Path
) -> None:
    from docker_helpers import TEST_IMAGE, TEST_LABEL

    container = await to_thread(
        docker_client.containers.run,
        TEST_IMAGE,
        ["sh", "-c", "echo invisible; sleep 60"],
        labels={TEST_LABEL: "1"},
        network_mode="none",
        log_config={"type": "none"},
        detach=True,
    )
    try:
        source = make_source(client, [Recorder()], tmp_path, logs_from=logs_from)
        source.update_targets([real_target(container)])
        async with running(source):
            # The API says the driver cannot be read; logs_from = "file" says there
            # is no json-file to read.
            said = (
                "does not support reading" if logs_from == "api" else "not a readable"
            )
            await eventually(lambda: said in source.targets_info()[0].last_error)
            assert not source.targets_info()[0].is_running
    finally:
        await to_thread(container.remove, force=True)


@pytest.mark.docker
async def test_backpressure_with_real_container(
    logs_from: str, client: Any, containers: Any, tmp_path: Path
) -> None:
    container = containers("echo one; sleep 0.3; echo two; echo three; sleep 60")
    blocking = Blocking()
    source = make_source(client, [blocking], tmp_path, logs_from=logs_from)
    source.update_targets([real_target(container)])
    async with running(source):
        await blocking.entered.wait()
        read_while_blocked = source.targets_info()[0].read_position_ns

        def docker_has_all() -> bool:
            return b"three" in container.logs()

        # Docker has no "line written" event: poll its log until it holds every line.
        while not await to_thread(docker_has_all):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # Docker holds "two" and "three"; the tailer, stuck in send, has not read them.
        assert source.targets_info()[0].read_position_ns == read_while_blocked
        assert blocking.batches == []
        blocking.release.set()
        await blocking.wait_for(lambda: len(blocking.lines()) == 3)
        assert blocking.lines() == ["one", "two", "three"]
        assert source.targets_info()[0].read_position_ns > read_while_blocked


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run_and_close(fn: Callable[[Any], Any]) -> Any:
    """One SDK call on a client of its own, closed after, so its sockets are not
    counted."""
    import docker

    sdk = docker.from_env()
    try:
        return fn(sdk)
    finally:
        sdk.close()


async def _start_batch(n: int, tag: str) -> list[str]:
    from docker_helpers import start_container

    def start(i: int) -> str:
        return str(
            _run_and_close(
                lambda sdk: start_container(sdk, f"echo {tag}-{i}; sleep 60").id
            )
        )

    return list(await asyncio.gather(*(to_thread(start, i) for i in range(n))))


async def _remove_batch(ids: list[str]) -> None:
    def remove(cid: str) -> None:
        _run_and_close(lambda sdk: sdk.api.remove_container(cid, force=True))

    await asyncio.gather(*(to_thread(remove, cid) for cid in ids))


@pytest.mark.docker
async def test_fifty_containers_leak_no_tasks_or_fds(
    logs_from: str, client: Any, tmp_path: Path
) -> None:
    # Warm the thread pool first: its threads are not ours.
    await _remove_batch(await _start_batch(10, "warm"))
    from minilog.docker.client import DockerClient

    baseline_fds = _fd_count()
    baseline_tasks = len(asyncio.all_tasks())
    own_client = DockerClient()
    rec = Recorder()
    source = make_source(own_client, [rec], tmp_path, logs_from=logs_from)
    started: list[str] = []
    try:
        async with running(source):
            for round_ in range(5):
                batch = await _start_batch(10, f"r{round_}")
                started.extend(batch)
                source.update_targets([real_target(cid) for cid in batch])
                want = 10 * (round_ + 1)
                await rec.wait_for(lambda want=want: len(rec.lines()) == want)  # type: ignore[misc]
                assert len(source.targets_info()) == 10
                await _remove_batch(batch)
                await eventually(lambda: not source.targets_info())
                source.update_targets([])
                # only run() and its stale-position collector are left, and on the
                # file path the inotify reader the tailers share
                extra = 2 if logs_from == "api" else 3
                await eventually(
                    lambda: len(asyncio.all_tasks()) <= baseline_tasks + extra  # noqa: B023
                )
        assert len(asyncio.all_tasks()) == baseline_tasks
        assert sorted(rec.lines()) == sorted(
            f"r{r}-{i}" for r in range(5) for i in range(10)
        )
        await own_client.aclose()
        assert _fd_count() <= baseline_fds
    finally:
        await own_client.aclose()
        with contextlib.suppress(Exception):
            await _remove_batch(started)
