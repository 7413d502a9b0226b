"""The ``minilog`` command: validate / fmt exit codes, flags, and signals on a real
process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from agent_helpers import AgentProcess, free_port, start_agent_process

from minilog.cli import DEFAULT_LOKI_URL, default_config, main, normalize_argv
from minilog.config import parse
from minilog.testing import FakeLoki

REPO = Path(__file__).resolve().parents[1]
SEED = Path(__file__).parent / "data" / "alloy" / "seed-config.alloy"


def test_validate_accepts_the_seed_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SEED)]) == 0
    assert capsys.readouterr().err == ""


def test_validate_prints_every_diagnostic_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.alloy"
    bad.write_text(
        'loki.write "w" {\n  endpoint {\n    url = true\n    nonsense = true\n  }\n}\n'
        'foo.bar "x" {}\n'
    )
    assert main(["validate", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{bad}:3:11: ")
    assert lines[1].startswith(f"{bad}:4:5: ") and "nonsense" in lines[1]
    assert lines[2].startswith(f"{bad}:7:1: ") and "foo.bar" in lines[2]


@pytest.mark.parametrize(
    ("regex", "column"),
    [
        pytest.param('"/(?=x)(.*)"', 22, id="at-the-lookahead"),
        pytest.param("`a\\1`", 22, id="raw-string-backreference"),
        # An escape before the fault: the source no longer maps 1:1, so the literal.
        pytest.param('"\\\\d(?!x)"', 20, id="after-an-escape-the-literal"),
    ],
)
def test_a_bad_relabel_regex_points_into_the_string(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], regex: str, column: int
) -> None:
    bad = tmp_path / "re.alloy"
    bad.write_text(
        'discovery.relabel "r" {\n  targets = []\n  rule {\n'
        f"    regex        = {regex}\n"
        '    target_label = "x"\n  }\n}\n'
    )
    assert main(["validate", str(bad)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{bad}:4:{column}: "), line


def test_fmt_prints_and_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messy = tmp_path / "m.alloy"
    messy.write_text('loki.echo   "e"   {\n}\n')
    assert main(["fmt", str(messy)]) == 0
    formatted = capsys.readouterr().out
    assert formatted.startswith('loki.echo "e" {')
    assert messy.read_text() == 'loki.echo   "e"   {\n}\n'
    assert main(["fmt", "--write", str(messy)]) == 0
    assert messy.read_text() == formatted
    messy.write_text("loki.echo {")
    assert main(["fmt", str(messy)]) == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("minilog, version ")


def test_unknown_flag_is_rejected_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--server.http.listen-adr=1.2.3.4:5", str(SEED)])
    assert info.value.code == 2
    assert "--server.http.listen-adr" in capsys.readouterr().err


def test_unsupported_config_format_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--config.format=static", str(SEED)]) == 2
    assert "static" in capsys.readouterr().err


def test_go_style_flags_are_normalised() -> None:
    assert normalize_argv(
        ["--cluster.enabled=false", "--server.http.enable-pprof=1"]
    ) == ["--server.http.enable-pprof"]
    assert normalize_argv(
        ["--disable-reporting=true", "--disable-reporting=false", "-storage.path=x"]
    ) == [
        "--disable-reporting",
        "--storage.path=x",
    ]


def test_default_config_is_the_seed_with_loki_url_from_the_environment() -> None:
    text = default_config({"LOKI_URL": 'http://l:1/p"q'})
    assert 'url = "http://l:1/p\\"q"' in text
    assert f'url = "{DEFAULT_LOKI_URL}"' in default_config({})
    base = default_config({"LOKI_URL": "http://loki:3100/"})
    assert 'url = "http://loki:3100/loki/api/v1/push"' in base
    seed_blocks = [b.id for b in parse(SEED.read_text()).body]  # type: ignore[union-attr]
    assert [b.id for b in parse(text).body] == seed_blocks  # type: ignore[union-attr]


# ------------------------------------------------------------------ real process


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[object]:
    agents: list[AgentProcess] = []

    async def start(config: Path, *extra: str) -> AgentProcess:
        agent = await start_agent_process(config, tmp_path / "data", *extra)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        await agent.kill()


def api_config(path: Path, loki: FakeLoki, port: int, stage: str) -> Path:
    path.write_text(
        f"""
loki.source.api "in" {{
  http {{
    listen_address = "127.0.0.1"
    listen_port    = {port}
  }}
  forward_to = [loki.relabel.r.receiver]
}}
loki.relabel "r" {{
  forward_to = [loki.write.out.receiver]
  rule {{
    target_label = "stage"
    replacement  = "{stage}"
  }}
}}
loki.write "out" {{
  endpoint {{
    url        = "{loki.push_url}"
    batch_wait = "1h"
  }}
}}
"""
    )
    return path


async def push(port: int, *lines: str) -> None:
    body = {
        "streams": [
            {
                "stream": {"job": "cli"},
                "values": [[str(i + 1), line] for i, line in enumerate(lines)],
            }
        ]
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/loki/api/v1/push", json=body) as resp,
    ):
        assert resp.status == 204


async def test_sigterm_flushes_to_loki_and_exits_0(
    tmp_path: Path, start_agent: object
) -> None:
    async with FakeLoki() as loki:
        port = free_port()
        agent = await start_agent(api_config(tmp_path / "c.alloy", loki, port, "one"))  # type: ignore[operator]
        await push(port, "l1", "l2", "l3")
        assert (
            loki.lines() == []
        )  # batch_wait is 1h: only the shutdown flush sends them
        agent.proc.send_signal(signal.SIGTERM)
        assert await agent.wait() == 0
        assert loki.lines() == ["l1", "l2", "l3"]
        assert any("shutdown complete" in line for line in agent.lines)


async def test_sighup_reloads_and_a_bad_file_keeps_the_old_graph(
    tmp_path: Path, start_agent: object
) -> None:
    async with FakeLoki() as loki:
        port = free_port()
        config = api_config(tmp_path / "c.alloy", loki, port, "one")
        agent = await start_agent(config)  # type: ignore[operator]
        config.write_text("loki.write {")
        agent.proc.send_signal(signal.SIGHUP)
        await agent.wait_for_log("reload failed")
        api_config(config, loki, port, "two")
        agent.proc.send_signal(signal.SIGHUP)
        await agent.wait_for_log("config reloaded")
        await push(port, "after reload")
        agent.proc.send_signal(signal.SIGTERM)
        assert await agent.wait() == 0
        assert list(loki.streams()) == ['{job="cli", stage="two"}']


async def test_second_signal_exits_at_once(tmp_path: Path, start_agent: object) -> None:
    async with FakeLoki() as loki:
        loki.faults.hang()
        port = free_port()
        agent = await start_agent(  # type: ignore[operator]
            api_config(tmp_path / "c.alloy", loki, port, "one"),
            "--feature.component-shutdown-deadline=1m",
        )
        await push(port, "stuck")
        agent.proc.send_signal(signal.SIGTERM)
        await agent.wait_for_log("shutting down gracefully")
        agent.proc.send_signal(signal.SIGINT)
        assert await agent.wait(timeout_s=10) == 128 + signal.SIGINT


async def test_invalid_config_exits_1_with_diagnostics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.alloy"
    bad.write_text('loki.echo "e" {\n  x = 1\n}\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "minilog",
        "run",
        f"--server.http.listen-addr=127.0.0.1:{free_port()}",
        str(bad),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert f"{bad}:2:3: " in err.decode()


async def test_run_without_a_path_uses_the_embedded_seed_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOKI_URL", "http://127.0.0.1:9/loki/api/v1/push")
    agent = await start_agent_process(None, tmp_path / "data")
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(agent.url + "/api/v0/web/components") as resp,
        ):
            components = {c["localID"]: c for c in await resp.json()}
        assert set(components) == {
            "discovery.docker.containers",
            "discovery.relabel.logs",
            "loki.source.docker.app_logs",
            "loki.write.endpoint",
        }
        status, metrics = await agent.get("/metrics")
        assert status == 200
        assert "process_resident_memory_bytes" in metrics
        assert 'component_id="discovery.docker.containers"' in metrics
        _, body = await agent.get("/api/v0/web/components/loki.write.endpoint")
        endpoints = json.loads(body)["debugInfo"]["endpoints"]
        assert [e["url"] for e in endpoints] == ["http://127.0.0.1:9/loki/api/v1/push"]
        assert await agent.stop() == 0
    finally:
        await agent.kill()


def test_logfmt_and_json_formats_like_alloy() -> None:
    import io
    import json
    import logging

    from minilog.agent.logsetup import component_logger, configure_logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    out = io.StringIO()
    try:
        configure_logging("warn", "logfmt", stream=out)
        log = component_logger("loki.echo.x")
        log.info("dropped: below warn")
        log.warning('a "quoted" msg', extra={"n": 3, "empty": ""})
        configure_logging("debug", "json", stream=out)
        log.debug("now visible", extra={"labels": '{a="b"}'})
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    first, second = out.getvalue().splitlines()
    assert first.startswith("ts=") and first.split(" ", 1)[0].endswith("Z")
    assert ' level=warn msg="a \\"quoted\\" msg" component_path=/ ' in first
    assert first.endswith('component_id=loki.echo.x n=3 empty=""')
    record = json.loads(second)
    assert record["level"] == "debug" and record["labels"] == '{a="b"}'
    assert record["component_id"] == "loki.echo.x"
    with pytest.raises(ValueError, match="supported: debug, info, warn, error"):
        configure_logging("verbose")
