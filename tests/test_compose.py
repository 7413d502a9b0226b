"""``compose/`` is the seed's stack with one line changed.

The seed (``tests/data/seed/03-04-PLAN.md``, a copy of ``../shared/seed/``) writes the
``loki`` and ``alloy`` services, the Loki and Alloy configs and Grafana's Loki
datasource in its code blocks. ``compose/docker-compose.yml`` must hold the seed's
``loki`` service as written and its ``alloy`` service with only ``image:`` (and a
``build:``) different; the configs are the seed's, Loki's with its one fix. The override
for this machine (no bridge, no pulls) is checked for what it promises.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from agent_helpers import REPO

SEED = REPO / "tests" / "data" / "seed" / "03-04-PLAN.md"
COMPOSE = REPO / "compose"
MAIN = COMPOSE / "docker-compose.yml"
OVERRIDE = COMPOSE / "docker-compose.host-network.yml"


def _blocks(language: str) -> list[str]:
    text = SEED.read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _seed_services() -> dict[str, Any]:
    """The service definitions the seed writes (each block is one service)."""
    services: dict[str, Any] = {}
    for block in _blocks("yaml"):
        parsed = yaml.safe_load(block)
        if isinstance(parsed, dict) and any(
            isinstance(v, dict) and "image" in v for v in parsed.values()
        ):
            services.update(parsed)
    return services


def _seed_yaml(key: str) -> Any:
    """The first YAML block of the seed that has top-level ``key``."""
    for block in _blocks("yaml"):
        parsed = yaml.safe_load(block)
        if isinstance(parsed, dict) and key in parsed:
            return parsed
    raise AssertionError(f"no YAML block with {key!r} in the seed")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MAIN.read_text())
    return loaded


def test_the_seed_copy_matches_the_original() -> None:
    for original in (
        REPO.parent / "shared" / "seed" / SEED.name,
        REPO.parent.parent / "shared" / "seed" / SEED.name,
    ):
        if original.exists():
            assert original.read_bytes() == SEED.read_bytes()
            return
    pytest.skip("the original seed (../shared/seed) is not beside this checkout")


def test_the_seed_blocks_are_found() -> None:
    seed = _seed_services()
    assert seed["alloy"]["image"] == "grafana/alloy:latest"
    assert seed["loki"]["image"] == "grafana/loki:3.6.0"
    assert set(_seed_yaml("depends_on")["depends_on"]) == {"prometheus", "loki"}


def test_loki_service_is_the_seeds() -> None:
    assert _compose()["services"]["loki"] == _seed_services()["loki"]


def test_alloy_service_differs_from_the_seed_only_in_its_image() -> None:
    seed = dict(_seed_services()["alloy"])
    ours = dict(_compose()["services"]["alloy"])
    assert ours.pop("image") == "minilog:latest"
    build = ours.pop("build")
    assert build == {"context": "..", "dockerfile": "Dockerfile"}
    assert (COMPOSE / build["context"] / build["dockerfile"]).is_file()
    seed.pop("image")
    assert ours == seed


def test_grafana_depends_on_as_the_seed_says() -> None:
    grafana = _compose()["services"]["grafana"]
    # The seed gives only this part of its grafana service.
    assert grafana["depends_on"] == _seed_yaml("depends_on")["depends_on"]
    assert grafana["container_name"] == "grafana"


def test_the_seed_volume_is_declared() -> None:
    assert "loki-data" in _compose()["volumes"]


def test_the_alloy_config_is_the_seeds() -> None:
    (seed,) = _blocks("alloy")
    assert (COMPOSE / "alloy" / "config.alloy").read_text() == seed


def test_the_loki_config_is_the_seeds_plus_its_one_fix() -> None:
    seed = _seed_yaml("schema_config")
    ours = yaml.safe_load((COMPOSE / "loki" / "loki-config.yaml").read_text())
    assert ours["compactor"].pop("delete_request_store") == "filesystem"
    assert ours == seed


def test_grafana_has_the_seeds_loki_datasource() -> None:
    seed = _seed_yaml("datasources")
    path = COMPOSE / "grafana" / "provisioning" / "datasources" / "loki.yml"
    ours = yaml.safe_load(path.read_text())
    assert ours == seed
    assert ours["datasources"][0]["uid"] == "loki"


def test_every_mounted_file_exists() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), (name, source)


def test_prometheus_scrapes_the_agent_and_loki() -> None:
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for s in job["static_configs"] for t in s["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["minilog"] == ["alloy:12345"]
    assert targets["loki"] == ["loki:3100"]


def test_the_demo_services_have_the_seeds_names() -> None:
    services = _compose()["services"]
    for name in ("web-gateway", "order-api", "fulfillment-worker"):
        assert services[name]["container_name"] == name
        assert services[name]["command"] == ["sh", "/demo/app.sh", name]


def test_the_override_puts_everything_on_the_host_network() -> None:
    """What docker-compose.host-network.yml promises, on the merged configuration."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI")
    proc = subprocess.run(
        [
            *("docker", "compose", "-f", str(MAIN), "-f", str(OVERRIDE)),
            *("config", "--format", "json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0 and "compose" in proc.stderr and "not" in proc.stderr:
        pytest.skip("Docker Compose v2 is not available: run scripts/setup-compose")
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(proc.stdout)["services"]
    # Grafana is in the file but behind a profile: `up` starts the rest.
    assert "grafana" not in merged
    assert set(merged) == {
        "loki",
        "alloy",
        "prometheus",
        "web-gateway",
        "order-api",
        "fulfillment-worker",
    }
    for name, service in merged.items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports"), name
    assert merged["alloy"]["extra_hosts"] == ["loki=127.0.0.1"]
    assert sorted(merged["prometheus"]["extra_hosts"]) == [
        "alloy=127.0.0.1",
        "loki=127.0.0.1",
    ]
    build = merged["alloy"]["build"]
    assert build["network"] == "host"
    assert build["args"]["BASE_IMAGE"]
    assert [s["source"] for s in build["secrets"]] == ["pip_ca"]
    # The seed's command line and config file, unchanged.
    assert merged["alloy"]["command"] == [
        "run",
        "--server.http.listen-addr=0.0.0.0:12345",
        "/etc/alloy/config.alloy",
    ]


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "minilog",
        "compose/alloy/config.alloy",
    }
    dockerfile = (REPO / "Dockerfile").read_text()
    for path in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.M):
        assert path.rstrip("/") in allowed, path
