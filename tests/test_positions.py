"""Tests for minilog.positions: format, atomic save, tolerant load, corrupt files."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from minilog.errors import ConfigError
from minilog.positions import Position, Positions

CID = "a" * 64


def test_missing_file_loads_empty(tmp_path: Path) -> None:
    pos = Positions(tmp_path / "none" / "positions.json")
    assert pos.ids() == []
    assert pos.get(CID) is None
    assert not pos.dirty


def test_save_and_reload_keeps_nanoseconds(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "positions.json"
    pos = Positions(path)
    pos.set(CID, 1795753222054898543, 3, '{job="x"}')
    pos.set("b" * 64, 7)
    assert pos.dirty
    pos.save()
    assert not pos.dirty
    again = Positions(path)
    assert again.get(CID) == Position(1795753222054898543, 3, '{job="x"}')
    assert again.get("b" * 64) == Position(7, 0, "")
    on_disk = json.loads(path.read_text())
    assert on_disk[CID] == {
        "ts_ns": 1795753222054898543,
        "count_at_ts": 3,
        "labels": '{job="x"}',
    }


def test_file_mode_is_private_and_no_temp_files_remain(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    pos = Positions(path)
    pos.set(CID, 1)
    pos.save()
    pos.set(CID, 2)
    pos.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["positions.json"]


def test_remove_deletes_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    pos = Positions(path)
    pos.set(CID, 5)
    pos.save()
    pos.remove(CID)
    assert pos.dirty
    pos.save()
    assert Positions(path).get(CID) is None


def test_setting_the_same_value_does_not_dirty(tmp_path: Path) -> None:
    pos = Positions(tmp_path / "p.json")
    pos.set(CID, 5, 1)
    pos.save()
    pos.set(CID, 5, 1)
    assert not pos.dirty
    pos.remove("unknown")
    assert not pos.dirty


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2]",
        b'{"x": 5}',
        b'{"x": {"ts_ns": "12"}}',
        b'{"x": {"ts_ns": 1, "count_at_ts": 1.5}}',
    ],
)
def test_corrupt_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "positions.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="positions file"):
        Positions(path)


def test_empty_file_loads_empty(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    path.write_bytes(b"")
    assert Positions(path).ids() == []


def test_failed_save_keeps_data_dirty_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    pos = Positions(path)
    pos.set(CID, 2)
    path.mkdir()  # the rename onto a directory fails, as a full or read-only disk would
    with pytest.raises(OSError):
        pos.save()
    assert pos.dirty
    assert os.listdir(tmp_path) == ["positions.json"]
    path.rmdir()
    pos.save()
    assert Positions(path).get(CID) == Position(2)


async def test_flusher_saves_dirty_positions(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    pos = Positions(path)
    task = asyncio.create_task(pos.run_flusher(interval_s=0.01))
    try:
        pos.set(CID, 42, 1)
        async with asyncio.timeout(5):
            # The flusher signals nothing: poll the file, the one observable effect.
            while pos.dirty or not path.exists():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert Positions(path).get(CID) == Position(42, 1)


async def test_asave_writes_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    pos = Positions(path)
    pos.set(CID, 9)
    await asyncio.gather(pos.asave(), pos.asave())
    assert Positions(path).get(CID) == Position(9)
