"""A json-file cut short under its reader (Docker 19.03's rotation with
``max-file=1``, and Docker 23's fallback when a rotation fails: the live file is
reopened with ``O_TRUNC``): it is read again from its start, with no parsing error
from the record the truncation cut.

The tailer reads a file of the test's own here (a fake Engine answers ``inspect``
with it as ``LogPath``): truncating is then in the test's hands, not Docker's.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from source_helpers import Recorder, make_source, running

from minilog.docker.logfiles import open_from
from minilog.labels import DOCKER_CONTAINER_ID

__all__: list[str] = []

CID = "c" * 64


def record(i: int) -> bytes:
    stamp = f"2026-12-06T10:00:{i // 1000:02d}.{i % 1000:03d}000000Z"
    return orjson.dumps({"log": f"line {i}\n", "stream": "stdout", "time": stamp})


def records(first: int, last: int) -> bytes:
    return b"".join(record(i) + b"\n" for i in range(first, last + 1))


def lines(first: int, last: int) -> list[str]:
    return [f"line {i}" for i in range(first, last + 1)]


class FileEngine:
    """The part of the Engine API a tailer uses: ``inspect`` names ``log`` as the
    running container's json-file; the API's logs are never asked for."""

    def __init__(self, log: Path) -> None:
        self.log = log

    async def inspect(self, container_id: str) -> dict[str, Any]:
        return {
            "Id": container_id,
            "LogPath": str(self.log),
            "State": {"Running": True},
            "Config": {"Tty": False},
            "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {}}},
        }

    def logs(self, container_id: str, **kwargs: Any) -> Any:
        raise AssertionError("the file is readable: the API is not asked")


def has(rec: Recorder, line: str) -> bool:
    return line in rec.lines()


def test_a_file_shorter_than_what_was_read_or_with_another_start_is_truncated(
    tmp_path: Path,
) -> None:
    log = tmp_path / "c-json.log"
    log.write_bytes(records(1, 5))
    (f,), _ = open_from(str(log), 0)
    try:
        assert f.read(1 << 20) == records(1, 5)
        with log.open("ab") as out:
            out.write(records(6, 6))
        assert not f.truncated()  # it grew: read on
        with log.open("r+b") as out:
            out.truncate(0)
            out.write(records(7, 7))
        assert f.truncated()  # shorter than what was read
        with log.open("r+b") as out:
            out.truncate(0)
            out.write(records(8, 30))
        assert f.truncated()  # longer again, but it starts with another record
    finally:
        f.close()


async def test_a_file_truncated_in_place_is_read_again_from_its_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "c-json.log"
    log.write_bytes(records(1, 10))
    rec = Recorder()
    registry = CollectorRegistry()
    source = make_source(
        FileEngine(log), [rec], tmp_path, logs_from="file", registry=registry
    )
    source.update_targets([{DOCKER_CONTAINER_ID: CID, "job": "t"}])
    async with running(source):
        await rec.wait_for(functools.partial(has, rec, "line 10"))
        with log.open("ab") as out:  # a record cut by the truncation that follows
            out.write(record(11)[:20])
        await rec.wait_for(lambda: os.path.getsize(log) == len(records(1, 10)) + 20)
        with log.open("r+b") as out:
            out.truncate(0)
            out.write(records(12, 14))
        await rec.wait_for(functools.partial(has, rec, "line 14"))
        # Cut and grown back past where the reader was, in one go.
        with log.open("r+b") as out:
            out.truncate(0)
            out.write(records(15, 60))
        await rec.wait_for(functools.partial(has, rec, "line 60"))
        assert source.targets_info()[0].reading_from == "file"
    assert rec.lines() == lines(1, 10) + lines(12, 60)
    errors = "loki_source_docker_target_parsing_errors_total"
    assert registry.get_sample_value(errors) == 0
