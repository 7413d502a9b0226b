"""Shared helpers of the file source tests (``tests/files/``): a source over a
directory, a recording receiver, waiting on positions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from minilog.files.positions import FilePositions
from minilog.files.source import FileSource
from minilog.files.tailer import FILENAME_LABEL

__all__ = [
    "FILENAME_LABEL",
    "make_file_source",
    "running_files",
    "sample",
    "texts",
    "until",
]


def make_file_source(receivers: list[Any], tmp_path: Path, **kwargs: Any) -> FileSource:
    registry = kwargs.pop("registry", None) or CollectorRegistry()
    positions = kwargs.pop("positions", None) or FilePositions(
        tmp_path / "data" / "positions.json"
    )
    kwargs.setdefault("min_poll_s", 0.05)
    kwargs.setdefault("max_poll_s", 0.05)
    return FileSource(receivers, positions=positions, registry=registry, **kwargs)


@contextlib.asynccontextmanager
async def running_files(source: FileSource) -> AsyncGenerator[FileSource, None]:
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        await source.aclose(drain_timeout_s=1)
        assert task.done()


def texts(recorder: Any, path: Path | None = None) -> list[str]:
    """Lines received, in order (of ``path`` only when given)."""
    return [
        e.line
        for b in recorder.batches
        if path is None or b.labels.get(FILENAME_LABEL) == str(path)
        for e in b.entries
    ]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def until(cond: Callable[[], bool], limit_s: float = 10) -> None:
    """Poll a condition that has no event of its own (file content)."""
    async with asyncio.timeout(limit_s):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
