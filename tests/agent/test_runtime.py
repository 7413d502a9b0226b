"""The agent runtime: graph building, validation, cascade, reload, shutdown order."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from minilog.agent.graph import LoggingConfig
from minilog.agent.runtime import Agent
from minilog.components import COMPONENT_TYPES, Component, ComponentOptions
from minilog.components.base import StableReceiver
from minilog.config import Attr, Schema
from minilog.errors import ConfigError
from minilog.testing import FakeLoki

PIPELINE = """
loki.source.api "in" {{
  http {{
    listen_address = "127.0.0.1"
    listen_port    = 0
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
    url        = "{url}"
    batch_wait = "{batch_wait}"
  }}
}}
"""


def write_config(
    path: Path,
    loki: FakeLoki,
    *,
    stage: str = "one",
    batch_wait: str = "50ms",
    extra: str = "",
) -> Path:
    path.write_text(
        PIPELINE.format(url=loki.push_url, stage=stage, batch_wait=batch_wait) + extra
    )
    return path


async def push(
    agent: Agent, *lines: str, labels: Mapping[str, str] | None = None
) -> None:
    url = agent.component("loki.source.api.in").url  # type: ignore[attr-defined]
    body = {
        "streams": [
            {
                "stream": dict(labels or {"job": "t"}),
                "values": [[str(1000 + i), line] for i, line in enumerate(lines)],
            }
        ]
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/loki/api/v1/push", json=body) as resp,
    ):
        assert resp.status == 204, await resp.text()


async def test_agent_ships_through_the_graph_and_flushes_at_shutdown(
    tmp_path: Path, loki: FakeLoki
) -> None:
    # A batch_wait far beyond the test: only the shutdown drain can deliver these lines.
    config = write_config(tmp_path / "c.alloy", loki, batch_wait="1h")
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    assert agent.ready
    await push(agent, "a", "b", "c")
    assert loki.lines() == []
    await agent.aclose()
    assert not agent.ready
    assert loki.lines() == ["a", "b", "c"]
    assert list(loki.streams()) == ['{job="t", stage="one"}']
    await agent.aclose()  # idempotent


async def test_component_metrics_carry_component_id(
    tmp_path: Path, loki: FakeLoki
) -> None:
    agent = Agent(
        write_config(tmp_path / "c.alloy", loki), storage_path=tmp_path / "data"
    )
    await agent.start()
    try:
        await push(agent, "x")
        await loki.wait_for_entries(1, timeout=5)
        text = generate_latest(agent.registry).decode()
    finally:
        await agent.aclose()
    sample = 'component_id="loki.relabel.r",component_path="/"} 1.0'
    assert "loki_relabel_entries_processed_total{" + sample in text
    assert 'component_id="loki.write.out"' in text
    assert "minilog_config_last_load_successful 1.0" in text


async def test_reload_updates_survivors_in_place_and_adds_and_removes(
    tmp_path: Path, loki: FakeLoki
) -> None:
    config = write_config(tmp_path / "c.alloy", loki, extra='loki.echo "gone" {}\n')
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        writer = agent.component("loki.write.out")
        receiver = writer.exports()["receiver"]
        source = agent.component("loki.source.api.in")
        await push(agent, "before")
        await loki.wait_for_entries(1, timeout=5)

        write_config(config, loki, stage="two", extra='loki.echo "new" {}\n')
        await agent.reload()
        assert agent.component("loki.write.out") is writer
        assert writer.exports()["receiver"] is receiver
        assert agent.component("loki.source.api.in") is source
        ids = {c["id"] for c in agent.components_info()}
        assert "loki.echo.new" in ids and "loki.echo.gone" not in ids

        await push(agent, "after")
        await loki.wait_for_entries(2, timeout=5)
    finally:
        await agent.aclose()
    assert {k: [e.line for e in v] for k, v in loki.streams().items()} == {
        '{job="t", stage="one"}': ["before"],
        '{job="t", stage="two"}': ["after"],
    }


async def test_reload_with_a_bad_file_keeps_the_last_good_graph(
    tmp_path: Path, loki: FakeLoki
) -> None:
    config = write_config(tmp_path / "c.alloy", loki)
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        good = config.read_text()
        config.write_text(good.replace('replacement  = "one"', "replacement  = 42 +"))
        with pytest.raises(ConfigError) as info:
            await agent.reload()
        assert info.value.diagnostics[0].path == str(config)
        assert info.value.diagnostics[0].line == 15
        assert agent.last_error is info.value
        assert agent.ready
        assert (
            "minilog_config_last_load_successful 0.0"
            in generate_latest(agent.registry).decode()
        )

        await push(agent, "still shipping")
        await loki.wait_for_entries(1, timeout=5)
        assert list(loki.streams()) == ['{job="t", stage="one"}']
    finally:
        await agent.aclose()


async def test_a_reload_whose_new_component_cannot_start_keeps_the_removed_one(
    tmp_path: Path, loki: FakeLoki
) -> None:
    """Renaming a listener on the same port: the new one cannot bind while the old one
    holds the port; the reload fails and the old one keeps serving."""
    config = write_config(tmp_path / "c.alloy", loki)
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        port = agent.component("loki.source.api.in").url.rsplit(":", 1)[1]  # type: ignore[attr-defined]
        renamed = config.read_text().replace(
            'loki.source.api "in"', 'loki.source.api "in2"'
        )
        config.write_text(
            renamed.replace("listen_port    = 0", f"listen_port    = {port}")
        )
        with pytest.raises(ConfigError, match="cannot start"):
            await agent.reload()
        await push(agent, "still served")
        await loki.wait_for_entries(1, timeout=5)
    finally:
        await agent.aclose()


async def test_a_config_directory_forms_one_config(
    tmp_path: Path, loki: FakeLoki
) -> None:
    config = tmp_path / "conf.d"
    config.mkdir()
    text = write_config(tmp_path / "all.alloy", loki, batch_wait="1h").read_text()
    source, rest = text.split('loki.relabel "r"', 1)
    (config / "10-source.alloy").write_text(source)
    (config / "20-rest.alloy").write_text('loki.relabel "r"' + rest)
    (config / "ignored.txt").write_text("not a config")
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        await push(agent, "from a directory")
    finally:
        await agent.aclose()
    assert loki.lines() == ["from a directory"]


def test_load_reports_every_problem_at_once(tmp_path: Path) -> None:
    config = tmp_path / "bad.alloy"
    config.write_text(
        'loki.relabel "a" {\n'
        "  forward_to = [loki.relabel.b.receiver]\n"
        "}\n"
        'loki.relabel "b" {\n'
        "  forward_to = [loki.relabel.a.receiver]\n"
        "}\n"
        'prometheus.scrape "x" {\n'
        "}\n"
        'loki.write "w" {\n'
        '  endpoint {\n    url = "http://x:1/p"\n    batch_size = "lots"\n  }\n'
        "}\n"
    )
    with pytest.raises(ConfigError) as info:
        Agent(config).load()
    messages = [(d.line, d.message) for d in info.value.diagnostics]
    assert any("cycle" in m or "references itself" in m for _, m in messages)
    assert any(
        line == 7 and "prometheus.scrape" in m and "loki.write" in m
        for line, m in messages
    )
    assert any(line == 12 and "lots" in m for line, m in messages)
    assert [d.line for d in info.value.diagnostics] == sorted(
        d.line for d in info.value.diagnostics
    )


def test_labels_and_duplicate_ids_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "bad.alloy"
    config.write_text('loki.echo {\n}\nloki.echo "e" {\n}\nloki.echo "e" {\n}\n')
    with pytest.raises(ConfigError) as info:
        Agent(config).load()
    messages = [(d.line, d.message) for d in info.value.diagnostics]
    assert any(line == 1 and "label" in m for line, m in messages)
    assert any(line == 5 and "already declared" in m for line, m in messages)


async def test_invalid_config_at_start_raises_and_leaves_nothing_running(
    tmp_path: Path, loki: FakeLoki
) -> None:
    config = write_config(tmp_path / "c.alloy", loki, batch_wait="soon")
    agent = Agent(config, storage_path=tmp_path / "data")
    with pytest.raises(ConfigError, match="duration"):
        await agent.start()
    assert not agent.ready
    assert agent.components_info() == []


async def test_a_component_that_cannot_start_is_a_positioned_error(
    tmp_path: Path, loki: FakeLoki
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "c.alloy"
        text = write_config(config, loki).read_text()
        config.write_text(
            text.replace("listen_port    = 0", f"listen_port    = {port}")
        )
        agent = Agent(config, storage_path=tmp_path / "data")
        with pytest.raises(ConfigError, match="cannot start") as info:
            await agent.start()
    assert info.value.diagnostics[0].line == 2
    assert agent.components_info() == []


def test_logging_block_is_validated_and_reported(tmp_path: Path) -> None:
    config = tmp_path / "c.alloy"
    config.write_text('logging {\n  level = "loud"\n}\nloki.echo "e" {}\n')
    with pytest.raises(ConfigError, match="loud") as info:
        Agent(config).load()
    assert info.value.diagnostics[0].line == 1
    config.write_text(
        'logging {\n  level = "debug"\n  format = "json"\n}\nloki.echo "e" {}\n'
    )
    assert Agent(config).load().logging == LoggingConfig("debug", "json")


# -------------------------------------------------------------- fake component types


class FakeSource(Component):
    """Exports ``targets`` that the test sets; records its lifecycle."""

    name = "test.source"
    schema = Schema(attrs=[])
    phase = "discovery"
    events: list[str] = []

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"targets": []}

    def __init__(self, opts: ComponentOptions, args: Mapping[str, Any]) -> None:
        super().__init__(opts, args)
        self.targets: list[dict[str, str]] = []

    def exports(self) -> Mapping[str, Any]:
        return {"targets": self.targets}

    def publish(self, targets: list[dict[str, str]]) -> None:
        self.targets = targets
        self.opts.on_exports()

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.events.append(f"stop {self.id}")

    async def update(self, args: Mapping[str, Any]) -> None:
        self.args = args

    async def finalize(self) -> None:
        self.events.append(f"finalize {self.id}")


class FakeStage(FakeSource):
    """Takes ``inputs`` (anything) so the test can build a chain in any phase."""

    name = "test.stage"
    schema = Schema(attrs=[Attr("inputs", "any", default=None)])

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id), "targets": []}

    def exports(self) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(self.id), "targets": self.targets}

    async def update(self, args: Mapping[str, Any]) -> None:
        self.args = args
        self.events.append(f"update {self.id}")


@pytest.fixture
def fake_types() -> Iterator[list[str]]:
    FakeSource.events = []
    stages = {}
    for phase in ("source", "process", "write"):
        stages[phase] = type(
            f"Fake_{phase}", (FakeStage,), {"name": f"test.{phase}", "phase": phase}
        )
    added = {"test.source": FakeSource, **{cls.name: cls for cls in stages.values()}}
    COMPONENT_TYPES.update(added)
    try:
        yield FakeSource.events
    finally:
        for name in added:
            COMPONENT_TYPES.pop(name, None)


async def test_exports_cascade_to_dependents(
    tmp_path: Path, fake_types: list[str]
) -> None:
    config = tmp_path / "c.alloy"
    config.write_text(
        'test.source "d" {}\n'
        'discovery.relabel "r" {\n'
        "  targets = test.source.d.targets\n"
        '  rule {\n    source_labels = ["name"]\n'
        '    regex = "keep-.*"\n    action = "keep"\n  }\n'
        "}\n"
        'test.process "sink" {\n  inputs = discovery.relabel.r.output\n}\n'
    )
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    try:
        source = agent.component("test.source.d")
        assert isinstance(source, FakeSource)
        sink = agent.component("test.process.sink")
        source.publish([{"name": "keep-1"}, {"name": "drop-1"}])
        for _ in range(100):
            if sink.args.get("inputs"):
                break
            await asyncio.sleep(0.01)
        assert agent.component("discovery.relabel.r").exports()["output"] == [
            {"name": "keep-1"}
        ]
        assert sink.args["inputs"] == [{"name": "keep-1"}]
        assert fake_types.count("update test.process.sink") == 1
    finally:
        await agent.aclose()


async def test_shutdown_stops_phase_by_phase_then_finalizes(
    tmp_path: Path, fake_types: list[str]
) -> None:
    config = tmp_path / "c.alloy"
    # Declared in reverse order on purpose: the order must come from the phases.
    config.write_text(
        'test.write "w" {}\n'
        'test.process "p" {\n  inputs = [test.write.w.receiver]\n}\n'
        'test.source "s" {}\n'
        'test.source "s2" {}\n'
    )
    agent = Agent(config, storage_path=tmp_path / "data")
    await agent.start()
    await agent.aclose()
    stops = [e for e in fake_types if e.startswith("stop")]
    assert stops[-2:] == ["stop test.process.p", "stop test.write.w"]
    assert set(stops[:2]) == {"stop test.source.s", "stop test.source.s2"}
    first_finalize = next(
        i for i, e in enumerate(fake_types) if e.startswith("finalize")
    )
    assert first_finalize > max(
        i for i, e in enumerate(fake_types) if e.startswith("stop")
    )


# -------------------------------------------------------------- with the Docker Engine

SEED = Path(__file__).resolve().parents[1] / "data" / "alloy" / "seed-config.alloy"
SEED_SERVICES = "(web-gateway|order-api|fulfillment-worker)"


@pytest.fixture
def service() -> str:
    """A container name unique to this test run.

    These tests run the seed pipeline with its keep-rule narrowed to this name, so that
    concurrent test sessions (which start their own seed-named containers) cannot
    leak lines into each other's fake Loki.
    """
    return f"minilog-it-{uuid.uuid4().hex[:10]}"


def seed_text(service: str) -> str:
    text = SEED.read_text()
    assert SEED_SERVICES in text
    return text.replace(SEED_SERVICES, f"({service})")


def seed_agent(tmp_path: Path, loki: FakeLoki, config: Path) -> Agent:
    return Agent(
        config,
        storage_path=tmp_path / "data",
        url_overrides={"http://loki:3100": loki.url},
    )


@pytest.mark.docker
async def test_reloads_keep_tailers_running_without_loss_or_duplicates(
    tmp_path: Path, loki: FakeLoki, docker_containers: Any, service: str
) -> None:
    seed = seed_text(service)
    config = tmp_path / "seed.alloy"
    config.write_text(seed)
    container = docker_containers(
        'i=0; while [ $i -lt 400 ]; do echo "n $i"; i=$((i+1)); sleep 0.01; done; '
        "sleep 60",
        name=service,
    )
    agent = seed_agent(tmp_path, loki, config)
    await agent.start()
    try:
        source = agent.component("loki.source.docker.app_logs")
        await loki.wait_for_entries(20, timeout=20)
        # An unrelated component added, then the writer's endpoint changed (new writer).
        config.write_text(seed + 'loki.echo "extra" {}\n')
        await agent.reload()
        config.write_text(
            seed.replace(
                'url = "http://loki:3100/loki/api/v1/push"',
                'url = "http://loki:3100/loki/api/v1/push"\n    batch_wait = "200ms"',
            )
        )
        await agent.reload()
        assert agent.component("loki.source.docker.app_logs") is source
        await loki.wait_for_entries(400, timeout=30)
    finally:
        await agent.aclose()
        container.remove(force=True)
    assert loki.lines() == [f"n {i}" for i in range(400)]


@pytest.mark.docker
async def test_restart_resumes_from_saved_positions(
    tmp_path: Path, loki: FakeLoki, docker_containers: Any, service: str
) -> None:
    config = tmp_path / "seed.alloy"
    config.write_text(seed_text(service))
    docker_containers(
        "for i in 1 2 3; do echo a$i; done; sleep 2; "
        "for i in 1 2 3; do echo b$i; done; sleep 60",
        name=service,
    )
    first = seed_agent(tmp_path, loki, config)
    await first.start()
    try:
        await loki.wait_for_entries(3, timeout=20)
    finally:
        await first.aclose()
    assert loki.lines()[:3] == ["a1", "a2", "a3"]
    positions = list((tmp_path / "data").rglob("positions.json"))
    assert [p.parent.name for p in positions] == ["loki.source.docker.app_logs"]

    loki.reset()
    second = seed_agent(tmp_path, loki, config)
    await second.start()
    try:
        await loki.wait_for_entries(3, timeout=20)
    finally:
        await second.aclose()
    # Nothing the first run delivered comes again: the first lines now are the b's.
    assert loki.lines()[:3] == ["b1", "b2", "b3"]


@pytest.mark.docker
async def test_relabel_rules_change_replaces_the_source_and_resumes_exactly(
    tmp_path: Path, loki: FakeLoki, docker_containers: Any, service: str
) -> None:
    extra_rule = (
        "  rule {\n"
        '    source_labels = ["__meta_docker_container_log_stream"]\n'
        '    target_label  = "stream"\n'
        "  }\n"
    )
    seed = seed_text(service)
    with_rules = (
        seed.replace(
            "  forward_to = [loki.write.endpoint.receiver]\n",
            "  forward_to = [loki.write.endpoint.receiver]\n"
            "  relabel_rules = discovery.relabel.extra.rules\n",
        )
        + 'discovery.relabel "extra" {\n  targets = []\n{}}\n'
    )
    config = tmp_path / "c.alloy"
    config.write_text(with_rules.replace("{}", ""))
    container = docker_containers(
        'i=0; while [ $i -lt 300 ]; do echo "n $i"; i=$((i+1)); sleep 0.01; done; '
        "sleep 60",
        name=service,
    )
    agent = seed_agent(tmp_path, loki, config)
    await agent.start()
    try:
        source = agent.component("loki.source.docker.app_logs")
        await loki.wait_for_entries(30, timeout=20)
        config.write_text(with_rules.replace("{}", extra_rule))
        await agent.reload()
        assert agent.component("loki.source.docker.app_logs") is source
        await loki.wait_for_entries(300, timeout=30)
    finally:
        await agent.aclose()
        container.remove(force=True)
    assert loki.lines() == [f"n {i}" for i in range(300)]
    streams = loki.streams()
    assert set(streams) == {
        f'{{service="{service}"}}',
        f'{{service="{service}", stream="stdout"}}',
    }
    assert streams[f'{{service="{service}", stream="stdout"}}']


async def test_logging_block_is_applied_on_start_and_reload(
    tmp_path: Path, loki: FakeLoki
) -> None:
    config = write_config(tmp_path / "c.alloy", loki)
    applied: list[LoggingConfig] = []
    agent = Agent(config, storage_path=tmp_path / "data", on_logging=applied.append)
    await agent.start()
    try:
        text = config.read_text()
        config.write_text('logging {\n  level = "warn"\n  format = "json"\n}\n' + text)
        await agent.reload()
    finally:
        await agent.aclose()
    assert applied == [LoggingConfig("info", "logfmt"), LoggingConfig("warn", "json")]


async def test_a_crashed_component_turns_unhealthy_and_the_rest_runs_on(
    tmp_path: Path, fake_types: list[str]
) -> None:
    crashed = asyncio.Event()

    class Crashing(FakeSource):
        name = "test.crash"

        async def run(self) -> None:
            crashed.set()
            raise RuntimeError("disk on fire")

    COMPONENT_TYPES["test.crash"] = Crashing
    try:
        config = tmp_path / "c.alloy"
        config.write_text('test.crash "c" {}\ntest.source "ok" {}\n')
        agent = Agent(config, storage_path=tmp_path / "data")
        await agent.start()
        try:
            await crashed.wait()
            for _ in range(3):  # let the task finish and its done-callback run
                await asyncio.sleep(0)
            assert agent.unhealthy_components() == ["test.crash.c"]
            info = {c["id"]: c for c in agent.components_info()}
            assert "disk on fire" in info["test.crash.c"]["message"]
            assert info["test.source.ok"]["health"] == "healthy"
        finally:
            await agent.aclose()
    finally:
        COMPONENT_TYPES.pop("test.crash", None)
