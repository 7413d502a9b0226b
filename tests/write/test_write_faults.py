"""loki.write under faults: outages past the retry budget, Retry-After, probing a down
endpoint, Loki refusing part of a push, a send loop that dies, and secrets.

``FakeLoki`` answers as scripted: plain statuses (``faults``), or a ``judge`` that
stores what Loki would store and answers with Loki 3.6's own texts
(``loki_messages``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable

import loki_messages as messages
import pytest
from agent_helpers import free_port
from prometheus_client import CollectorRegistry, generate_latest

from minilog.errors import (
    BrokenError,
    ConfigError,
    PushConnectionError,
    WouldBlockError,
)
from minilog.loki.push import BasicAuth, LokiPusher
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.testing import Answer, FakeLoki, Streams
from minilog.write import (
    ENTRY_OVERHEAD_BYTES,
    RATE_LIMITED_MAX_DELAY_S,
    EndpointConfig,
    Writer,
)

__all__: list[str] = []


def config(url: str, **options: object) -> EndpointConfig:
    options.setdefault("batch_wait", 0.02)
    options.setdefault("min_backoff_period", 0.001)
    options.setdefault("max_backoff_period", 0.005)
    return EndpointConfig(url, **options)  # type: ignore[arg-type]


def batch(
    labels: dict[str, str],
    *lines: str,
    delivery: Delivery | None = None,
    start: int = 1,
) -> StreamBatch:
    entries = [LogEntry(start + i, line) for i, line in enumerate(lines)]
    return StreamBatch(labels, entries, delivery)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def dropped(registry: CollectorRegistry, host: str, reason: str | None = None) -> float:
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name != "loki_write_dropped_entries_total":
                continue
            if s.labels["host"] == host and reason in (None, s.labels["reason"]):
                total += s.value
    return total


class Recorder:
    """A ``sleep`` for the writer that records each wait and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class FakeTime:
    """A clock that moves only when the writer sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay
        await asyncio.sleep(0)


async def poll(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """For state that offers no event (metrics): check until true, bounded."""
    try:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 - a metric offers no event
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# ------------------------------------------------------------------ outages


async def test_an_outage_past_the_retry_budget_keeps_everything_within_the_bound() -> (
    None
):
    port = free_port()
    url = f"http://127.0.0.1:{port}/loki/api/v1/push"
    one = 10 * (20 + ENTRY_OVERHEAD_BYTES)  # one stream batch of ten 20-byte lines
    registry = CollectorRegistry()
    writer = Writer(
        [
            config(
                url,
                max_backoff_retries=2,
                batch_size=200,
                queue_capacity=8 * one,
            )
        ],
        registry=registry,
    )
    host = f"127.0.0.1:{port}"
    settled: list[bool] = []
    loki = FakeLoki(port=port)
    sent = 0
    try:
        # Connection refused: retries run out, the endpoint is reported failing.
        await writer.send(batch({"a": "1"}, *(f"{sent + i:020d}" for i in range(10))))
        sent = 10
        await poll(
            lambda: sample(registry, "minilog_write_endpoint_failing", host=host) == 1,
            "failing",
        )
        # The producer goes on until the queue is full and send waits.
        while True:
            lines = [f"{sent + i:020d}" for i in range(10)]
            pending = asyncio.ensure_future(
                writer.send(
                    batch({"a": "1"}, *lines, delivery=Delivery(settled.append))
                )
            )
            done, _ = await asyncio.wait({pending}, timeout=0.2)
            sent += 10
            if not done:
                break
            assert max(writer.queued_bytes().values()) <= 8 * one + one
        assert settled == []  # nothing settled while Loki was away
        assert dropped(registry, host) == 0
        pending_entries = sample(registry, "minilog_write_pending_entries", host=host)
        assert 0 < pending_entries < sent
        await loki.start()
        await asyncio.wait_for(pending, 5)
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
        await loki.aclose()
    assert loki.lines() == [f"{i:020d}" for i in range(sent)]  # all, once, in order
    assert settled == [True] * (sent // 10 - 1)
    assert dropped(registry, host) == 0
    assert sample(registry, "minilog_write_endpoint_failing", host=host) == 0


@pytest.mark.parametrize(
    ("status", "headers", "options", "expected"),
    [
        (429, {"Retry-After": "7"}, {"max_backoff_period": 60.0}, 7.0),
        (503, {"Retry-After": "3600"}, {"max_backoff_period": 2.0}, 2.0),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, {}, 0.0),
        (
            500,
            {"Retry-After": "7"},
            {"min_backoff_period": 0.25, "max_backoff_period": 0.25},
            0.25,
        ),
        (429, {}, {"min_backoff_period": 5.0, "max_backoff_period": 60.0}, 1.0),
    ],
    ids=["429-seconds", "503-bounded", "429-date-past", "500-ignored", "429-capped"],
)
async def test_retry_after_is_honoured_within_max_backoff_period(
    loki: FakeLoki,
    status: int,
    headers: dict[str, str],
    options: dict[str, float],
    expected: float,
) -> None:
    loki.faults.respond(status, "busy", times=1, headers=headers)
    sleep = Recorder()
    async with Writer([config(loki.push_url, **options)], sleep=sleep) as writer:
        await writer.send(batch({"a": "1"}, "x"))
        await writer.flush()
    assert sleep.delays == [pytest.approx(expected)]
    assert expected <= max(
        RATE_LIMITED_MAX_DELAY_S, options.get("max_backoff_period", 0)
    )
    assert loki.lines() == ["x"]


async def test_a_recovered_endpoint_is_noticed_by_a_probe_not_by_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backoff is a minute; a probe every 20 ms sees Loki back and the push goes
    at once: the batch arrives well inside the test's bound."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/loki/api/v1/push"
    registry = CollectorRegistry()
    loki = FakeLoki(port=port)
    writer = Writer(
        [config(url, min_backoff_period=60.0, max_backoff_period=120.0)],
        registry=registry,
        probe_interval=0.02,
    )
    host = f"127.0.0.1:{port}"
    try:
        with caplog.at_level(logging.INFO, logger="minilog.write"):
            await writer.send(batch({"a": "1"}, "back"))
            await poll(
                lambda: (
                    sample(
                        registry, "loki_write_batch_retries_total", host=host, tenant=""
                    )
                    == 1
                ),
                "the first failure",
            )
            await loki.start()
            await loki.wait_for_entries(1, timeout=10)
            await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
        await loki.aclose()
    assert loki.events[-2:] == ["ready", "push"]  # the probe, then the push it allowed
    assert loki.events.count("push") == 1
    messages_ = [r.getMessage() for r in caplog.records if r.name == "minilog.write"]
    assert sum("cannot reach" in m for m in messages_) == 1  # once per outage
    assert any(url in m for m in messages_ if "cannot reach" in m)
    assert sum("answers again" in m for m in messages_) == 1


async def test_a_5xx_outage_ends_when_ready_turns_200(loki: FakeLoki) -> None:
    loki.faults.respond(500, "empty ring", times=1)
    loki.faults.ready_status = 503  # Loki starting: not ready
    writer = Writer(
        [config(loki.push_url, min_backoff_period=60.0, max_backoff_period=120.0)],
        probe_interval=0.02,
    )
    try:
        await writer.send(batch({"a": "1"}, "x"))
        await loki.wait_for(lambda: loki.events.count("ready") >= 2)
        loki.faults.ready_status = 200
        await loki.wait_for_entries(1, timeout=10)
    finally:
        await writer.aclose(drain_timeout=1)
    assert loki.events[0] == "push" and loki.events[-2:] == ["ready", "push"]
    assert set(loki.events[1:-1]) == {"ready"}


async def test_a_probe_that_cannot_see_the_failure_leaves_the_backoff_alone(
    loki: FakeLoki,
) -> None:
    """Loki says ready but pushes fail (a bad batch, say): no early retry."""
    loki.faults.respond(500, "no schema config found for time", times=1)
    time_ = FakeTime()
    async with Writer(
        [config(loki.push_url, min_backoff_period=10.0, max_backoff_period=10.0)],
        clock=time_.clock,
        sleep=time_.sleep,
        random=lambda: 0.5,
        probe_interval=1.0,
    ) as writer:
        await writer.send(batch({"a": "1"}, "x"))
        await writer.flush()
    assert loki.events == ["push", "ready", "push"]
    assert time_.delays == [pytest.approx(1.0), pytest.approx(9.0)]


async def test_behind_a_gateway_without_ready_the_probe_is_an_empty_push() -> None:
    loki = FakeLoki(path_prefix="/gw")
    await loki.start()
    loki.faults.ready_status = 404  # the gateway routes only the push path
    # Loki behind it still down: the push and the empty pushes probing it get 502.
    loki.faults.respond(502, "bad gateway")
    writer = Writer(
        [config(loki.push_url, min_backoff_period=60.0, max_backoff_period=120.0)],
        probe_interval=0.02,
    )
    try:
        await writer.send(batch({"a": "1"}, "x"))
        await loki.wait_for(lambda: loki.events.count("empty-push") >= 2)
        # Loki is back: an empty push gets its own answer (422), the push goes in.
        loki.faults.clear()
        await loki.wait_for_entries(1, timeout=10)
    finally:
        await writer.aclose(drain_timeout=1)
        await loki.aclose()
    assert loki.events[:2] == ["push", "ready"]
    assert loki.events.count("ready") == 1  # learnt once that /ready is not Loki's
    assert loki.events[-2:] == ["empty-push", "push"]


# ------------------------------------------------------------------ refusals


def new_stream_limiter(
    loki: FakeLoki, known: set[str], *, masked: bool = False
) -> dict[str, bool]:
    """Judge pushes as Loki's ingester does with its stream limit reached: streams not
    in ``known`` are refused; the answer names the last stream of the request if it
    was refused (``masked``: an earlier refusal is then not reported at all, as
    ``instance.Push`` overwrites its error per stream)."""
    state = {"full": True}

    def judge(streams: Streams) -> Answer | None:
        if not state["full"]:
            known.update(key for key, _ in streams)
            return None
        stored = [(k, e) for k, e in streams if k in known]
        refused = [k for k, _ in streams if k not in known]
        if not refused:
            return None
        last = streams[-1][0]
        if masked and last not in refused:
            return Answer(204, stored=stored)
        named = last if last in refused else refused[-1]
        shown = named[:-1] + f', service_name="{named.split(chr(34))[1]}"}}'
        return Answer(429, messages.stream_limit(shown), stored=stored)

    loki.judge = judge
    return state


async def test_a_stream_over_the_stream_limit_is_held_while_the_others_go_on(
    loki: FakeLoki,
) -> None:
    known = {'{app="old"}'}
    limiter = new_stream_limiter(loki, known)
    registry = CollectorRegistry()
    host = f"127.0.0.1:{loki.port}"
    results: dict[str, list[bool]] = {"old": [], "new": []}
    writer = Writer(
        [config(loki.push_url, min_backoff_period=0.02, max_backoff_period=0.05)],
        registry=registry,
    )
    try:
        await writer.send(batch({"app": "old"}, "o1"))
        await writer.flush()
        await writer.send(
            batch({"app": "old"}, "o2", delivery=Delivery(results["old"].append))
        )
        await writer.send(
            batch({"app": "new"}, "n1", delivery=Delivery(results["new"].append))
        )
        await loki.wait_for(lambda: "o2" in loki.lines())
        await loki.wait_for(lambda: results["old"] == [True])
        assert results["new"] == []
        # More of the held stream waits (its tailer stops); the others go on.
        more_new = asyncio.ensure_future(writer.send(batch({"app": "new"}, "n2")))
        with pytest.raises(WouldBlockError):
            writer.send_nowait(batch({"app": "new"}, "n-nowait"))
        flushed = asyncio.ensure_future(writer.flush())
        await writer.send(batch({"app": "old"}, "o3"))
        await loki.wait_for(lambda: "o3" in loki.lines())
        # The held stream keeps being retried on its own.
        await loki.wait_for(
            lambda: (
                sum(s == [('{app="new"}', [LogEntry(1, "n1")])] for _, s in loki.pushes)
                >= 2
            )
        )
        assert not more_new.done() and not flushed.done()
        assert sample(registry, "minilog_write_held_streams", host=host) == 1
        limiter["full"] = False
        await asyncio.wait_for(more_new, 5)
        await asyncio.wait_for(flushed, 5)
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    assert results == {"old": [True], "new": [True]}
    assert sorted(loki.lines()) == ["n1", "n2", "o1", "o2", "o3"]
    assert sample(registry, "loki_write_sent_entries_total", host=host, tenant="") == 5
    assert dropped(registry, host) == dropped(registry, host, "queue_is_full") == 1
    assert sample(registry, "minilog_write_held_streams", host=host) == 0


async def test_new_streams_loki_refused_without_saying_are_held_too(
    loki: FakeLoki,
) -> None:
    known = {'{app="old"}'}
    limiter = new_stream_limiter(loki, known, masked=True)
    writer = Writer(
        [config(loki.push_url, min_backoff_period=0.02, max_backoff_period=0.05)]
    )
    try:
        await writer.send(batch({"app": "old"}, "o1"))
        await writer.flush()
        for app in ("new1", "old", "new2"):
            await writer.send(batch({"app": app}, f"{app}-line"))
        await loki.wait_for(lambda: "old-line" in loki.lines())
        # New streams go last, so a refused one is the one Loki reports.
        assert [key for key, _ in loki.pushes[1][1]] == [
            '{app="old"}',
            '{app="new1"}',
            '{app="new2"}',
        ]
        limiter["full"] = False
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    assert sorted(loki.lines()) == ["new1-line", "new2-line", "o1", "old-line"]


def refuse_long_lines(loki: FakeLoki, limit: int) -> None:
    """Judge as Loki's distributor: drop lines over ``limit`` bytes, store the rest,
    answer 400 with the grouped messages."""

    def judge(streams: Streams) -> Answer | None:
        errors: dict[str, int] = {}
        stored = []
        for key, entries in streams:
            kept = [e for e in entries if len(e.line) <= limit]
            for e in entries:
                if len(e.line) > limit:
                    message = messages.line_too_long(key, len(e.line), limit)
                    errors[message] = errors.get(message, 0) + 1
            stored.append((key, kept))
        if not errors:
            return None
        many = len(errors) > 1
        body = "; ".join(
            f"{n} errors like: {m}" if many or n > 1 else m for m, n in errors.items()
        )
        return Answer(400, body, stored=stored)

    loki.judge = judge


async def test_a_400_for_one_over_long_line_drops_that_line_alone(
    loki: FakeLoki,
) -> None:
    """Until issue 16 all 250 entries were counted dropped (ingester_error)."""
    refuse_long_lines(loki, 100)
    registry = CollectorRegistry()
    host = f"127.0.0.1:{loki.port}"
    results: list[bool] = []
    lines = [f"{i:010d}" for i in range(249)] + ["x" * 500]
    async with Writer([config(loki.push_url)], registry=registry) as writer:
        await writer.send(
            batch({"app": "a"}, *lines, delivery=Delivery(results.append))
        )
        await writer.flush()
    assert len(loki.pushes) == 1  # never retried
    assert results == [True]
    assert dropped(registry, host, "line_too_long") == 1
    assert (
        sample(
            registry,
            "loki_write_dropped_bytes_total",
            host=host,
            tenant="",
            reason="line_too_long",
        )
        == 500
    )
    assert dropped(registry, host) == 1
    assert (
        sample(registry, "loki_write_sent_entries_total", host=host, tenant="") == 249
    )
    assert len(loki.lines()) == 249


@pytest.mark.parametrize("retry_on_http_429", [True, False])
async def test_a_429_for_one_new_stream_counts_that_stream_alone(
    loki: FakeLoki, retry_on_http_429: bool
) -> None:
    """Until issue 16 the 202 entries were retried whole, then all counted
    rate_limited, though Loki had stored 201 of them."""
    known = {f'{{app="s{i}"}}' for i in range(3)}
    limiter = new_stream_limiter(loki, known)
    registry = CollectorRegistry()
    host = f"127.0.0.1:{loki.port}"
    writer = Writer(
        [
            config(
                loki.push_url,
                min_backoff_period=0.02,
                max_backoff_period=0.05,
                retry_on_http_429=retry_on_http_429,
            )
        ],
        registry=registry,
    )
    try:
        for i in range(3):  # Loki has these streams already
            await writer.send(batch({"app": f"s{i}"}, "warm"))
        await writer.flush()
        for i in range(3):
            await writer.send(batch({"app": f"s{i}"}, *(f"{j}" for j in range(67))))
        await writer.send(batch({"app": "new"}, "the new one"))
        await loki.wait_for(lambda: len(loki.lines()) == 3 + 201)
        assert len(loki.pushes) == 2  # the 202 entries went in one push
        await poll(
            lambda: (
                sample(registry, "loki_write_sent_entries_total", host=host, tenant="")
                == 3 + 201
            ),
            "201 entries counted sent",
        )
        if retry_on_http_429:
            assert dropped(registry, host) == 0
            limiter["full"] = False
            await writer.flush()
            assert loki.lines()[-1] == "the new one"
        else:
            await writer.flush()
            assert dropped(registry, host, "stream_limited") == 1
            assert dropped(registry, host) == 1
    finally:
        await writer.aclose(drain_timeout=1)


async def test_rate_limited_entries_listed_by_loki_are_retried_alone(
    loki: FakeLoki,
) -> None:
    seen: list[list[str]] = []

    def judge(streams: Streams) -> Answer | None:
        ((key, entries),) = streams
        seen.append([e.line for e in entries])
        if len(seen) > 1:
            return None
        refused = entries[2:4]
        body = "\n".join(
            [
                *(messages.rate_limited_line(e.timestamp_ns, key) for e in refused),
                messages.trailer(len(refused), len(entries), key),
            ]
        )
        stored = [(key, [e for e in entries if e not in refused])]
        return Answer(429, body, stored=stored)

    loki.judge = judge
    async with Writer([config(loki.push_url)]) as writer:
        await writer.send(batch({"app": "a"}, "l0", "l1", "l2", "l3", "l4"))
        await writer.flush()
    assert seen == [["l0", "l1", "l2", "l3", "l4"], ["l2", "l3"]]
    assert sorted(loki.lines()) == ["l0", "l1", "l2", "l3", "l4"]


async def test_a_held_backlog_is_retried_a_batch_size_at_a_time(
    loki: FakeLoki,
) -> None:
    """Loki refuses a stream's part of a push whole when it exceeds the rate limit's
    burst: held entries that piled up go back at most ``batch_size`` at a time."""
    pushed: list[int] = []
    limited = {"on": True}

    def judge(streams: Streams) -> Answer | None:
        ((key, entries),) = streams
        pushed.append(len(entries))
        if not limited["on"]:
            return None
        listed = [messages.rate_limited_line(e.timestamp_ns, key) for e in entries]
        body = "\n".join(
            [*listed[:10], messages.trailer(len(entries), len(entries), key)]
        )
        return Answer(429, body)

    loki.judge = judge
    lines = [f"{i:099d}" for i in range(25)]  # three batches of 10, 10 and 5 lines
    async with Writer(
        [config(loki.push_url, batch_size=1000, min_backoff_period=0.05)]
    ) as writer:
        await writer.send(batch({"app": "a"}, *lines))
        await loki.wait_for(lambda: pushed[:3] == [10, 10, 5])
        limited["on"] = False
        await writer.flush()
    assert all(n <= 10 for n in pushed[3:])  # the 25 held: never more than a batch
    assert loki.lines() == lines


async def test_an_answer_not_understood_drops_the_batch_and_logs_it_once(
    loki: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    loki.faults.respond(
        400, "something Loki 4 says\nwith a detail on line two", times=1
    )
    with caplog.at_level(logging.WARNING, logger="minilog.write"):
        async with Writer([config(loki.push_url)], registry=registry) as writer:
            await writer.send(batch({"a": "1"}, "x", "y"))
            await writer.flush()
    host = f"127.0.0.1:{loki.port}"
    assert dropped(registry, host, "ingester_error") == 2
    (record,) = [r for r in caplog.records if r.name == "minilog.write"]
    assert "with a detail on line two" in record.getMessage()


# ------------------------------------------------------------------ a dead loop


async def test_a_send_loop_that_dies_fails_the_producers_waiting_for_room(
    loki: FakeLoki,
) -> None:
    async def broken_sleep(delay: float) -> None:
        raise RuntimeError("a bug in the retry wait")

    loki.faults.respond(500, "down", times=1)
    results: list[bool] = []
    writer = Writer(
        [config(loki.push_url, batch_size=10, queue_capacity=10)], sleep=broken_sleep
    )
    try:
        await writer.send(batch({"a": "1"}, "0123456789"))
        blocked = asyncio.ensure_future(
            writer.send(batch({"a": "1"}, "x", delivery=Delivery(results.append)))
        )
        with pytest.raises(BrokenError, match="a bug in the retry wait"):
            await asyncio.wait_for(blocked, 5)
        assert results == [False]
        with pytest.raises(BrokenError):
            await writer.send(batch({"a": "1"}, "later"))
        with pytest.raises(BrokenError):
            writer.send_nowait(batch({"a": "1"}, "later"))
        with pytest.raises(BrokenError):
            await writer.flush()
    finally:
        await asyncio.wait_for(writer.aclose(drain_timeout=1), 5)


# ------------------------------------------------------------------ secrets


async def test_url_userinfo_is_sent_as_basic_auth_and_shown_nowhere(
    loki: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = loki.push_url.replace("http://", "http://ops%40corp:s3cr%3Ait@")
    dead = f"http://ops:s3cr3t-dead@127.0.0.1:{free_port()}/loki/api/v1/push"
    registry = CollectorRegistry()
    with caplog.at_level(logging.DEBUG):
        writer = Writer(
            [
                config(secret_url, name="live"),
                config(dead, name="dead", min_backoff_period=0.01),
            ],
            registry=registry,
        )
        try:
            await writer.send(batch({"a": "1"}, "x"))
            await loki.wait_for_entries(1)
            await poll(
                lambda: (
                    sample(
                        registry,
                        "loki_write_batch_retries_total",
                        host=dead.split("@")[1].split("/")[0],
                        tenant="",
                    )
                    >= 2
                ),
                "retries of the dead endpoint",
            )
            states = repr(writer.endpoint_states())
        finally:
            await writer.aclose(drain_timeout=0.05)
    headers, _ = loki.pushes[0]
    assert (
        headers["Authorization"]
        == "Basic " + base64.b64encode(b"ops@corp:s3cr:it").decode()
    )
    exposed = generate_latest(registry).decode()
    shown = [exposed, states, caplog.text, repr(config(secret_url)), repr(config(dead))]
    for text in shown:
        assert "s3cr" not in text
        assert "ops" not in text
    assert f'host="127.0.0.1:{loki.port}"' in exposed


async def test_configured_credentials_never_show_and_a_header_wins(
    loki: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(
        loki.push_url.replace("http://", "http://u:url-pass@"),
        headers={"Authorization": "Bearer header-token", "X-Api-Key": "key-value"},
    )
    with caplog.at_level(logging.DEBUG):
        async with Writer([cfg]) as writer:
            await writer.send(batch({"a": "1"}, "x"))
            await writer.flush()
            states = repr(writer.endpoint_states())
    headers, _ = loki.pushes[0]
    # As Go's client: a configured Authorization header is sent as it is.
    assert headers["Authorization"] == "Bearer header-token"
    assert headers["X-Api-Key"] == "key-value"
    other = [
        config(loki.push_url, basic_auth=BasicAuth("user", "basic-pass")),
        config(loki.push_url, bearer_token="bearer-secret"),
    ]
    for text in (repr(cfg), states, caplog.text, *map(repr, other)):
        for secret in (
            "header-token",
            "key-value",
            "url-pass",
            "basic-pass",
            "bearer-secret",
        ):
            assert secret not in text


async def test_connection_errors_name_the_host_without_userinfo() -> None:
    pusher = LokiPusher(f"http://me:hunter2@127.0.0.1:{free_port()}/loki/api/v1/push")
    try:
        with pytest.raises(PushConnectionError) as info:
            await pusher.push(b"x")
    finally:
        await pusher.aclose()
    assert "hunter2" not in str(info.value) and "me:" not in str(info.value)
    assert "hunter2" not in pusher.url


def test_a_bad_url_is_reported_without_its_userinfo() -> None:
    with pytest.raises(ConfigError) as info:
        EndpointConfig("ftp://me:hunter2@loki:3100/push")
    assert "hunter2" not in str(info.value) and "ftp://loki:3100/push" in str(
        info.value
    )
