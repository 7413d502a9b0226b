"""``local.file_match`` and ``loki.source.file`` in an agent: config, exports, the
``file_match`` block, the legacy positions file, debug info."""

from __future__ import annotations

from pathlib import Path

import pytest

from minilog.agent.runtime import Agent
from minilog.config import parse
from minilog.errors import ConfigError
from minilog.files.positions import FilePositions
from minilog.model import StreamBatch
from minilog.testing import FakeLoki

FILE_CONFIG = """
local.file_match "logs" {{
  path_targets = [{{
    "__path__"         = "{root}/**/*.log",
    "__path_exclude__" = "{root}/skip/*",
    "job"              = "files",
  }}]
  sync_period  = "100ms"
}}

loki.source.file "files" {{
  targets    = local.file_match.logs.targets
  forward_to = [loki.write.out.receiver]
  {extra}
}}

loki.write "out" {{
  endpoint {{
    url        = "{url}"
    batch_wait = "50ms"
  }}
}}
"""


def _config(tmp_path: Path, loki: FakeLoki, root: Path, extra: str = "") -> Path:
    path = tmp_path / "config.alloy"
    path.write_text(FILE_CONFIG.format(root=root, url=loki.push_url, extra=extra))
    return path


async def test_files_found_by_glob_reach_loki_with_filename(
    tmp_path: Path, loki: FakeLoki
) -> None:
    root = tmp_path / "logs"
    (root / "skip").mkdir(parents=True)
    (root / "a.log").write_text("alpha\n")
    (root / "skip" / "s.log").write_text("skipped\n")
    agent = Agent(_config(tmp_path, loki, root), storage_path=tmp_path / "data")
    await agent.start()
    try:
        await loki.wait_for_entries(1, timeout=10)
        # A file created later is found at the next sync.
        (root / "sub").mkdir()
        (root / "sub" / "b.log").write_text("beta\n")
        await loki.wait_for_entries(2, timeout=10)
        info = agent.component("loki.source.file.files").debug_info()
    finally:
        await agent.aclose()
    assert sorted(loki.lines()) == ["alpha", "beta"]
    assert sorted(loki.streams()) == [
        f'{{filename="{root}/a.log", job="files"}}',
        f'{{filename="{root}/sub/b.log", job="files"}}',
    ]
    paths = sorted(t["path"] for t in info["targets_info"])
    assert paths == [f"{root}/a.log", f"{root}/sub/b.log"]
    target = info["targets_info"][0]
    assert target["labels"] == '{job="files"}'
    assert target["position"] == target["size"] and target["lag_bytes"] == 0


async def test_the_file_match_block_globs_in_the_source(
    tmp_path: Path, loki: FakeLoki
) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    (root / "x.log").write_text("x1\n")
    config = tmp_path / "config.alloy"
    config.write_text(
        f"""
loki.source.file "files" {{
  targets    = [{{"__path__" = "{root}/*.log"}}]
  forward_to = [loki.write.out.receiver]
  file_match {{
    enabled     = true
    sync_period = "100ms"
  }}
  file_watch {{
    min_poll_frequency = "50ms"
    max_poll_frequency = "1s"
  }}
}}

loki.write "out" {{
  endpoint {{
    url        = "{loki.push_url}"
    batch_wait = "50ms"
  }}
}}
"""
    )
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        await loki.wait_for_entries(1, timeout=10)
        (root / "y.log").write_text("y1\n")
        await loki.wait_for_entries(2, timeout=10)
    finally:
        await agent.aclose()
    assert sorted(loki.lines()) == ["x1", "y1"]


async def test_a_legacy_positions_file_is_converted_once(
    tmp_path: Path, loki: FakeLoki
) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    log = root / "app.log"
    log.write_text("already shipped\nnew\n")
    legacy = tmp_path / "promtail-positions.yaml"
    legacy.write_text(f'positions:\n  {log}: "16"\n')
    config = _config(tmp_path, loki, root, extra=f'legacy_positions_file = "{legacy}"')
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        # Both lines are read in one chunk: had the legacy offset been ignored, the
        # first would be in the same push.
        await loki.wait_for_entries(1, timeout=10)
    finally:
        await agent.aclose()
    assert loki.lines() == ["new"]
    saved = FilePositions(
        tmp_path / "data" / "loki.source.file.files" / "positions.json"
    ).get(str(log))
    assert saved is not None and saved.offset == log.stat().st_size
    assert saved.ino == log.stat().st_ino, "the next save records the file's identity"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('encoding = "no-such-charset"', "unknown encoding"),
        (
            'decompression {\n enabled = true\n format = "zip"\n}',
            "unsupported compression format",
        ),
        ('on_positions_file_error = "explode"', "unknown OnPositionsFileError"),
    ],
)
async def test_bad_arguments_are_positioned_errors(
    tmp_path: Path, extra: str, message: str
) -> None:
    from minilog.agent.graph import build_graph

    text = f"""loki.source.file "f" {{
  targets    = []
  forward_to = []
  {extra}
}}
"""
    with pytest.raises(ConfigError) as info:
        build_graph(parse(text, "c.alloy"))
    assert message in str(info.value)
    assert "c.alloy:1:1" in str(info.value)


async def test_local_file_match_refuses_a_zero_sync_period(tmp_path: Path) -> None:
    from minilog.agent.graph import build_graph

    text = 'local.file_match "m" {\n  path_targets = []\n  sync_period = "0s"\n}\n'
    with pytest.raises(ConfigError, match="sync_period must be greater than 0"):
        build_graph(parse(text, "c.alloy"))


class _Tap:
    """A live-debugging viewer: keeps the lines published to it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def publish(self, batch: StreamBatch) -> None:
        self.lines += [entry.line for entry in batch.entries]


async def test_live_debugging_sees_what_the_file_source_forwards(
    tmp_path: Path, loki: FakeLoki
) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    agent = Agent(_config(tmp_path, loki, root), storage_path=tmp_path / "data")
    await agent.start()
    try:
        source = agent.component("loki.source.file.files")
        assert source.supports_live_debugging
        tap = _Tap()
        source.set_live_tap(tap)
        (root / "a.log").write_text("watched\n")
        await loki.wait_for_entries(1, timeout=10)
    finally:
        await agent.aclose()
    assert tap.lines == ["watched"]
