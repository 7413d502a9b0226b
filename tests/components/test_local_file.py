"""``local.file``: content export, secrets, change detection, health, validation."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import wait_until
from prometheus_client import CollectorRegistry, generate_latest

from minilog.agent.graph import build_graph
from minilog.agent.logsetup import component_logger
from minilog.components import COMPONENT_TYPES, ComponentOptions
from minilog.components.local_file import LocalFile
from minilog.config import Scope, Secret, parse
from minilog.config.ast import Block
from minilog.errors import ConfigError, MinilogError


class Changes:
    """Counts ``on_exports`` calls and lets a test await the next one."""

    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self) -> None:
        await asyncio.wait_for(self.event.wait(), 10)
        self.event.clear()


def make(text: str, changes: Changes | None = None) -> LocalFile:
    block = parse(text, "test.alloy").body[0]
    assert isinstance(block, Block)
    cls = COMPONENT_TYPES["local.file"]
    args = cls.parse_args(cls.decode(block, Scope()), block)
    opts = ComponentOptions(
        id=block.id,
        data_path=Path("/nonexistent"),
        registry=CollectorRegistry(auto_describe=True),
        logger=component_logger(block.id),
        on_exports=changes or (lambda: None),
    )
    component = cls(opts, args)
    assert isinstance(component, LocalFile)
    return component


def config(path: Path, extra: str = "") -> str:
    return f'local.file "f" {{\n\tfilename = "{path}"\n{extra}}}\n'


@contextlib.asynccontextmanager
async def running(component: LocalFile) -> AsyncIterator[None]:
    task = asyncio.create_task(component.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_exports_the_content_as_a_string_or_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret\n")
    plain = make(config(path))
    assert plain.exports() == {"content": "s3cret\n"}
    assert type(plain.exports()["content"]) is str
    assert plain.health().state == "healthy"
    assert plain.health().message == "read file"
    secret = make(config(path, "\tis_secret = true\n"))
    assert isinstance(secret.exports()["content"], Secret)
    assert "s3cret" not in repr(secret.exports())
    metrics = generate_latest(plain.metrics_registry()).decode()
    assert "local_file_timestamp_last_accessed_unix_seconds" in metrics


def test_an_unreadable_file_fails_the_build_in_gos_words(tmp_path: Path) -> None:
    with pytest.raises(MinilogError) as info:
        make(config(tmp_path / "missing"))
    assert str(info.value) == (
        f"failed to read file: open {tmp_path}/missing: no such file or directory"
    )
    with pytest.raises(MinilogError) as info:
        make(config(tmp_path))
    assert str(info.value) == f"failed to read file: read {tmp_path}: is a directory"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('\tpoll_frequency = "0s"\n', "poll_frequency must be greater than 0"),
        (
            '\tdetector = "inotify"\n',
            'unrecognized detector "inotify", expected fsnotify or poll',
        ),
    ],
)
def test_argument_checks(tmp_path: Path, extra: str, message: str) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as info:
        make(config(tmp_path / "f", extra))
    (diag,) = info.value.diagnostics
    assert (diag.line, diag.column, diag.message) == (1, 1, message)


@pytest.mark.parametrize("detector", ["fsnotify", "poll"])
async def test_a_change_is_read_and_exported(tmp_path: Path, detector: str) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    changes = Changes()
    # With fsnotify the 1 h poll never fires: only the inotify event can wake it.
    poll = "1h" if detector == "fsnotify" else "50ms"
    component = make(
        config(path, f'\tdetector = "{detector}"\n\tpoll_frequency = "{poll}"\n'),
        changes,
    )
    async with running(component):
        await wait_watching(component, detector)
        path.write_text("two")
        await changes.next()
        assert component.exports()["content"] == "two"
        # A replace by rename (editors, Kubernetes secret volumes) is seen too.
        (tmp_path / "token.new").write_text("three")
        os.replace(tmp_path / "token.new", path)
        await changes.next()
        assert component.exports()["content"] == "three"


async def wait_watching(component: LocalFile, detector: str) -> None:
    """inotify only reports changes made after the watch was added: touch a
    neighbour until the watch has reported one (fsnotify), or return (poll)."""
    if detector != "fsnotify":
        return
    directory = Path(component.args.filename).parent
    probes = iter(range(1000))

    def reported() -> bool:
        if component.debug_info()["watch_events"]:
            return True
        (directory / f".probe{next(probes)}").write_text("")
        return False

    await wait_until(reported, 10, "the directory watch reporting a change")


async def test_an_unreadable_file_makes_it_unhealthy_until_it_is_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    changes = Changes()
    component = make(
        config(path, '\tdetector = "poll"\n\tpoll_frequency = "20ms"\n'), changes
    )
    async with running(component):
        path.unlink()
        await wait_for_health(component, "unhealthy")
        assert component.health().message == (
            f"failed to read file: open {path}: no such file or directory"
        )
        # The last content stays exported meanwhile.
        assert component.exports()["content"] == "one"
        path.write_text("two")
        await changes.next()
        assert component.health().state == "healthy"
        assert component.exports()["content"] == "two"


async def wait_for_health(component: LocalFile, state: str) -> None:
    # Health offers no event to await.
    await wait_until(lambda: component.health().state == state, 10, state)


async def test_update_reads_at_once_and_refuses_an_unreadable_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").write_text("A")
    (tmp_path / "b").write_text("B")
    changes = Changes()
    component = make(config(tmp_path / "a"), changes)
    cls: Any = LocalFile
    block = parse(config(tmp_path / "b", "\tis_secret = true\n")).body[0]
    assert isinstance(block, Block)
    await component.update(cls.parse_args(cls.decode(block, Scope()), block))
    assert changes.count == 1
    assert isinstance(component.exports()["content"], Secret)
    assert component.exports()["content"] == "B"
    block = parse(config(tmp_path / "c")).body[0]
    assert isinstance(block, Block)
    with pytest.raises(MinilogError, match="failed to read file: open"):
        await component.update(cls.parse_args(cls.decode(block, Scope()), block))


# ------------------------------------------------------------ the type rules


def graph_errors(text: str) -> list[str]:
    try:
        build_graph(parse(text, "c.alloy"))
    except ConfigError as exc:
        return [f"{d.line}:{d.column}: {d.message}" for d in exc.diagnostics]
    return []


def pipeline(tmp_path: Path, *, is_secret: bool, endpoint: str) -> str:
    return (
        f'local.file "pw" {{\n\tfilename  = "{tmp_path}/pw"\n'
        f"\tis_secret = {str(is_secret).lower()}\n}}\n"
        'loki.write "out" {\n\tendpoint {\n'
        '\t\turl = "http://127.0.0.1:3100/loki/api/v1/push"\n'
        f"{endpoint}\t}}\n}}\n"
    )


def test_a_secret_goes_where_a_secret_is_wanted(tmp_path: Path) -> None:
    auth = (
        '\t\tbasic_auth {\n\t\t\tusername = "u"\n'
        "\t\t\tpassword = local.file.pw.content\n\t\t}\n"
    )
    assert graph_errors(pipeline(tmp_path, is_secret=True, endpoint=auth)) == []
    # A plain string is accepted by a secret attribute too.
    assert graph_errors(pipeline(tmp_path, is_secret=False, endpoint=auth)) == []


def test_a_secret_is_refused_where_a_string_is_wanted(tmp_path: Path) -> None:
    tenant = "\t\ttenant_id = local.file.pw.content\n"
    assert graph_errors(pipeline(tmp_path, is_secret=True, endpoint=tenant)) == [
        "8:15: local.file.pw.content secrets may not be converted into strings"
    ]
    assert graph_errors(pipeline(tmp_path, is_secret=False, endpoint=tenant)) == []
    unwrapped = "\t\ttenant_id = convert.nonsensitive(local.file.pw.content)\n"
    assert graph_errors(pipeline(tmp_path, is_secret=True, endpoint=unwrapped)) == []
    # Concatenation keeps it a secret; string.format too (Alloy would leak it).
    joined = '\t\ttenant_id = "t-" + local.file.pw.content\n'
    assert graph_errors(pipeline(tmp_path, is_secret=True, endpoint=joined)) == [
        '8:15: "t-" + local.file.pw.content secrets may not be converted into strings'
    ]
