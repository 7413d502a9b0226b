"""Adaptive batching (minilog's extension of loki.write): a batch leaves before
``batch_wait`` once it is ``batch_linger`` old, only while no request of the endpoint
is in flight and it is not backing off; ``adaptive_batching = false`` is Alloy's.

The rules themselves are ``Batcher``'s (``test_batch.py``, injected clock); here the
sender applies them: ``batch_wait`` is an hour, so whatever arrives before the test
ends left early, and a hanging ``FakeLoki`` keeps a request in flight.
"""

from __future__ import annotations

import asyncio

import loki_messages as messages
import pytest
from prometheus_client import CollectorRegistry

from minilog.components import COMPONENT_TYPES
from minilog.config import Scope, parse
from minilog.config.ast import Block
from minilog.errors import ConfigError
from minilog.model import Delivery, LogEntry, StreamBatch
from minilog.testing import Answer, FakeLoki, Streams
from minilog.write import EndpointConfig, Writer

__all__: list[str] = []

HOUR = 3600.0


def config(url: str, **options: object) -> EndpointConfig:
    options.setdefault("batch_wait", HOUR)
    options.setdefault("batch_linger", 0.001)
    options.setdefault("min_backoff_period", 0.02)
    options.setdefault("max_backoff_period", 0.05)
    return EndpointConfig(url, **options)  # type: ignore[arg-type]


def line(app: str, text: str, ts: int = 1) -> StreamBatch:
    return StreamBatch({"app": app}, [LogEntry(ts, text)])


class Clock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def batches_sent(registry: CollectorRegistry, host: str) -> float:
    """Requests the send loop made of batches (a held stream's retries not counted)."""
    value = registry.get_sample_value(
        "loki_write_request_size_bytes_count", {"host": host, "tenant": ""}
    )
    return 0.0 if value is None else value


async def test_an_idle_endpoint_sends_a_lone_line_after_the_linger(
    loki: FakeLoki,
) -> None:
    async with Writer([config(loki.push_url)]) as writer:
        await writer.send(line("a", "alone"))
        await loki.wait_for_entries(1)  # batch_wait is an hour away
    assert loki.lines() == ["alone"]


async def test_while_a_request_is_in_flight_the_next_batch_fills_and_leaves_after(
    loki: FakeLoki,
) -> None:
    clock = Clock()
    loki.faults.hang()
    writer = Writer([config(loki.push_url, batch_linger=0.01)], clock=clock)
    try:
        await writer.send(line("a", "first"))
        clock.now += 0.02  # past the first batch's linger: it leaves, and hangs
        await loki.wait_for_requests(1)
        await writer.send(line("a", "second", 2))
        clock.now += 0.5  # far past the second batch's linger, still in flight
        await writer.send(line("b", "third", 3))
        loki.faults.clear()
        await loki.wait_for_entries(3)
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    # One request at a time; what came meanwhile left as one batch once it was done.
    assert [[key for key, _ in push.streams] for push in loki.pushes] == [
        ['{app="a"}'],
        ['{app="a"}', '{app="b"}'],
    ]
    assert loki.lines() == ["first", "second", "third"]


def stream_limiter(loki: FakeLoki, refused: str) -> dict[str, bool]:
    """Loki with its stream limit reached: stream ``refused`` is refused (429) while
    ``state["full"]``, every other stream is stored."""
    state = {"full": True}

    def judge(streams: Streams) -> Answer | None:
        if not state["full"] or all(key != refused for key, _ in streams):
            return None
        stored = [(key, entries) for key, entries in streams if key != refused]
        shown = refused[:-1] + f', service_name="{refused.split(chr(34))[1]}"}}'
        return Answer(429, messages.stream_limit(shown), stored=stored)

    loki.judge = judge
    return state


async def test_nothing_leaves_early_while_backing_off_and_held_streams_keep_order(
    loki: FakeLoki,
) -> None:
    limiter = stream_limiter(loki, '{app="held"}')
    registry = CollectorRegistry()
    host = f"127.0.0.1:{loki.port}"
    writer = Writer([config(loki.push_url)], registry=registry)
    try:
        # Loki refuses the stream for now: it is held and retried on its own.
        await writer.send(line("held", "h1"))
        await loki.wait_for_requests(1)
        # Then Loki fails outright: the held stream's retries meet an outage.
        loki.faults.respond(500, "ingester down")
        await loki.wait_for_requests(3)
        # More of the held stream waits for it (its tailer stops, order is kept).
        later = asyncio.ensure_future(writer.send(line("held", "h2", 2)))
        # Another stream, past its linger, with no request in flight: the endpoint is
        # backing off, so it waits for batch_wait (an hour) rather than leave early.
        await writer.send(line("other", "o1"))
        requests = loki.requests.count
        await loki.wait_for_requests(requests + 2)  # two more held retries
        assert batches_sent(registry, host) == 1  # "o1" never went
        assert not later.done()
        # Loki is back and takes the stream: the held entries go first, then the
        # waiting stream leaves early, and the held stream's next line after them.
        loki.faults.clear()
        limiter["full"] = False
        await asyncio.wait_for(later, 5)
        await loki.wait_for_entries(3)
        await writer.flush()
    finally:
        await writer.aclose(drain_timeout=1)
    order = [entry.line for _, entry in loki.entries]
    assert sorted(order) == ["h1", "h2", "o1"]
    assert order.index("h1") < order.index("h2")
    assert order.index("h1") < order.index("o1")  # not while the endpoint was down


class Settled:
    """Which batches settled, and an event per tenant to wait for it."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}

    def full(self, tenant: str) -> StreamBatch:
        """A batch that fills a 10-byte batch on its own."""
        event = self.events[tenant] = asyncio.Event()
        return StreamBatch(
            {"app": "a", "__tenant_id__": tenant},
            [LogEntry(1, "0123456789")],
            Delivery(lambda ok: event.set()),
        )

    async def wait(self, tenant: str) -> None:
        async with asyncio.timeout(10):
            await self.events[tenant].wait()


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "alloy"])
async def test_after_a_request_an_idle_endpoint_sends_what_lingered_unless_off(
    loki: FakeLoki, adaptive: bool
) -> None:
    """Each tenant has a batch of its own; full ones leave at once. Once the full
    batch "f" settled, the send loop looks at the lingering batch of "t" before it
    can see "g": adaptive, "t" goes next; off, it waits for its batch_wait (1 s on
    the test's clock) while "g" goes."""
    clock = Clock()
    settled = Settled()
    writer = Writer(
        [
            config(
                loki.push_url,
                adaptive_batching=adaptive,
                batch_wait=1.0,
                batch_linger=0.01,
                batch_size=10,
            )
        ],
        clock=clock,
    )
    try:
        await writer.send(
            StreamBatch({"app": "a", "__tenant_id__": "t"}, [LogEntry(1, "x")])
        )
        clock.now += 0.5  # past the linger, within batch_wait
        await writer.send(settled.full("f"))
        await settled.wait("f")
        await writer.send(settled.full("g"))
        await settled.wait("g")
        clock.now += 0.5  # batch_wait: "t" leaves whatever the setting
        await writer.send(settled.full("h"))
        await loki.wait_for_entries(4)
    finally:
        await writer.aclose(drain_timeout=1)
    tenants = [push.headers["X-Scope-OrgID"] for push in loki.pushes]
    assert tenants == (["f", "t", "g", "h"] if adaptive else ["f", "g", "h", "t"])


def block_of(text: str) -> Block:
    stmt = parse(text, "test.alloy").body[0]
    assert isinstance(stmt, Block)
    return stmt


def endpoint_of(body: str) -> EndpointConfig:
    block = block_of(
        f'loki.write "w" {{\n  endpoint {{\n    url = "http://x:1/p"\n{body}  }}\n}}'
    )
    cls = COMPONENT_TYPES["loki.write"]
    args = cls.parse_args(cls.decode(block, Scope()), block)
    (endpoint,) = args.endpoints
    assert isinstance(endpoint, EndpointConfig)
    return endpoint


def test_loki_write_takes_the_extension_arguments_at_the_default_stability() -> None:
    default = endpoint_of("")
    assert default.adaptive_batching is True
    assert default.batch_linger == EndpointConfig.batch_linger
    tuned = endpoint_of('    adaptive_batching = false\n    batch_linger = "20ms"\n')
    assert (tuned.adaptive_batching, tuned.batch_linger) == (False, 0.02)
    with pytest.raises(ConfigError, match="batch_linger must be >= 0"):
        endpoint_of('    batch_linger = "-1s"\n')
