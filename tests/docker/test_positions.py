"""Tests for minilog.docker.positions: format, atomic save with a backup, damaged files
and failing saves (a real full and read-only tmpfs where root may mount one)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fs_helpers import fill, fs_fault_unavailable_reason, remount, tiny_tmpfs

from minilog.docker.positions import Position, Positions
from minilog.positions import BACKUP_SUFFIX, CORRUPT_INFIX

CID = "a" * 64
CID2 = "b" * 64


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The messages ``minilog.docker.positions`` logged at warning level or above."""
    caplog.set_level(logging.INFO, logger="minilog.positions")

    def get() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "minilog.positions" and r.levelno >= logging.WARNING
        ]

    return get


def saved_twice(path: Path) -> tuple[bytes, bytes]:
    """Save two states; returns (older, newer) file contents."""
    pos = Positions(path)
    pos.set(CID, 100, 1, '{job="a"}')
    pos.save()
    older = path.read_bytes()
    pos.set(CID, 200, 2, '{job="a"}')
    pos.set(CID2, 50)
    pos.save()
    return older, path.read_bytes()


def test_missing_file_loads_empty(tmp_path: Path) -> None:
    pos = Positions(tmp_path / "none" / "positions.json")
    assert pos.ids() == []
    assert pos.get(CID) is None
    assert not pos.dirty
    assert pos.recovery == ""


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


def test_each_save_keeps_the_previous_file_as_a_private_backup(tmp_path: Path) -> None:
    # Behaviour change: the directory now holds positions.json.bak next to the file.
    path = tmp_path / "positions.json"
    older, newer = saved_twice(path)
    backup = tmp_path / ("positions.json" + BACKUP_SUFFIX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["positions.json", "positions.json.bak"]
    assert backup.read_bytes() == older
    assert path.read_bytes() == newer
    assert older != newer


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


# ------------------------------------------------------------------ damaged files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "garbage": lambda p: p.write_bytes(b"\x00\xff\x13garbage{{"),
    "wrong-shape-list": lambda p: p.write_bytes(b"[1, 2]"),
    "wrong-shape-entry": lambda p: p.write_bytes(b'{"x": {"ts_ns": "12"}}'),
    "wrong-shape-float": lambda p: p.write_bytes(
        b'{"x": {"ts_ns": 1, "count_at_ts": 1.5}}'
    ),
    "negative": lambda p: p.write_bytes(b'{"x": {"ts_ns": -1}}'),
    "empty": lambda p: p.write_bytes(b""),
    "whitespace": lambda p: p.write_bytes(b"\n  \n"),
    "directory": _directory,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_is_set_aside_and_the_backup_used(
    tmp_path: Path, damage: str, warnings: Callable[[], list[str]]
) -> None:
    path = tmp_path / "positions.json"
    older, _ = saved_twice(path)
    DAMAGE[damage](path)
    damaged = None if path.is_dir() else path.read_bytes()

    pos = Positions(path)

    # The backup (one save older) is what the source resumes from.
    assert pos.ids() == [CID]
    assert pos.get(CID) == Position(100, 1, '{job="a"}')
    # The damaged file is kept, byte for byte, under a name that says so.
    (aside,) = [p for p in tmp_path.iterdir() if CORRUPT_INFIX in p.name]
    assert aside.name.startswith("positions.json.corrupt-")
    if damaged is None:
        assert (aside / "inside").read_text() == "x"
    else:
        assert aside.read_bytes() == damaged
    # Said once, with the path, what was done and what it means.
    (message,) = warnings()
    assert str(path) in message and str(aside) in message
    assert "damaged" in message and "backup" in message
    assert pos.recovery == message
    # The recovered state was written at once; the good backup was not overwritten.
    assert Positions(path).get(CID) == Position(100, 1, '{job="a"}')
    assert (tmp_path / "positions.json.bak").read_bytes() == older
    assert len(warnings()) == 1


def test_a_damaged_file_without_backup_starts_from_scratch(
    tmp_path: Path, warnings: Callable[[], list[str]]
) -> None:
    path = tmp_path / "positions.json"
    path.write_bytes(b'{"' + CID.encode() + b'": {"ts_n')
    pos = Positions(path)
    assert pos.ids() == []
    (message,) = warnings()
    assert "no backup" in message
    assert "read from the start of its Docker log" in message
    assert json.loads(path.read_text()) == {}


def test_a_damaged_backup_too_starts_from_scratch(
    tmp_path: Path, warnings: Callable[[], list[str]]
) -> None:
    path = tmp_path / "positions.json"
    saved_twice(path)
    path.write_bytes(b"{")
    (tmp_path / "positions.json.bak").write_bytes(b"")
    pos = Positions(path)
    assert pos.ids() == []
    (message,) = warnings()
    assert "backup" in message and "damaged too" in message


def test_an_unreadable_file_is_damaged_too(
    tmp_path: Path, warnings: Callable[[], list[str]]
) -> None:
    # Root reads any file: the permission error is injected at the read boundary.
    path = tmp_path / "positions.json"
    saved_twice(path)

    def read_bytes(file: Path) -> bytes:
        if file == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return file.read_bytes()

    pos = Positions(path, read=read_bytes)
    assert pos.get(CID) == Position(100, 1, '{job="a"}')
    (message,) = warnings()
    assert "Permission denied" in message


def test_a_deleted_file_resets_even_with_a_backup(
    tmp_path: Path, warnings: Callable[[], list[str]]
) -> None:
    path = tmp_path / "positions.json"
    saved_twice(path)
    path.unlink()
    assert Positions(path).ids() == []
    (message,) = warnings()
    assert "does not exist" in message and "ignored" in message


def test_two_damages_in_one_second_keep_both_copies(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    for content in (b"{1", b"{2"):
        path.write_bytes(content)
        Positions(path)
    kept = sorted(p.read_bytes() for p in tmp_path.iterdir() if CORRUPT_INFIX in p.name)
    assert kept == [b"{1", b"{2"]


# ------------------------------------------------------------------ failing saves


def test_failed_save_keeps_data_dirty_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    results: list[OSError | None] = []
    pos = Positions(path, on_save=results.append)
    pos.set(CID, 2)
    path.mkdir()  # the rename onto a directory fails, as a full or read-only disk would
    with pytest.raises(OSError):
        pos.save()
    assert pos.dirty
    assert isinstance(pos.save_error, OSError)
    assert os.listdir(tmp_path) == ["positions.json"]
    path.rmdir()
    pos.save()
    assert pos.save_error is None
    assert [type(r) for r in results] == [IsADirectoryError, type(None)]
    assert Positions(path).get(CID) == Position(2)


async def test_flusher_saves_dirty_positions(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    saved = asyncio.Event()
    pos = Positions(path, on_save=lambda exc: saved.set() if exc is None else None)
    task = asyncio.create_task(pos.run_flusher(interval_s=0.01))
    try:
        pos.set(CID, 42, 1)
        async with asyncio.timeout(5):
            await saved.wait()
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


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    reason = fs_fault_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with tiny_tmpfs(tmp_path / "mnt") as mount:
        yield mount


async def test_a_full_then_read_only_disk_is_retried_said_once_and_recovers(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="minilog.positions")
    path = tmpfs / "positions.json"
    results: asyncio.Queue[OSError | None] = asyncio.Queue()
    pos = Positions(path, on_save=results.put_nowait)
    pos.set(CID, 1)
    pos.save()
    assert results.get_nowait() is None
    filler = fill(tmpfs)
    flusher = asyncio.create_task(pos.run_flusher())
    try:
        pos.set(CID, 2)
        # Three failing attempts (one a second): one warning for all of them.
        for _ in range(3):
            exc = await asyncio.wait_for(results.get(), 10)
            assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        filler.unlink()
        assert await asyncio.wait_for(results.get(), 10) is None
        assert Positions(path).get(CID) == Position(2)

        remount(tmpfs, read_only=True)
        try:
            pos.set(CID, 3)
            exc = await asyncio.wait_for(results.get(), 10)
            assert isinstance(exc, OSError) and exc.errno == errno.EROFS
        finally:
            remount(tmpfs, read_only=False)
        assert await asyncio.wait_for(results.get(), 10) is None
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
    assert Positions(path).get(CID) == Position(3)
    messages = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "minilog.positions"
    ]
    assert [level for level, _ in messages] == ["WARNING", "INFO", "WARNING", "INFO"]
    assert "No space left on device" in messages[0][1]
    assert "Read-only file system" in messages[2][1]
    assert all(str(path) in text for _, text in messages)
    # No temporary file was left behind by the failed attempts.
    assert sorted(os.listdir(tmpfs)) == ["positions.json", "positions.json.bak"]
