"""``minilog bench quick --agent minilog``: the harness end to end, as a smoke test.

Runs the installed CLI's ``bench`` subcommand (drain, latency and throttle, shortened)
against a real Loki 3.6 and real containers; skipped, with the reason, without a Docker
Engine, the test image or a Loki to start. Figures are not checked (the machine is
shared); the counts are: minilog loses nothing, and every record is complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docker_helpers import docker_unavailable_reason
from real_loki import launcher_or_reason

from minilog.bench.report import FIELDS
from minilog.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_unknown_agent_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "quick", "--agent", "nosuchagent", "--no-plots"]) == 2
    assert "unknown agent 'nosuchagent'" in capsys.readouterr().err


@pytest.mark.docker
@pytest.mark.loki
@pytest.mark.timeout(300)
def test_bench_quick_against_minilog(tmp_path: Path) -> None:
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    found = launcher_or_reason()
    if isinstance(found, str):
        pytest.skip(found)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if found.kind == "binary":
        env["LOKI_BIN"] = found.target
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minilog",
            "bench",
            "quick",
            "--agent",
            "minilog",
            "--agent",
            "cmd:broken=exit 3",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "results.json").read_text())
    records = {(r["agent"], r["profile"]): r for r in doc["results"]}
    assert set(records) == {
        (agent, profile)
        for agent in ("minilog", "broken")
        for profile in ("drain", "latency", "throttle")
    }
    for profile in ("drain", "latency", "throttle"):
        rec = records[("minilog", profile)]
        assert set(FIELDS) <= set(rec)
        assert rec["skipped"] is None, rec["skipped"]
        assert rec["sink"] == "loki"
        assert rec["lines_written"] > 0
        assert rec["lines_lost"] == 0, rec["notes"]
        assert rec["lines_delivered"] == rec["lines_written"]
        # An agent that exits at once is reported as skipped, and the run goes on.
        assert "exited" in records[("broken", profile)]["skipped"]
    assert records[("minilog", "drain")]["agent_cpu_s_per_million"] > 0
    assert records[("minilog", "latency")]["latency_p99_s"] is not None
    assert records[("minilog", "throttle")]["push_statuses"]["429"] > 0
    for name in ("compare.png", "throughput-throttle.png", "rss-throttle.png"):
        assert (out / name).stat().st_size > 0
    assert "minilog" in proc.stdout and "throttle" in proc.stdout
