"""Shared helpers of the ``loki.source.docker`` tests (``tests/docker/``): a fake Docker
API, frames, targets, a recording receiver."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.docker.frames import parse_timestamp
from minilog.docker.positions import Positions
from minilog.docker.source import DockerSource
from minilog.errors import DockerError
from minilog.labels import DOCKER_CONTAINER_ID, DOCKER_LOG_STREAM
from minilog.model import StreamBatch

__all__ = [
    "CID",
    "DATA",
    "MIXED_TS",
    "T0",
    "Blocking",
    "FakeDocker",
    "Recorder",
    "StreamLabel",
    "eventually",
    "frame",
    "line",
    "make_source",
    "running",
    "target",
]

DATA = Path(__file__).resolve().parent / "data" / "docker"
MIXED_TS = (DATA / "mixed-logs-timestamps.bin").read_bytes()
CID = "c" * 64


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def line(ts_ns: int, text: str, stream: int = 1) -> bytes:
    sec, frac = divmod(ts_ns, 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
    return frame(stream, f"{stamp} {text}\n".encode())


T0 = 1_795_753_222_000_000_000


class StreamLabel:
    """A relabel rule set: copies the log stream into ``stream`` (legacy names)."""

    def process(self, labels: dict[str, str]) -> dict[str, str] | None:
        if labels.get("drop") == labels[DOCKER_LOG_STREAM]:
            return None
        return {**labels, "stream": labels[DOCKER_LOG_STREAM]}


class Recorder:
    """A LogsReceiver that records batches and, if ``settle``, settles them at once."""

    def __init__(self, *, settle: bool = True) -> None:
        self.settle = settle
        self.batches: list[StreamBatch] = []
        self._changed = asyncio.Event()

    async def send(self, batch: StreamBatch) -> None:
        self.batches.append(batch)
        if self.settle:
            batch.settle()
        self._changed.set()

    def lines(self, stream: str | None = None) -> list[str]:
        return [
            e.line
            for b in self.batches
            if stream is None or b.labels.get("stream") == stream
            for e in b.entries
        ]

    async def wait_for(self, cond: Callable[[], bool], limit_s: float = 20) -> None:
        async with asyncio.timeout(limit_s):
            while not cond():
                self._changed.clear()
                await self._changed.wait()


class Blocking(Recorder):
    """A LogsReceiver whose ``send`` waits until ``release`` is set: backpressure."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def send(self, batch: StreamBatch) -> None:
        self.entered.set()
        await self.release.wait()
        await super().send(batch)


class FakeDocker:
    """A DockerLogsAPI over a log kept in ``chunks``; a followed stream stays open until
    ``end`` is set.

    Like Docker, ``since`` keeps the chunks whose (first) timestamp is not before it,
    and a read starts again from the beginning of the log. An exception in ``chunks``
    breaks the stream once, where it stands.
    """

    def __init__(
        self,
        chunks: list[bytes | BaseException],
        *,
        running: bool = True,
        tty: bool = False,
    ) -> None:
        self.chunks = chunks
        self.state: dict[str, Any] | None = {
            "Running": running,
            "FinishedAt": "0001-01-01T00:00:00Z",
        }
        self.tty = tty
        # (since, tail) of each follow request, and of each non-follow probe
        self.log_calls: list[tuple[str | None, str | None]] = []
        self.probe_calls: list[tuple[str | None, str | None]] = []
        self.on_yield: Callable[[bool], None] | None = None
        self.end = asyncio.Event()
        self.fail_inspect: DockerError | None = None
        self.known = {CID}
        self.raised: list[BaseException] = []
        self.inspects = 0

    async def inspect(self, container_id: str) -> dict[str, Any]:
        self.inspects += 1
        if self.fail_inspect is not None:
            raise self.fail_inspect
        if self.state is None or container_id not in self.known:
            raise DockerError("No such container", status=404)
        return {
            "Id": container_id,
            "State": dict(self.state),
            "Config": {"Tty": self.tty},
        }

    async def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        stdout: bool = True,
        stderr: bool = True,
        timestamps: bool = True,
        since: str | None = None,
        tail: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        (self.log_calls if follow else self.probe_calls).append((since, tail))
        since_ns = 0
        if since is not None:
            sec, _, frac = since.partition(".")
            since_ns = int(sec) * 10**9 + int(frac.ljust(9, "0"))
        records = list(self.chunks)
        if tail is not None:
            kept = {
                id(c)
                for c in [c for c in records if isinstance(c, bytes)][-int(tail) :]
            }
            records = [c for c in records if not isinstance(c, bytes) or id(c) in kept]
        for chunk in records:
            if isinstance(chunk, BaseException):
                if follow and chunk not in self.raised:
                    self.raised.append(chunk)
                    raise chunk
                continue
            if since_ns and parse_timestamp(chunk[8:].split(b" ", 1)[0]) < since_ns:
                continue
            yield chunk
            if self.on_yield is not None:
                self.on_yield(follow)
        if follow and self.state is not None and self.state["Running"]:
            await self.end.wait()  # a stopped container's stream ends at once


def target(cid: str = CID, **extra: str) -> dict[str, str]:
    """A discovery target; ``job`` gives it a label that survives the ``__`` cleanup."""
    return {
        DOCKER_CONTAINER_ID: cid,
        "__meta_docker_container_name": "/app",
        "job": "j",
        **extra,
    }


@contextlib.asynccontextmanager
async def running(source: DockerSource) -> AsyncGenerator[DockerSource, None]:
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        await source.aclose(drain_timeout_s=1)
        assert task.done()


def make_source(
    client: Any,
    receivers: list[Any],
    tmp_path: Path,
    **kwargs: Any,
) -> DockerSource:
    return DockerSource(
        client,
        receivers,
        positions=kwargs.pop("positions", None)
        or Positions(tmp_path / "positions.json"),
        **{"registry": CollectorRegistry(), **kwargs},
    )


async def eventually(cond: Callable[[], bool], limit_s: float = 20) -> None:
    """Poll a condition that has no event of its own (task exit, file content)."""
    async with asyncio.timeout(limit_s):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
