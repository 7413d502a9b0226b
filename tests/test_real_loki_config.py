"""The config a test's own Loki runs: the seed's, changed only where a shared machine
needs it (ports, addresses, paths, no usage report), then the test's overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from real_loki import (
    SEED_LOKI_CONFIG,
    LokiLauncher,
    adapted_config,
    launcher_or_reason,
)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def test_the_seed_config_changes_only_where_a_shared_machine_needs_it(
    tmp_path: Path,
) -> None:
    seed = yaml.safe_load(SEED_LOKI_CONFIG.read_text())
    assert seed["compactor"]["delete_request_store"] == "filesystem"  # the one fix
    config = adapted_config(seed, tmp_path, 41001, 41002)

    before, after = _leaves(seed), _leaves(config)
    changed = {k: after.get(k) for k in before.keys() | after.keys()}
    changed = {k: v for k, v in changed.items() if before.get(k) != v}
    data = str(tmp_path)
    assert changed == {
        "server.http_listen_address": "127.0.0.1",
        "server.http_listen_port": 41001,
        "server.grpc_listen_address": "127.0.0.1",
        "server.grpc_listen_port": 41002,
        "common.instance_addr": "127.0.0.1",
        "common.path_prefix": data,
        "common.storage.filesystem.chunks_directory": data + "/chunks",
        "common.storage.filesystem.rules_directory": data + "/rules",
        "compactor.working_directory": data + "/compactor",
        "analytics.reporting_enabled": False,
    }


def test_overrides_merge_into_nested_sections(tmp_path: Path) -> None:
    seed = yaml.safe_load(SEED_LOKI_CONFIG.read_text())
    config = adapted_config(
        seed,
        tmp_path,
        1,
        2,
        {"auth_enabled": True, "limits_config": {"ingestion_rate_mb": 0.05}},
    )
    assert config["auth_enabled"] is True
    assert config["limits_config"] == {
        **seed["limits_config"],
        "ingestion_rate_mb": 0.05,
    }
    assert seed["auth_enabled"] is False  # the seed itself is left alone


def test_loki_bin_wins_over_path_and_must_be_executable(tmp_path: Path) -> None:
    on_path = tmp_path / "bin" / "loki"
    chosen = tmp_path / "chosen-loki"
    for path in (on_path, chosen):
        path.parent.mkdir(exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    path_only = {"PATH": str(on_path.parent)}
    assert launcher_or_reason(path_only) == LokiLauncher("binary", str(on_path))
    both = {**path_only, "LOKI_BIN": str(chosen)}
    assert launcher_or_reason(both) == LokiLauncher("binary", str(chosen))
    missing = {**path_only, "LOKI_BIN": str(tmp_path / "nope")}
    assert launcher_or_reason(missing) == (
        f"LOKI_BIN={tmp_path / 'nope'} is not an executable file"
    )
