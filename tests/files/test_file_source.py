"""``loki.source.file``'s tailing: what happens to a file under its path, and what
reaches the receiver."""

from __future__ import annotations

import bz2
import gzip
import os
import zlib
from pathlib import Path

import pytest
from file_helpers import (
    FILENAME_LABEL,
    make_file_source,
    running_files,
    sample,
    texts,
    until,
)
from prometheus_client import CollectorRegistry
from source_helpers import Blocking, Recorder

from minilog.files.positions import FilePositions


def _rewrite_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def _append(path: Path, data: str | bytes) -> None:
    with open(path, "ab") as f:
        f.write(data.encode() if isinstance(data, str) else data)


async def test_lines_carry_filename_and_the_public_labels(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    source.update_targets(
        [{"__path__": str(log), "job": "app", "__meta_x": "internal"}]
    )
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 2)
        _append(log, "three\n")
        await rec.wait_for(lambda: len(texts(rec)) == 3)
    assert texts(rec) == ["one", "two", "three"]
    assert rec.batches[0].labels == {"job": "app", FILENAME_LABEL: str(log)}
    stamps = [e.timestamp_ns for b in rec.batches for e in b.entries]
    assert stamps == sorted(set(stamps)), "each line its own, increasing timestamp"


async def test_a_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("whole\nhal")
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: texts(rec) == ["whole"])
        _append(log, "f\r\n")
        await rec.wait_for(lambda: len(texts(rec)) == 2)
    assert texts(rec) == ["whole", "half"]
    # The position never covered the unfinished line.
    saved = FilePositions(tmp_path / "data" / "positions.json").get(str(log))
    assert saved is not None and saved.offset == log.stat().st_size


async def test_rotation_by_rename_and_create_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("a1\na2\n")
    rec = Blocking()
    rec.release.set()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 2)
        rec.release.clear()
        _append(log, "a3\n")
        await rec.entered.wait()  # the tailer is stuck sending a3
        # Rotated while the tailer is behind: more lines in the old file, then a
        # new one.
        _append(log, "a4\npart")
        os.rename(log, tmp_path / "app.log.1")
        log.write_text("b1\nb2\n")
        rec.release.set()
        await rec.wait_for(lambda: len(texts(rec)) == 7)
    assert texts(rec) == ["a1", "a2", "a3", "a4", "part", "b1", "b2"]


async def test_copytruncate_reads_the_file_again_from_its_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("old-1\nold-2\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 2)
        (tmp_path / "app.log.1").write_bytes(log.read_bytes())
        os.truncate(log, 0)
        await until(lambda: source.targets_info()[0].read_offset == 0)
        _append(log, "new-1\n")
        await rec.wait_for(lambda: len(texts(rec)) == 3)
    assert texts(rec) == ["old-1", "old-2", "new-1"]


async def test_truncated_and_rewritten_longer_in_place_is_seen(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("first\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path, max_poll_s=0.05)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 1)
        # Same inode, longer than before: only the head's signature tells.
        _rewrite_in_place(log, b"second line, longer\n")
        await rec.wait_for(lambda: len(texts(rec)) == 2)
    assert texts(rec) == ["first", "second line, longer"]


async def test_a_file_deleted_while_read_is_read_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("l1\n")
    rec = Blocking()
    rec.release.set()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 1)
        rec.release.clear()
        _append(log, "l2\n")
        await rec.entered.wait()
        _append(log, "l3\nl4 no newline")
        log.unlink()
        rec.release.set()
        await rec.wait_for(lambda: len(texts(rec)) == 4)
        log.write_text("again\n")  # a new file under the same name, later
        await rec.wait_for(lambda: len(texts(rec)) == 5)
    assert texts(rec) == ["l1", "l2", "l3", "l4 no newline", "again"]


async def test_a_file_replaced_under_the_same_name_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("v1-a\nv1-b\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 2)
        tmp = tmp_path / "app.log.tmp"
        tmp.write_text("v2-a\nv2-b\nv2-c\n")
        os.replace(tmp, log)  # a new inode under the name, longer than the old
        await rec.wait_for(lambda: len(texts(rec)) == 5)
    assert texts(rec) == ["v1-a", "v1-b", "v2-a", "v2-b", "v2-c"]


async def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"ok\nbad \xff\xfe byte\n")
    rec = Recorder()
    registry = CollectorRegistry()
    source = make_file_source([rec], tmp_path, registry=registry)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 2)
    assert texts(rec) == ["ok", "bad \ufffd\ufffd byte"]
    assert (
        sample(
            registry,
            "minilog_source_file_mutated_lines_total",
            reason="invalid_encoding",
        )
        == 1
    )
    assert sample(registry, "loki_source_file_read_lines_total", path=str(log)) == 0, (
        "the per-path series goes with its tailer, as in Alloy"
    )


@pytest.mark.parametrize(
    ("encoding", "data", "expected"),
    [
        ("UTF-16LE", "é1\r\nü2\n".encode("utf-16-le"), ["é1", "ü2"]),
        ("UTF-16", "a\nb\n".encode("utf-16-be"), ["a", "b"]),
        # A byte order mark wins over the configured encoding (Alloy).
        ("", b"\xff\xfe" + "x\ny\n".encode("utf-16-le"), ["x", "y"]),
        ("windows-1252", "caf\u00e9 \u20ac\n".encode("cp1252"), ["café €"]),
        ("ISO-8859-1", b"\xe9t\xe9\n", ["été"]),
    ],
)
async def test_encodings(
    tmp_path: Path, encoding: str, data: bytes, expected: list[str]
) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(data)
    rec = Recorder()
    source = make_file_source([rec], tmp_path, encoding=encoding)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == len(expected))
    assert texts(rec) == expected


def test_an_unknown_encoding_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        make_file_source([], tmp_path, encoding="no-such-charset")


async def test_tail_from_end_skips_what_is_there(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("old-1\nold-2\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path, tail_from_end=True)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await until(
            lambda: bool(source.targets_info()) and source.targets_info()[0].is_running
        )
        _append(log, "new\n")
        await rec.wait_for(lambda: len(texts(rec)) == 1)
    assert texts(rec) == ["new"]


@pytest.mark.parametrize(
    ("fmt", "compress"),
    [("gz", gzip.compress), ("bz2", bz2.compress), ("z", zlib.compress)],
)
async def test_decompression_reads_a_file_once(
    tmp_path: Path, fmt: str, compress: object
) -> None:
    assert callable(compress)
    log = tmp_path / f"app.log.{fmt}"
    log.write_bytes(compress(b"c1\nc2\nlast without newline"))
    rec = Recorder()
    source = make_file_source([rec], tmp_path, compression=fmt)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 3)
    assert texts(rec) == ["c1", "c2", "last without newline"]
    # Restarted: the position (in decompressed bytes) is at the end, nothing again.
    again = Recorder()
    source = make_file_source([again], tmp_path, compression=fmt)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await until(
            lambda: (
                source.targets_info() == [] or not source.targets_info()[0].is_running
            )
        )
    assert texts(again) == []


async def test_the_position_moves_only_past_acknowledged_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("a\nb\n")
    positions = FilePositions(tmp_path / "data" / "positions.json")
    rec = Recorder(settle=False)
    source = make_file_source([rec], tmp_path, positions=positions)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 2)
        assert positions.get(str(log)) is None
        rec.batches[0].settle()
        await until(lambda: positions.get(str(log)) is not None)
    saved = positions.get(str(log))
    assert saved is not None
    assert (saved.offset, saved.ino) == (4, os.stat(log).st_ino)


async def test_a_restart_resumes_exactly_where_loki_acknowledged(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 100)
    # As after kill -9: only what the positions file holds survives.
    _append(log, "line 100\nline 101\n")
    again = Recorder()
    source = make_file_source([again], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await again.wait_for(lambda: len(texts(again)) == 2)
    assert texts(again) == ["line 100", "line 101"]


async def test_a_rotation_while_the_agent_was_down_reads_the_old_file_first(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("a1\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 1)
    _append(log, "a2\n")
    os.rename(log, tmp_path / "app.log.1")
    log.write_text("b1\n")
    again = Recorder()
    registry = CollectorRegistry()
    source = make_file_source([again], tmp_path, registry=registry)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await again.wait_for(lambda: len(texts(again)) == 2)
    assert texts(again) == ["a2", "b1"]
    assert sample(registry, "minilog_source_file_resume_misses_total") == 0


async def test_a_file_replaced_while_down_is_read_from_its_start_and_counted(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("old\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 1)
    log.unlink()
    log.write_text("new file, longer than the old one\n")
    again = Recorder()
    registry = CollectorRegistry()
    source = make_file_source([again], tmp_path, registry=registry)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await again.wait_for(lambda: len(texts(again)) == 1)
    assert texts(again) == ["new file, longer than the old one"]
    assert sample(registry, "minilog_source_file_resume_misses_total") == 1


async def test_a_target_that_leaves_and_returns_resumes(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("x\n")
    rec = Recorder()
    source = make_file_source([rec], tmp_path)
    target = {"__path__": str(log)}
    source.update_targets([target])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 1)
        source.update_targets([])
        await until(lambda: source.targets_info() == [])
        _append(log, "y\n")
        source.update_targets([target])
        await rec.wait_for(lambda: len(texts(rec)) == 2)
    assert texts(rec) == ["x", "y"]


async def test_the_unfinished_line_is_cut_at_max_line_size(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"z" * 5000 + b"\nshort\n")
    rec = Recorder()
    registry = CollectorRegistry()
    source = make_file_source([rec], tmp_path, max_line_size=1000, registry=registry)
    source.update_targets([{"__path__": str(log)}])
    async with running_files(source):
        await rec.wait_for(lambda: len(texts(rec)) == 2)
    assert texts(rec) == ["z" * 1000, "short"]
    assert (
        sample(registry, "minilog_source_file_mutated_lines_total", reason="truncated")
        == 1
    )
