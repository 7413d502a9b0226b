"""``minilog bench`` options and the json-file path's comparison (issue 13): the
``minilog-file``/``minilog-api`` agents, several profiles in one run, the targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from minilog.agent.graph import build_graph, read_config
from minilog.bench.agents import (
    AgentRunner,
    Resolved,
    WriteSettings,
    alloy_config,
    parse_agent,
)
from minilog.bench.cli import build_options, parser
from minilog.bench.dockerapi import DockerAPI
from minilog.bench.profiles import new_record
from minilog.bench.report import targets
from minilog.errors import ConfigError


def _source_block(config: str) -> str:
    start = config.index('loki.source.docker "bench"')
    return config[start : config.index("}", start)]


def test_minilog_path_agents_set_logs_from_and_the_others_do_not() -> None:
    for name, logs_from in (("minilog-file", "file"), ("minilog-api", "api")):
        spec = parse_agent(name)
        assert (spec.name, spec.kind, spec.logs_from) == (name, "minilog", logs_from)
        config = alloy_config("r1", "http://x/push", WriteSettings(), spec.logs_from)
        assert f'logs_from  = "{logs_from}"' in _source_block(config)
    for name in ("minilog", "alloy", "promtail"):
        spec = parse_agent(name)
        assert spec.logs_from is None
        config = alloy_config("r1", "http://x/push", WriteSettings(), spec.logs_from)
        assert "logs_from" not in config


def test_several_profiles_run_in_order_once_each() -> None:
    args = parser().parse_args(
        ["drain", "latency", "drain", "--agent", "minilog", "--latency-probes", "5"]
    )
    options, profiles = build_options(args)
    assert profiles == ["drain", "latency"]
    assert options.latency_probes == 5
    _, quick = build_options(parser().parse_args(["quick", "--agent", "minilog"]))
    assert quick == ["drain", "latency", "throttle"]


def _rec(agent: str, profile: str, **figures: object) -> dict[str, object]:
    rec = new_record(agent, profile, "loki")
    rec.update(figures)
    return rec


def test_the_json_file_targets_compare_with_promtail_and_the_api_path() -> None:
    records = [
        _rec(
            "minilog-file",
            "drain",
            agent_cpu_s_per_million=2.5,
            dockerd_cpu_s_per_million=0.5,
            lines_per_s=120_000.0,
        ),
        _rec("minilog-api", "drain", agent_cpu_s_per_million=3.7, lines_per_s=90_000.0),
        _rec(
            "promtail",
            "drain",
            agent_cpu_s_per_million=12.0,
            dockerd_cpu_s_per_million=8.0,
        ),
        _rec(
            "minilog-file",
            "latency",
            first_line_s=0.4,
            first_line_from_write_s=0.25,
            first_line_from_write_s_all=[0.2, 0.25, 0.3],
        ),
    ]
    lines = targets(records)
    assert (
        "minilog-file drain: agent CPU 2.50 s per 1M lines (target <= 3): met" in lines
    )
    assert (
        "minilog-file drain: agent + dockerd CPU per 1M lines, minilog-file / promtail "
        "= 3.00 / 20.00 = 0.15 (target <= 0.25): met"
    ) in lines
    assert (
        "minilog-file drain: 120,000 lines/s = 1.33x minilog-api's 90,000 "
        "(target >= 1.5x): MISSED"
    ) in lines
    assert any(
        line.startswith("minilog-file: a new container's first line")
        and "0.250 s after Docker's timestamp" in line
        and "median of 3" in line
        and line.endswith(": met")
        for line in lines
    )
    # The API path is what the file path is compared with, not a file reader itself.
    assert not any(line.startswith("minilog-api drain: agent CPU") for line in lines)


def test_min_shards_reaches_alloy_compatible_agents_with_the_experimental_flag(
    tmp_path: Path,
) -> None:
    options, _ = build_options(
        parser().parse_args(["drain", "--agent", "minilog", "--min-shards", "2"])
    )
    assert options.write.min_shards == 2
    config = alloy_config("r1", "http://127.0.0.1:1/push", options.write)
    # The config is one minilog (and Alloy) take only at the experimental level.
    with pytest.raises(ConfigError, match="experimental"):
        build_graph(read_config(text=config))
    graph = build_graph(read_config(text=config), stability_level="experimental")
    assert graph is not None
    minilog = AgentRunner(
        Resolved(parse_agent("minilog"), argv=["minilog", "run", "{config_alloy}"]),
        tmp_path / "m",
        "r1",
        "http://127.0.0.1:1/push",
        options.write,
        DockerAPI(),
    )
    assert minilog.argv()[-2:] == [
        "--stability.level=experimental",
        str(tmp_path / "m" / "config.alloy"),
    ]
    promtail = AgentRunner(
        Resolved(
            parse_agent("promtail"),
            argv=["promtail", "-config.file={promtail_config}"],
            config_kind="promtail",
        ),
        tmp_path / "p",
        "r1",
        "http://127.0.0.1:1/push",
        options.write,
        DockerAPI(),
    )
    assert "--stability.level=experimental" not in promtail.argv()
