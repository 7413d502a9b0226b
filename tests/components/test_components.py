"""Component adapters wired with fakes: arguments, exports, forwarding, updates."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_helpers import wait_until
from prometheus_client import CollectorRegistry, generate_latest

from minilog.agent.logsetup import component_logger
from minilog.components import COMPONENT_TYPES, Component, ComponentOptions
from minilog.components.base import Fanout, StableReceiver
from minilog.components.loki_write import drain_deadline
from minilog.config import Scope, decode_block, parse
from minilog.config.ast import Block
from minilog.errors import ClosedError, ConfigError
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.testing import FakeLoki


class Recorder:
    """A ``LogsReceiver`` that keeps what it gets."""

    def __init__(self) -> None:
        self.batches: list[StreamBatch] = []
        self.got = asyncio.Event()

    async def send(self, batch: StreamBatch) -> None:
        self.batches.append(batch)
        self.got.set()


def block_of(text: str) -> Block:
    stmt = parse(text, "test.alloy").body[0]
    assert isinstance(stmt, Block)
    return stmt


def prepare(
    text: str, exports: Mapping[str, Any] | None = None
) -> tuple[type[Component], dict[str, Any], Block]:
    block = block_of(text)
    cls = COMPONENT_TYPES[block.full_name]
    raw = cls.decode(block, Scope(components=dict(exports or {})))
    return cls, cls.parse_args(raw, block), block


def build(
    text: str,
    exports: Mapping[str, Any] | None = None,
    *,
    tmp_path: Path | None = None,
    on_exports: Any = None,
) -> Any:
    cls, args, block = prepare(text, exports)
    opts = ComponentOptions(
        id=block.id,
        data_path=(tmp_path or Path("/nonexistent")) / block.id,
        registry=CollectorRegistry(auto_describe=True),
        logger=component_logger(block.id),
        on_exports=on_exports or (lambda: None),
    )
    return cls(opts, args)


def batch(
    labels: dict[str, str], *lines: str, delivery: Delivery | None = None
) -> StreamBatch:
    return StreamBatch(
        labels,
        [LogEntry(1_700_000_000_000_000_000 + i, line) for i, line in enumerate(lines)],
        delivery,
    )


# ------------------------------------------------------------------ base


async def test_fanout_gives_each_receiver_its_own_copy_and_one_delivery_reference() -> (
    None
):
    outcomes: list[bool] = []
    a, b = Recorder(), Recorder()
    fan = Fanout([a, b])
    delivery = Delivery(outcomes.append)
    await fan.send(batch({"x": "1"}, "l1", delivery=delivery))
    assert delivery.pending == 2
    assert a.batches[0].labels == b.batches[0].labels == {"x": "1"}
    assert a.batches[0].labels is not b.batches[0].labels
    a.batches[0].settle()
    assert outcomes == []
    b.batches[0].settle()
    assert outcomes == [True]


async def test_fanout_abandons_the_references_of_receivers_it_never_reached() -> None:
    class Closed:
        async def send(self, batch: StreamBatch) -> None:
            batch.settle(abandoned=True)  # as a closed writer does
            raise ClosedError("closed")

    outcomes: list[bool] = []
    later = Recorder()
    with pytest.raises(ClosedError):
        await Fanout([Closed(), later, Recorder()]).send(
            batch({"x": "1"}, "l", delivery=Delivery(outcomes.append))
        )
    assert later.batches == []
    assert outcomes == [False]  # settled, as abandoned: the source reads it again


async def test_fanout_without_receivers_settles_the_batch() -> None:
    outcomes: list[bool] = []
    await Fanout().send(batch({"x": "1"}, "l", delivery=Delivery(outcomes.append)))
    assert outcomes == [True]


async def test_stable_receiver_follows_its_target_and_refuses_once_stopped() -> None:
    first, second = Recorder(), Recorder()
    receiver = StableReceiver("loki.write.x", first)
    await receiver.send(batch({"a": "b"}, "one"))
    receiver.target = second
    await receiver.send(batch({"a": "b"}, "two"))
    assert [b.entries[0].line for b in first.batches] == ["one"]
    assert [b.entries[0].line for b in second.batches] == ["two"]
    receiver.target = None
    outcomes: list[bool] = []
    with pytest.raises(ClosedError):
        await receiver.send(
            batch({"a": "b"}, "three", delivery=Delivery(outcomes.append))
        )
    assert outcomes == [False]


def test_every_supported_component_is_registered() -> None:
    assert set(COMPONENT_TYPES) >= {
        "discovery.docker",
        "discovery.relabel",
        "loki.source.docker",
        "loki.source.api",
        "loki.write",
        "loki.relabel",
        "loki.echo",
        "loki.process",
    }


def test_unknown_argument_is_a_positioned_error_listing_the_supported_ones() -> None:
    with pytest.raises(ConfigError) as info:
        prepare('loki.relabel "x" {\n  forward_to = []\n  max_cache = 3\n}')
    (diag,) = info.value.diagnostics
    assert (diag.line, diag.column) == (3, 3)
    assert "max_cache" in diag.message and "max_cache_size" in diag.message


def test_bad_rule_regex_is_positioned_at_its_rule_block() -> None:
    text = (
        'discovery.relabel "x" {\n'
        "  targets = []\n"
        "  rule {\n"
        '    regex = "("\n'
        '    target_label = "a"\n'
        "  }\n"
        "  rule {\n"
        '    action = "nonsense"\n'
        "  }\n"
        "}"
    )
    with pytest.raises(ConfigError) as info:
        prepare(text)
    diags = sorted(info.value.diagnostics, key=lambda d: d.line)
    # the regex error points at the unclosed "(" inside the string
    assert [(d.line, d.column) for d in diags] == [(4, 14), (8, 14)]
    assert "regexp" in diags[0].message
    assert "nonsense" in diags[1].message


# ------------------------------------------------------------------ discovery.relabel

SEED_RULES = """
  rule {
    source_labels = ["__meta_docker_container_name"]
    regex         = "/(.*)"
    target_label  = "service"
  }
  rule {
    source_labels = ["service"]
    regex         = "(web-gateway|order-api|fulfillment-worker)"
    action        = "keep"
  }
"""


async def test_discovery_relabel_keeps_and_rewrites_targets_like_the_seed() -> None:
    targets = [
        {
            "__meta_docker_container_name": "/web-gateway",
            "__meta_docker_container_id": "a",
        },
        {"__meta_docker_container_name": "/loki", "__meta_docker_container_id": "b"},
    ]
    text = 'discovery.relabel "logs" {\n  targets = src.t.targets\n' + SEED_RULES + "}"
    calls: list[int] = []
    comp = build(
        text, {"src.t": {"targets": targets}}, on_exports=lambda: calls.append(1)
    )
    out = comp.exports()["output"]
    assert out == [{**targets[0], "service": "web-gateway"}]
    rules = comp.exports()["rules"]

    # Same rules, new targets: output changes, the rules object does not.
    more = [
        *targets,
        {
            "__meta_docker_container_name": "/order-api",
            "__meta_docker_container_id": "c",
        },
    ]
    _, args, _ = prepare(text, {"src.t": {"targets": more}})
    await comp.update(args)
    assert [t["service"] for t in comp.exports()["output"]] == [
        "web-gateway",
        "order-api",
    ]
    assert comp.exports()["rules"] is rules
    assert calls == [1]

    # Same inputs again: no publish.
    await comp.update(args)
    assert calls == [1]


# ------------------------------------------------------------------ loki.relabel


async def test_loki_relabel_rewrites_labels_once_per_batch_and_drops_emptied_sets() -> (
    None
):
    sink = Recorder()
    text = (
        'loki.relabel "r" {\n'
        "  forward_to = [sink.s.receiver]\n"
        '  rule {\n    source_labels = ["app"]\n    target_label = "service"\n  }\n'
        '  rule {\n    regex = "app"\n    action = "labeldrop"\n  }\n'
        '  rule {\n    source_labels = ["service"]\n    regex = "drop-me"\n'
        '    action = "drop"\n  }\n'
        "}"
    )
    comp = build(text, {"sink.s": {"receiver": sink}})
    receiver = comp.exports()["receiver"]
    await receiver.send(batch({"app": "api"}, "a", "b"))
    outcomes: list[bool] = []
    await receiver.send(
        batch({"app": "drop-me"}, "c", delivery=Delivery(outcomes.append))
    )
    await receiver.send(batch({"app": "api"}, "d"))
    assert [(b.labels, [e.line for e in b.entries]) for b in sink.batches] == [
        ({"service": "api"}, ["a", "b"]),
        ({"service": "api"}, ["d"]),
    ]
    assert outcomes == [True]  # a dropped batch is settled, not left hanging
    reg = comp.metrics_registry()
    assert reg.get_sample_value("loki_relabel_entries_processed_total") == 4
    assert reg.get_sample_value("loki_relabel_entries_written_total") == 3
    assert reg.get_sample_value("loki_relabel_cache_hits_total") == 1


# ------------------------------------------------------------------ loki.echo


async def test_loki_echo_logs_each_entry(caplog: pytest.LogCaptureFixture) -> None:
    comp = build('loki.echo "e" {}')
    with caplog.at_level(logging.INFO):
        await comp.exports()["receiver"].send(
            batch({"service": "x", "__internal": "y"}, "hello")
        )
    records = [r for r in caplog.records if getattr(r, "entry", None) == "hello"]
    assert len(records) == 1
    assert records[0].labels == '{service="x"}'  # type: ignore[attr-defined]
    assert records[0].component_id == "loki.echo.e"  # type: ignore[attr-defined]


# ------------------------------------------------------------------ loki.write


async def test_loki_write_ships_and_keeps_its_receiver_across_an_endpoint_change() -> (
    None
):
    async with FakeLoki() as first, FakeLoki() as second:
        text = (
            'loki.write "w" {\n  endpoint {\n    url = "%s"\n'
            '    batch_wait = "50ms"\n  }\n'
            '  external_labels = {env = "test"}\n}'
        )
        comp = build(text % first.push_url)
        await comp.start()
        task = asyncio.create_task(comp.run())
        receiver = comp.exports()["receiver"]
        await receiver.send(batch({"service": "a"}, "one"))
        await first.wait_for_entries(1, timeout=5)

        _, args, _ = prepare(text % second.push_url)
        await comp.update(args)
        assert comp.exports()["receiver"] is receiver
        await receiver.send(batch({"service": "a"}, "two"))
        await second.wait_for_entries(1, timeout=5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        assert first.lines() == ["one"]
        assert second.lines() == ["two"]
        assert '{env="test", service="a"}' in second.streams()


def test_loki_write_needs_an_endpoint_and_gates_queue_config() -> None:
    with pytest.raises(ConfigError, match="at least one endpoint"):
        prepare('loki.write "w" {\n}')
    text = (
        'loki.write "w" {\n  endpoint {\n    url = "http://x:1/p"\n'
        '    queue_config {\n      capacity = "1MiB"\n    }\n  }\n}'
    )
    with pytest.raises(ConfigError, match="experimental") as info:
        prepare(text)
    assert info.value.diagnostics[0].line == 2
    cls, _, _ = prepare(
        'loki.write "w" {\n  endpoint {\n    url = "http://x:1/p"\n  }\n}'
    )
    raw = decode_block(block_of(text), cls.schema, Scope())
    args = cls.parse_args(raw, block_of(text), stability_level="experimental")
    assert args.endpoints[0].queue_capacity == 1 << 20


# ------------------------------------------------------------------ loki.source.api


async def test_loki_source_api_applies_labels_relabel_rules_and_receive_time() -> None:
    sink = Recorder()
    rules_text = (
        'discovery.relabel "rr" {\n  targets = []\n'
        '  rule {\n    source_labels = ["job"]\n    target_label = "service"\n  }\n}'
    )
    rules = build(rules_text).exports()["rules"]
    text = (
        'loki.source.api "in" {\n'
        '  http {\n    listen_address = "127.0.0.1"\n    listen_port = 0\n  }\n'
        "  forward_to = [sink.s.receiver]\n"
        '  labels = {source = "api"}\n'
        "  relabel_rules = rr.rules\n"
        "}"
    )
    comp = build(text, {"sink.s": {"receiver": sink}, "rr": {"rules": rules}})
    await comp.start()
    task = asyncio.create_task(comp.run())
    try:
        body = {"streams": [{"stream": {"job": "j1"}, "values": [["1000", "hello"]]}]}
        async with (
            aiohttp.ClientSession() as session,
            session.post(comp.url + "/loki/api/v1/push", json=body) as resp,
        ):
            assert resp.status == 204
        await asyncio.wait_for(sink.got.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (got,) = sink.batches
    assert got.labels == {"job": "j1", "source": "api", "service": "j1"}
    assert got.entries[0].line == "hello"
    assert got.entries[0].timestamp_ns != 1000  # replaced by the receive time


async def test_loki_source_api_receive_time_never_repeats() -> None:
    """Equal lines stamped with one receive time would be one line to Loki."""
    sink = Recorder()
    text = (
        'loki.source.api "in" {\n'
        '  http {\n    listen_address = "127.0.0.1"\n    listen_port = 0\n  }\n'
        "  forward_to = [sink.s.receiver]\n"
        "}"
    )
    comp = build(text, {"sink.s": {"receiver": sink}})
    await comp.start()
    task = asyncio.create_task(comp.run())
    values = [["1000", "retry"], ["1000", "retry"], ["1000", "retry"]]
    body = {"streams": [{"stream": {"job": "j"}, "values": values}]}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(
                    comp.url + "/loki/api/v1/push", json=body
                ) as resp:
                    assert resp.status == 204
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stamps = [e.timestamp_ns for b in sink.batches for e in b.entries]
    assert len(stamps) == 6
    assert stamps == sorted(set(stamps))  # strictly increasing, across requests too


async def test_loki_source_api_refuses_timestamps_loki_would_only_when_incoming() -> (
    None
):
    """With use_incoming_timestamp Loki's time checks apply (Loki's 400 and text);
    switched off by a reload, the receive time replaces the stamp and all pass."""
    sink = Recorder()
    text = (
        'loki.source.api "in" {{\n'
        '  http {{\n    listen_address = "127.0.0.1"\n    listen_port = 0\n  }}\n'
        "  forward_to = [sink.s.receiver]\n"
        "  use_incoming_timestamp = {incoming}\n"
        '  max_line_size = "1KiB"\n'
        "}}"
    )
    exports = {"sink.s": {"receiver": sink}}
    comp = build(text.format(incoming="true"), exports)
    await comp.start()
    task = asyncio.create_task(comp.run())
    now = time.time_ns()
    values = [["0", "epoch"], [str(now), "now"], [str(now + 3600 * 10**9), "ahead"]]
    values.append([str(now), "x" * 1025])
    body = {"streams": [{"stream": {"job": "j"}, "values": values}]}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(comp.url + "/loki/api/v1/push", json=body) as resp:
                assert resp.status == 400
                answer = await resp.text()
            server = comp.url
            _, new_args, _ = prepare(text.format(incoming="false"), exports)
            await comp.update(new_args)
            assert comp.url == server  # applied in place, no restart
            async with session.post(comp.url + "/loki/api/v1/push", json=body) as resp:
                assert resp.status == 400  # the long line only
                assert "max entry size '1024' bytes exceeded" in await resp.text()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "has timestamp too old: 1970-01-01T00:00:00Z, oldest acceptable" in answer
    assert "has timestamp too new: " in answer
    assert "max entry size '1024' bytes exceeded" in answer
    assert [e.line for b in sink.batches for e in b.entries] == [
        "now",
        "epoch",
        "now",
        "ahead",
    ]
    assert sink.batches[0].entries[0].timestamp_ns == now


def test_loki_source_api_http_block_takes_alloys_server_limits() -> None:
    from minilog._httpguard import ServerLimits

    _, args, _ = prepare(
        'loki.source.api "in" {\n'
        "  http {\n    listen_port = 0\n    conn_limit = 7\n"
        '    server_read_timeout = "5s"\n    server_write_timeout = "6s"\n'
        '    server_idle_timeout = "1m"\n  }\n'
        "  forward_to = []\n"
        '  max_inflight_push_requests_bytes = "8MiB"\n'
        "}"
    )
    assert args.server_limits == ServerLimits(
        read_timeout_s=5.0, write_timeout_s=6.0, idle_timeout_s=60.0, conn_limit=7
    )
    assert args.max_inflight_push_requests_bytes == 8 << 20
    _, defaults, _ = prepare('loki.source.api "in" {\n  forward_to = []\n}')
    assert defaults.server_limits == ServerLimits()
    assert defaults.max_line_size == 256 << 10
    assert defaults.reject_old_samples_max_age == 7 * 24 * 3600
    assert defaults.creation_grace_period == 600
    with pytest.raises(ConfigError, match="conn_limit must not be negative"):
        prepare(
            'loki.source.api "in" {\n  http {\n    conn_limit = -1\n  }\n'
            "  forward_to = []\n}"
        )


# ------------------------------------------------------------------ loki.process


async def test_loki_process_runs_stages_in_source_order() -> None:
    sink = Recorder()
    text = (
        'loki.process "p" {\n'
        "  forward_to = [sink.s.receiver]\n"
        '  stage.static_labels {\n    values = {stage = "one"}\n  }\n'
        '  stage.json {\n    expressions = {level = "lvl"}\n  }\n'
        '  stage.labels {\n    values = {level = ""}\n  }\n'
        '  stage.static_labels {\n    values = {stage = "two"}\n  }\n'
        "}"
    )
    comp = build(text, {"sink.s": {"receiver": sink}})
    assert [name for name, _ in comp.args.stages] == [
        "stage.static_labels",
        "stage.json",
        "stage.labels",
        "stage.static_labels",
    ]
    await comp.exports()["receiver"].send(
        batch({"service": "a"}, '{"lvl": "warn", "msg": "x"}')
    )
    (got,) = sink.batches
    assert got.labels == {"service": "a", "level": "warn", "stage": "two"}


def test_loki_process_stage_errors_are_positioned() -> None:
    text = (
        'loki.process "p" {\n'
        "  forward_to = []\n"
        '  stage.json {\n    expressions = {a = "b"}\n  }\n'
        '  stage.regex {\n    expression = "(unclosed"\n  }\n'
        "  stage.nonsense {}\n"
        "}"
    )
    with pytest.raises(ConfigError) as info:
        prepare(text)
    lines = sorted(d.line for d in info.value.diagnostics)
    assert lines[0] in (6, 7) and lines[-1] == 9
    assert any("stage.nonsense" in d.message for d in info.value.diagnostics)


async def test_loki_write_shutdown_deadline_caps_but_never_extends_the_drain() -> None:
    """Alloy's --feature.component-shutdown-deadline (10m by default) bounds a stop;
    the endpoint's own drain_timeout (15 s) still applies below it."""
    async with FakeLoki() as loki:
        loki.faults.hang()
        block = block_of(
            f'loki.write "w" {{\n  endpoint {{\n    url = "{loki.push_url}"\n  }}\n}}'
        )
        cls = COMPONENT_TYPES[block.full_name]
        args = cls.parse_args(cls.decode(block, Scope()), block)
        own = args.endpoints[0].drain_timeout
        assert own == 15.0

        def opts(deadline: float) -> ComponentOptions:
            return ComponentOptions(
                id=block.id,
                data_path=Path("/nonexistent"),
                registry=CollectorRegistry(auto_describe=True),
                logger=component_logger(block.id),
                drain_timeout=deadline,
            )

        assert drain_deadline(args.endpoints, 600.0) == own
        assert drain_deadline(args.endpoints, 0.2) == 0.2
        assert drain_deadline(args.endpoints, None) is None
        comp = cls(opts(0.2), args)
        await comp.start()
        task = asyncio.create_task(comp.run())
        await comp.exports()["receiver"].send(batch({"a": "1"}, "stuck"))
        await loki.wait_for_requests(1)
        task.cancel()
        async with asyncio.timeout(5):  # 0.2 s, not the endpoint's 15 s
            await asyncio.gather(task, return_exceptions=True)
        loki.faults.clear()


async def test_loki_write_metrics_survive_an_update() -> None:
    """A reload that rebuilds the writer keeps counting into the same series."""
    async with FakeLoki() as loki:

        def text(wait: str) -> str:
            return (
                f'loki.write "w" {{\n  endpoint {{\n    url = "{loki.push_url}"\n'
                f'    batch_wait = "{wait}"\n  }}\n}}'
            )

        comp = build(text("10ms"))
        registry = comp.opts.registry
        await comp.start()
        task = asyncio.create_task(comp.run())
        try:
            receiver = comp.exports()["receiver"]
            await receiver.send(batch({"a": "1"}, "before"))
            await loki.wait_for_entries(1)
            _, args, _ = prepare(text("20ms"))
            await comp.update(args)
            await receiver.send(batch({"a": "1"}, "after"))
            await loki.wait_for_entries(2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sent = registry.get_sample_value(
            "loki_write_sent_entries_total",
            {"host": f"127.0.0.1:{loki.port}", "tenant": ""},
        )
        assert sent == 2


async def test_loki_write_shows_no_credential_in_debug_info_or_metrics() -> None:
    async with FakeLoki() as loki:
        url = loki.push_url.replace("http://", "http://tenant1:url-secret@")
        comp = build(
            f'loki.write "w" {{\n  endpoint {{\n    url = "{url}"\n'
            '    bearer_token = "token-secret"\n'
            '    headers = {"X-Api-Key" = "header-secret"}\n  }\n}'
        )
        await comp.start()
        task = asyncio.create_task(comp.run())
        try:
            await comp.exports()["receiver"].send(batch({"a": "1"}, "x"))
            await loki.wait_for_entries(1)
            info = repr(comp.debug_info())
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        metrics = generate_latest(comp.opts.registry).decode()
        for secret in ("url-secret", "tenant1", "token-secret", "header-secret"):
            assert secret not in info
            assert secret not in metrics
        assert loki.push_url in info  # the URL itself, without userinfo
        assert f'host="127.0.0.1:{loki.port}"' in metrics
        # The URL's userinfo is the credential sent (as Go's client does: before the
        # bearer token), and the headers go as configured.
        assert loki.requests.last_headers["Authorization"].startswith("Basic ")
        assert loki.requests.last_headers["X-Api-Key"] == "header-secret"


async def test_loki_write_is_unhealthy_while_an_endpoint_fails_past_its_retries() -> (
    None
):
    """Entries are held, not dropped, once the retries run out: the component says
    so until Loki accepts them, then is healthy again."""
    async with FakeLoki() as loki:
        loki.faults.respond(500, "ingester unavailable")
        comp = build(
            f'loki.write "w" {{\n  endpoint {{\n    url = "{loki.push_url}"\n'
            '    batch_wait = "10ms"\n    min_backoff_period = "10ms"\n'
            '    max_backoff_period = "20ms"\n    max_backoff_retries = 2\n  }\n}'
        )
        await comp.start()
        task = asyncio.create_task(comp.run())
        try:
            assert comp.health().state == "healthy"
            await comp.exports()["receiver"].send(batch({"a": "1"}, "held"))
            await wait_until(
                lambda: comp.health().state == "unhealthy", 10, "unhealthy"
            )
            message = comp.health().message
            assert "failing past its retries, 1 entries held" in message
            assert f"127.0.0.1:{loki.port}" in message
            loki.faults.clear()
            await loki.wait_for_entries(1)
            await wait_until(lambda: comp.health().state == "healthy", 10, "healthy")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert loki.lines() == ["held"]
