"""Why each container is shipped or not: the pure explanation, and ``minilog explain``
against the Docker socket without starting the agent."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from minilog.agent.explain import (
    SOURCE_KINDS,
    DiscoveredTarget,
    Pipeline,
    TargetStatus,
    explain_pipeline,
    source_paths,
)
from minilog.relabel import Rule, compile_rules

SEED = Path(__file__).parents[1] / "data" / "alloy" / "seed-config.alloy"
KEEP = "(web-gateway|order-api|fulfillment-worker)"


def target(name: str, cid: str) -> DiscoveredTarget:
    return DiscoveredTarget(
        {"__meta_docker_container_name": "/" + name, "__meta_docker_container_id": cid},
        state="running",
    )


def seed_pipeline(source_rules: Any = None) -> Pipeline:
    rules = compile_rules(
        [
            Rule(
                source_labels=("__meta_docker_container_name",),
                regex="/(.*)",
                target_label="service",
            ),
            Rule(source_labels=("service",), regex=KEEP, action="keep"),
        ]
    )
    names = {
        "discovery.docker.c": "discovery.docker",
        "discovery.relabel.logs": "discovery.relabel",
        "loki.source.docker.app": "loki.source.docker",
    }
    deps = {
        "loki.source.docker.app": {"discovery.relabel.logs", "loki.write.x"},
        "discovery.relabel.logs": {"discovery.docker.c"},
    }
    paths = source_paths("loki.source.docker.app", deps, names)
    assert paths == (("discovery.docker.c", "discovery.relabel.logs"),)
    return Pipeline(
        source_id="loki.source.docker.app",
        kind=SOURCE_KINDS["loki.source.docker"],
        paths=paths,
        rules={"discovery.relabel.logs": rules},
        source_labels={},
        source_rules=source_rules,
    )


def test_a_container_outside_the_seed_services_is_dropped_by_rule_2() -> None:
    found = {"discovery.docker.c": [target("web-gateway", "a1"), target("redis", "b2")]}
    status = {
        "a1": TargetStatus(
            True, 5, 9, 0.0, "", {"stdout": {"lines": 3, "bytes": 30, "last_ns": 9}}
        )
    }
    web, redis = explain_pipeline(seed_pipeline(), found, status)
    assert (redis["name"], redis["shipped"]) == ("redis", False)
    assert redis["verdict"] == "dropped by rule 2 (keep) of discovery.relabel.logs"
    relabel = redis["stages"][1]
    assert [s["labels"] for s in relabel["steps"]] == [
        {
            "__meta_docker_container_name": "/redis",
            "__meta_docker_container_id": "b2",
            "service": "redis",
        },
        None,
    ]
    assert relabel["dropped_by"] == "rule 2 (keep)"
    assert web["shipped"] and web["verdict"] == "shipped"
    assert [(s["stream"], s["labels"]) for s in web["streams"]] == [
        ("stdout", {"service": "web-gateway"}),
        ("stderr", {"service": "web-gateway"}),
    ]
    assert web["streams"][0]["lines"] == 3 and "lines" not in web["streams"][1]
    assert web["tailer"]["running"] is True


def test_the_sources_own_rules_are_traced_per_stream() -> None:
    drop_stderr = compile_rules(
        [
            Rule(
                source_labels=("__meta_docker_container_log_stream",),
                regex="stderr",
                action="drop",
            )
        ],
        legacy_names=True,
    )
    found = {"discovery.docker.c": [target("order-api", "c3")]}
    (ex,) = explain_pipeline(seed_pipeline(drop_stderr), found)
    stdout, stderr = ex["streams"]
    assert ex["shipped"] and stdout["shipped"] and not stderr["shipped"]
    assert stderr["verdict"] == (
        "dropped by rule 1 (drop) of loki.source.docker.app relabel_rules"
    )


def test_a_stopped_container_is_explained_as_not_discovered() -> None:
    stopped = DiscoveredTarget(
        {
            "__meta_docker_container_name": "/order-api",
            "__meta_docker_container_id": "d",
        },
        state="exited: discovery.docker lists running containers only",
        listed=False,
    )
    (ex,) = explain_pipeline(seed_pipeline(), {"discovery.docker.c": [stopped]})
    assert not ex["shipped"]
    assert ex["verdict"] == (
        "not discovered: exited: discovery.docker lists running containers only"
    )


@pytest.mark.docker
def test_minilog_explain_against_docker(docker_containers: Any, tmp_path: Path) -> None:
    other = f"minilog-explain-{uuid.uuid4().hex[:8]}"
    docker_containers("sleep 600", name=other)
    config = tmp_path / "c.alloy"
    config.write_text(SEED.read_text())
    cmd = [sys.executable, "-m", "minilog", "explain", str(config)]
    text = subprocess.run(
        [*cmd, other], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert f"container {other} (" in text and "NOT SHIPPED" in text
    assert "why: dropped by rule 2 (keep) of discovery.relabel.logs" in text
    assert f'+service="{other}"' in text
    out = subprocess.run(
        [*cmd, other, "--json"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    (ex,) = json.loads(out)
    assert ex["stages"][1]["dropped_by"] == "rule 2 (keep)"
    missing = subprocess.run(
        [*cmd, "no-such-container-" + other], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "no target named" in missing.stderr
