"""One endpoint's send side: the retry loop, backoff, probes, refusals, drain.

The consumer side of an endpoint, as aiokafka's ``Sender`` is its producer's. A
``Sender`` owns one task, which runs three loops in a ``TaskGroup``: sending ready
batches, compacting the backlog (``Accumulator.run_compactor``) and retrying held
streams. If any of them dies of a bug the group ends, and the task breaks the
accumulator: every producer waiting for room, and every later ``send``, fails with
``BrokenError`` instead of waiting for ever.

Delivery rule: an entry is settled only when Loki accepted it or finally refused it
(a 4xx other than 429; a 429 too when ``retry_on_http_429`` is off). An outage
(connection refused or reset, timeout, DNS, 5xx, 429) never drops anything: the batch
is retried until Loki answers, whatever ``max_backoff_retries`` says, and the bounded
queue makes producers wait meanwhile. What Loki's answers mean is ``loki.refusals``'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from minilog.backoff import Backoff
from minilog.errors import (
    ClientRequestError,
    DecodeError,
    PushConnectionError,
    PushError,
    RateLimitedError,
)
from minilog.loki.push import PushTransport
from minilog.loki.refusals import Refusal, RefusalPlan, parse_refusal, plan_refusal
from minilog.loki.wire import decode_push_request, decompress
from minilog.model import Delivery, LogEntry, entries_size
from minilog.write.accumulator import Accumulator, Held, Pending, leading_chunk
from minilog.write.batch import Batch
from minilog.write.config import EndpointConfig
from minilog.write.metrics import WriteMetrics

__all__ = ["PROBE_INTERVAL_S", "RATE_LIMITED_MAX_DELAY_S", "EndpointHealth", "Sender"]

_log = logging.getLogger("minilog.write")

#: While a retry waits longer than this after a connection failure or a 5xx, the
#: endpoint is probed this often (``LokiPusher.probe``), and the push is retried as
#: soon as it answers again: recovery is seen within about a second however long the
#: backoff has grown, without sending batches at a down endpoint.
PROBE_INTERVAL_S = 1.0
#: Longest wait after a 429 without ``Retry-After``. Loki answers a rate limit from
#: its token bucket before storing anything, and the bucket refills continuously:
#: waiting longer only delays the data, and a retry a second costs Loki one refused
#: request. (Alloy backs off to ``max_backoff_period``, minutes.)
RATE_LIMITED_MAX_DELAY_S = 1.0
#: While an endpoint stays down, one summary line this often instead of one per retry.
_RETRY_LOG_INTERVAL_S = 60.0
#: Refused requests logged per endpoint within _REFUSAL_LOG_WINDOW_S; more are counted
#: and summed up in the next line.
_REFUSAL_LOG_BURST = 10
_REFUSAL_LOG_WINDOW_S = 60.0
#: Loki's answer text quoted in a log line, at most.
_LOGGED_BODY_CHARS = 2000

#: One push's outcome: ``None`` when Loki took it all, else the error and, for a 4xx,
#: what Loki says it refused.
_Answer = tuple[PushError, Refusal | None] | None


@dataclass(slots=True)
class _Outage:
    """An endpoint that stopped answering (or answers 5xx/429), until it answers."""

    started: float
    last_logged: float
    attempts: int = 0
    last_error: str = ""
    #: ``max_backoff_retries`` attempts failed: reported once, gauge set.
    failing: bool = False


class _LogBudget:
    """At most ``burst`` lines per ``window`` seconds; the rest are counted."""

    __slots__ = ("_burst", "_clock", "_times", "_window", "suppressed")

    def __init__(self, burst: int, window: float, clock: Callable[[], float]) -> None:
        self._burst = burst
        self._window = window
        self._clock = clock
        self._times: deque[float] = deque()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock()
        while self._times and now - self._times[0] >= self._window:
            self._times.popleft()
        if len(self._times) >= self._burst:
            self.suppressed += 1
            return False
        self._times.append(now)
        return True

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


class EndpointHealth:
    """What the shards of one endpoint share: its outage (one, logged once, whichever
    shard saw Loki fail or answer again) and the budget of refusal log lines."""

    __slots__ = ("accumulators", "outage", "refusal_log")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.outage: _Outage | None = None
        self.refusal_log = _LogBudget(_REFUSAL_LOG_BURST, _REFUSAL_LOG_WINDOW_S, clock)
        #: Every shard's queue: held streams that waited out an outage are due in
        #: all of them once one shard sees Loki answer.
        self.accumulators: list[Accumulator] = []

    def pending_entries(self) -> int:
        """Entries queued in all the endpoint's shards, for log lines."""
        return sum(acc.pending_entries for acc in self.accumulators)


def _fallback_reason(exc: PushError) -> str:
    """Alloy's reason for a request refused as a whole."""
    return "rate_limited" if isinstance(exc, RateLimitedError) else "ingester_error"


def _quoted(exc: PushError) -> str:
    """Loki's whole answer, for a log line about an answer that was not understood."""
    text = exc.response_text.strip()
    if len(text) > _LOGGED_BODY_CHARS:
        text = text[:_LOGGED_BODY_CHARS] + "..."
    return f" (Loki's answer: {text!r})"


class Sender:
    """Ships one endpoint's queue (``accumulator``) to Loki through ``transport``.

    Owns its task: ``start()`` creates it (idempotent), ``drain()`` ends it and awaits
    it. ``flush()`` waits for what was queued so far.

    Args:
        config: the endpoint.
        accumulator: its queue.
        metrics: where ``loki_write_*`` counts go.
        transport: the endpoint's HTTP side (``LokiPusher``, or a fake).
        clock: monotonic seconds, for retry deadlines.
        random: jitter source for the retry backoff.
        sleep: how retries wait (``asyncio.sleep``).
        probe_interval: seconds between probes of a down endpoint.
        health: shared with the endpoint's other shards (its own if ``None``).
        task_name: names the task (the endpoint's name by default).
    """

    __slots__ = (
        "_attempts",
        "_attempts_in",
        "_clock",
        "_health",
        "_probe_interval",
        "_random",
        "_sleep",
        "_task",
        "_task_name",
        "accumulator",
        "config",
        "display_url",
        "draining",
        "host",
        "metrics",
        "transport",
    )

    def __init__(
        self,
        config: EndpointConfig,
        accumulator: Accumulator,
        metrics: WriteMetrics,
        *,
        transport: PushTransport,
        clock: Callable[[], float],
        random: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        probe_interval: float = PROBE_INTERVAL_S,
        health: EndpointHealth | None = None,
        task_name: str = "",
    ) -> None:
        self.config = config
        self.host = config.host
        self.display_url = config.display_url
        self.accumulator = accumulator
        self.metrics = metrics
        self.transport = transport
        self._clock = clock
        self._random = random
        self._sleep = sleep
        self._probe_interval = probe_interval
        self._task: asyncio.Task[None] | None = None
        self._task_name = task_name or config.name
        self._health = health if health is not None else EndpointHealth(clock)
        self._health.accumulators.append(accumulator)
        self.draining = False
        # This shard's failed attempts in the endpoint's current outage: Alloy counts
        # max_backoff_retries per batch, and each shard retries its own.
        self._attempts = 0
        self._attempts_in: _Outage | None = None

    # -- state for gauges and the UI

    @property
    def failing(self) -> bool:
        outage = self._health.outage
        return outage is not None and outage.failing

    @property
    def pending_entries(self) -> int:
        return self.accumulator.pending_entries

    @property
    def held_stream_count(self) -> int:
        return self.accumulator.held_stream_count

    def state(self) -> dict[str, Any]:
        outage = self._health.outage
        acc = self.accumulator
        return {
            "name": self.config.name,
            "url": self.display_url,
            "failing": self.failing,
            "down_since_s": None
            if outage is None
            else round(self._clock() - outage.started, 3),
            "pending_entries": acc.pending_entries,
            "held_streams": sorted(key for _, key in acc.held),
            "queued_bytes": acc.queued_bytes,
        }

    # -- the task

    def start(self) -> None:
        """Start the send task (a no-op when it runs, or the endpoint is broken)."""
        if self._task is None and self.accumulator.broken is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"loki.write endpoint {self._task_name}"
            )
            self.metrics.track(self)

    async def _run(self) -> None:
        """The send loop, the compactor and the held-stream retries, as one unit."""
        name = self._task_name
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send_loop(), name=f"loki.write send {name}")
                group.create_task(
                    self.accumulator.run_compactor(),
                    name=f"loki.write compactor {name}",
                )
                group.create_task(self._run_held(), name=f"loki.write held {name}")
        except* Exception as failed:  # noqa: BLE001 - a bug, reported and handled
            # A bug: whoever waits for room, or for a flush, would wait forever.
            exc = _first_leaf(failed)
            self.accumulator.break_(exc)
            _log.error(
                "loki.write endpoint %s (%s): the send task failed; sends to it fail "
                "from now on",
                name,
                self.display_url,
                exc_info=exc,
            )

    async def _send_loop(self) -> None:
        acc = self.accumulator
        while True:
            item = acc.take_next()
            if item is not None:
                await self._deliver(item)
                continue
            if self.draining and acc.cut_all():
                continue
            acc.ready_event.clear()
            deadline = acc.next_deadline(early=self.sends_early)
            if deadline is None:
                await acc.ready_event.wait()
                continue
            delay = deadline - self._clock()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await acc.ready_event.wait()
                except TimeoutError:
                    pass
            # Whatever happened meanwhile (a held stream's retry, an outage) is
            # looked at again before a batch leaves early.
            acc.cut_expired(early=self.sends_early)

    def wake(self) -> None:
        self.accumulator.ready_event.set()

    @property
    def sends_early(self) -> bool:
        """Whether a batch past its linger may leave now (adaptive batching): no
        request of this endpoint is in flight, a held stream's retry included, and
        the endpoint is not backing off. Otherwise batches keep filling until
        ``batch_wait``, or until the request in flight is done."""
        acc = self.accumulator
        if acc.batcher.linger is None or acc.inflight is not None:
            return False
        if self._health.outage is not None:
            return False
        return not any(held.inflight for held in acc.held.values())

    # -- sending a batch

    async def _deliver(self, item: Pending) -> None:
        acc = self.accumulator
        host, tenant = self.host, item.tenant
        self.metrics.see_tenant(host, tenant)
        try:
            body = item.body if not isinstance(item, Batch) else await acc.encode(item)
        except Exception:  # noqa: BLE001 - a bug in encoding must not kill the send loop
            _log.exception(
                "cannot encode batch for %s, dropping %d entries",
                self.display_url,
                item.entry_count,
            )
            self.metrics.dropped(
                host, tenant, "ingester_error", item.entry_count, item.size_bytes
            )
            acc.finish(item)
            return
        size = len(body)
        self.metrics.encoded_bytes.labels(host).inc(size)
        self.metrics.request_size.labels(host, tenant).observe(size)
        backoff = self._backoff()
        while True:
            answer = await self._attempt(body, tenant)
            if answer is None:
                self._answered()
                acc.confirmed.confirm(tenant, item.stream_keys())
                self.metrics.sent(host, tenant, item.entry_count, size)
                acc.finish(item)
                return
            exc, refusal = answer
            if self._is_outage(refusal):
                await self._back_off(exc, backoff, tenant)
                continue
            plan = None
            if refusal is not None and not refusal.whole:
                plan = plan_refusal(
                    refusal,
                    self._streams_of(item),
                    hold_retriable=self.config.retry_on_http_429,
                    unconfirmed=acc.confirmed.unconfirmed(tenant, item.stream_keys()),
                )
                if plan.retry_whole:
                    await self._back_off(exc, backoff, tenant)
                    continue
            self._answered()
            assert refusal is not None  # outage-type answers were retried above
            self._refused(item, size, exc, refusal, plan)
            return

    async def _attempt(self, body: bytes, tenant: str) -> _Answer:
        """One push: ``None`` when Loki took it all, else the error and, for a 4xx,
        what Loki says it refused."""
        started = time.perf_counter()
        host = self.host
        try:
            status = await self.transport.push(body, tenant=tenant)
        except PushError as exc:
            self.metrics.request_duration.labels(
                str(exc.status or -1), host, tenant
            ).observe(time.perf_counter() - started)
            refusal = None
            if exc.status is not None and isinstance(
                exc, (RateLimitedError, ClientRequestError)
            ):
                refusal = parse_refusal(exc.status, exc.response_text)
            return exc, refusal
        except asyncio.CancelledError:
            self.metrics.request_duration.labels("-1", host, tenant).observe(
                time.perf_counter() - started
            )
            raise
        self.metrics.request_duration.labels(str(status), host, tenant).observe(
            time.perf_counter() - started
        )
        return None

    def _is_outage(self, refusal: Refusal | None) -> bool:
        """Retry the whole request: no answer, a 5xx, or Loki's flow control for the
        whole request (unless ``retry_on_http_429`` is off)."""
        if refusal is None:
            return True
        return refusal.whole and refusal.retriable and self.config.retry_on_http_429

    def _streams_of(self, item: Pending) -> dict[str, list[LogEntry]]:
        if isinstance(item, Batch):
            return item.streams
        try:
            # Compacted: the request itself holds the entries (the error path only).
            return dict(decode_push_request(decompress(item.body)))
        except DecodeError:
            _log.exception("cannot decode a batch this process encoded")
            return {}

    def _refused(
        self,
        item: Pending,
        size: int,
        exc: PushError,
        refusal: Refusal,
        plan: RefusalPlan | None,
    ) -> None:
        """Settle a batch Loki refused in whole or in part: count what it refused,
        count the rest as sent, hold what it refused for now."""
        acc = self.accumulator
        host, tenant = self.host, item.tenant
        if plan is None or not plan.understood:
            reason = refusal.reason if refusal.understood else _fallback_reason(exc)
            self.metrics.dropped(host, tenant, reason, item.entry_count, size)
            self._log_refusal(
                "dropping batch for %s (tenant %r): %d entries refused (%s): %s%s",
                self.display_url,
                tenant,
                item.entry_count,
                reason,
                exc,
                ""
                if refusal.understood and (plan is None or plan.understood)
                else _quoted(exc),
            )
            acc.finish(item)
            return
        for reason, (count, dropped_bytes) in plan.dropped.items():
            self.metrics.dropped(host, tenant, reason, count, dropped_bytes)
        held_entries = plan.held_entries
        stored = max(0, item.entry_count - plan.dropped_entries - held_entries)
        if stored:
            self.metrics.sent(host, tenant, stored, size)
        acc.confirmed.confirm(
            tenant,
            [
                key
                for key in item.stream_keys()
                if key not in plan.held and key not in plan.unstored
            ],
        )
        for key, entries in plan.held.items():
            deliveries = item.take_deliveries(frozenset((key,)))
            self._hold(
                tenant, key, entries, deliveries, item.seq, plan.held_reasons[key], exc
            )
        dropped = ", ".join(f"{n} {reason}" for reason, (n, _) in plan.dropped.items())
        self._log_refusal(
            "Loki refused part of a batch for %s (tenant %r): %s dropped, %d held for "
            "a retry of their own (%s), %d stored: %s",
            self.display_url,
            tenant,
            dropped or "none",
            held_entries,
            ", ".join(plan.held) or "no stream",
            stored,
            exc,
        )
        acc.finish(item, settled=item.entry_count - held_entries)

    def _log_refusal(self, message: str, *args: object) -> None:
        budget = self._health.refusal_log
        if not budget.allow():
            return
        suppressed = budget.take_suppressed()
        if suppressed:
            message += " (%d more refused requests not logged)"
            args = (*args, suppressed)
        _log.warning(message, *args)

    # -- outages: retry, probe, log once

    def _backoff(self) -> Backoff:
        config = self.config
        return Backoff(
            config.min_backoff_period,
            config.max_backoff_period,
            random=self._random,
        )

    def _retry_delay(self, exc: PushError, backoff: Backoff) -> tuple[float, bool]:
        """Seconds to wait before the next attempt, and whether probing may end it."""
        delay = backoff.next_delay()
        if exc.retry_after is not None and exc.status in (429, 503):
            # The server said when: honoured, within max_backoff_period.
            return max(0.0, min(exc.retry_after, self.config.max_backoff_period)), False
        if isinstance(exc, RateLimitedError):
            return min(delay, RATE_LIMITED_MAX_DELAY_S), False
        return delay, True

    async def _back_off(self, exc: PushError, backoff: Backoff, tenant: str) -> None:
        delay, probe = self._retry_delay(exc, backoff)
        self._failed(exc, delay, tenant)
        if probe and delay > self._probe_interval:
            # A refused connection is a failed probe already; a 5xx is not (a probe
            # may not see what made it fail).
            await self._wait_probing(delay, isinstance(exc, PushConnectionError))
        else:
            await self._sleep(delay)

    async def _wait_probing(self, delay: float, seen_down: bool) -> None:
        """Sleep ``delay`` seconds, or less: until a probe sees the endpoint answer
        again after one saw it down."""
        deadline = self._clock() + delay
        timeout = min(self.config.remote_timeout, max(self._probe_interval, 1.0))
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            # A little jitter: agents that lost the same Loki do not all come back at
            # the same instant.
            step = self._probe_interval * (0.9 + 0.2 * self._random())
            await self._sleep(min(remaining, step))
            if self._clock() >= deadline:
                return
            if await self.transport.probe(timeout):
                if seen_down:
                    _log.debug("%s answers again: retrying now", self.display_url)
                    return
                # Up from the start: the probe cannot see what fails; back off.
                await self._sleep(max(0.0, deadline - self._clock()))
                return
            seen_down = True

    def _failed(self, exc: PushError, delay: float, tenant: str) -> None:
        now = self._clock()
        outage = self._health.outage
        if outage is None:
            outage = self._health.outage = _Outage(started=now, last_logged=now)
            self._log_outage_start(exc)
        outage.attempts += 1
        outage.last_error = str(exc)
        if self._attempts_in is not outage:
            self._attempts_in, self._attempts = outage, 0
        self._attempts += 1
        self.metrics.batch_retries.labels(self.host, tenant).inc()
        limit = self.config.max_backoff_retries
        if limit and self._attempts >= limit and not outage.failing:
            outage.failing = True
            outage.last_logged = now
            _log.error(
                "loki.write endpoint %s (%s) failing: %d attempts in a row failed "
                "(max_backoff_retries = %d), last: %s. %d entries are held, not "
                "dropped, and retried at least every %gs (sooner once it answers)",
                self.config.name,
                self.display_url,
                self._attempts,
                limit,
                exc,
                self._health.pending_entries(),
                self.config.max_backoff_period,
            )
        elif now - outage.last_logged >= _RETRY_LOG_INTERVAL_S:
            outage.last_logged = now
            _log.warning(
                "loki.write endpoint %s (%s) still failing after %.0fs (%d attempts): "
                "%s; %d entries held, next try in %.3gs",
                self.config.name,
                self.display_url,
                now - outage.started,
                outage.attempts,
                exc,
                self._health.pending_entries(),
                delay,
            )
        else:
            _log.debug(
                "error sending batch to %s (tenant %r), retry in %.3fs: %s",
                self.display_url,
                tenant,
                delay,
                exc,
            )

    def _log_outage_start(self, exc: PushError) -> None:
        if isinstance(exc, PushConnectionError):
            _log.warning(
                "loki.write endpoint %s cannot reach %s: %s. Its entries are held, not "
                "dropped, and retried until Loki answers: check the endpoint's url "
                "and that Loki runs and can be reached from here",
                self.config.name,
                self.display_url,
                exc,
            )
        else:
            _log.warning(
                "loki.write endpoint %s: %s %s. Its entries are held, not dropped, "
                "and retried until Loki accepts them",
                self.config.name,
                self.display_url,
                exc,
            )

    def _answered(self) -> None:
        """Loki answered (accepted, or refused for good): an outage is over."""
        health = self._health
        outage = health.outage
        if outage is None:
            return
        health.outage = None
        _log.info(
            "loki.write endpoint %s (%s) answers again after %.1fs down (%d failed "
            "attempts); %d entries held meanwhile are being sent",
            self.config.name,
            self.display_url,
            self._clock() - outage.started,
            outage.attempts,
            health.pending_entries(),
        )
        # Held streams that waited out the outage need not wait longer, in any shard.
        now = self._clock()
        for acc in health.accumulators:
            for held in acc.held.values():
                if held.reason == "outage":
                    held.due = now
            acc.held_event.set()

    # -- held streams

    def _hold(
        self,
        tenant: str,
        key: str,
        entries: list[LogEntry],
        deliveries: list[Delivery],
        seq: int,
        reason: str,
        exc: PushError,
    ) -> None:
        """Keep ``entries`` of stream ``key`` for a retry of their own (own backoff)."""
        backoff = self._backoff()
        due = self._clock() + self._held_delay(exc, backoff, reason)
        self.accumulator.hold(
            Held(tenant, key, list(entries), deliveries, seq, reason, backoff, due)
        )

    def _held_delay(self, exc: PushError, backoff: Backoff, reason: str) -> float:
        delay = backoff.next_delay()
        if exc.retry_after is not None:
            return max(0.0, min(exc.retry_after, self.config.max_backoff_period))
        if reason == "rate_limited":
            # A stream's rate limit refills in seconds; the stream limit frees a slot
            # only when some stream goes idle: that one backs off in full.
            return min(delay, RATE_LIMITED_MAX_DELAY_S)
        return delay

    async def _run_held(self) -> None:
        acc = self.accumulator
        while True:
            waiting = acc.due_held()
            if not waiting:
                acc.held_event.clear()
                await acc.held_event.wait()
                continue
            held = min(waiting, key=lambda item: item.due)
            delay = held.due - self._clock()
            if delay > 0:
                acc.held_event.clear()
                try:
                    async with asyncio.timeout(delay):
                        await acc.held_event.wait()
                except TimeoutError:
                    pass
                continue
            held.inflight = True
            try:
                await self._retry_held(held)
            finally:
                held.inflight = False
                acc.release_held(held)

    async def _retry_held(self, held: Held) -> None:
        """Push the oldest ``batch_size`` of a held stream's entries once.

        A chunk at a time: Loki (with ``shard_streams``, its default) takes or refuses
        a stream's entries of one push as a whole against the stream's rate limit, so
        a held backlog larger than the limit's burst would never pass in one push.
        """
        tenant, key = held.tenant, held.key
        chunk = leading_chunk(held.entries, self.config.batch_size)
        rest = held.entries[len(chunk) :]
        body = await self.accumulator.encode_streams([(key, chunk)])
        size = len(body)
        answer = await self._attempt(body, tenant)
        if answer is None:
            self._answered()
            self.accumulator.confirmed.confirm(tenant, (key,))
            self.metrics.sent(self.host, tenant, len(chunk), size)
            held.entries = rest
            held.due = self._clock()  # the next chunk, if any, at once
            return
        exc, refusal = answer
        if self._is_outage(refusal):
            delay, _ = self._retry_delay(exc, held.backoff)
            self._failed(exc, delay, tenant)
            held.reason = "outage"
            held.due = self._clock() + delay
            return
        plan = None
        if refusal is not None and not refusal.whole:
            plan = plan_refusal(
                refusal,
                {key: chunk},
                hold_retriable=self.config.retry_on_http_429,
            )
            if plan.retry_whole:
                held.due = self._clock() + self._held_delay(
                    exc, held.backoff, held.reason
                )
                return
        self._answered()
        assert refusal is not None  # outage-type answers were handled above
        if plan is None or not plan.understood:
            reason = refusal.reason if refusal.understood else _fallback_reason(exc)
            self.metrics.dropped(
                self.host, tenant, reason, len(chunk), entries_size(chunk)
            )
            self._log_refusal(
                "dropping held entries of %s for %s (tenant %r): %d entries refused "
                "(%s): %s%s",
                key,
                self.display_url,
                tenant,
                len(chunk),
                reason,
                exc,
                ""
                if refusal.understood and (plan is None or plan.understood)
                else _quoted(exc),
            )
            held.entries = rest
            held.due = self._clock()
            return
        for reason, (count, dropped_bytes) in plan.dropped.items():
            self.metrics.dropped(self.host, tenant, reason, count, dropped_bytes)
        still = plan.held.get(key, [])
        stored = max(0, len(chunk) - plan.dropped_entries - len(still))
        if stored:
            self.metrics.sent(self.host, tenant, stored, size)
        held.entries = still + rest
        if still:
            held.reason = plan.held_reasons[key]
            held.due = self._clock() + self._held_delay(exc, held.backoff, held.reason)
        else:
            held.due = self._clock()

    # -- flush and drain

    async def flush(self) -> None:
        """Wait until every entry accepted so far has been sent or finally dropped."""
        acc = self.accumulator
        if acc.closed and self._task is None:
            return  # drained already: nothing is left to wait for
        if acc.broken is not None:
            acc.check_usable()
        acc.cut_all()
        target = acc.cut_count
        if acc.settled_through(target):
            return
        self.start()
        self.wake()
        while not acc.settled_through(target):
            await acc.wait_progress()
            if acc.broken is not None:
                acc.check_usable()

    async def drain(self, drain_timeout: float) -> None:
        """Send what is queued within ``drain_timeout``, abandon and count the rest,
        then end the task and close the transport."""
        acc = self.accumulator
        self.draining = True
        acc.cut_all()
        now = self._clock()
        for held in acc.held.values():
            held.due = min(held.due, now)  # one more try each, now
        acc.held_event.set()
        target = acc.cut_count
        if not acc.settled_through(target) and acc.broken is None:
            self.start()
            self.wake()
            try:
                async with asyncio.timeout(drain_timeout):
                    while not acc.settled_through(target) and acc.broken is None:
                        await acc.wait_progress()
            except TimeoutError:
                pass
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # The task handles its own failure (it breaks the accumulator): awaiting
            # it only waits for its loops to end.
            await asyncio.gather(task, return_exceptions=True)
        abandoned = acc.abandon_all()
        if abandoned:
            _log.warning(
                "drain timeout for %s: abandoned %d entries",
                self.display_url,
                abandoned,
            )
        self.metrics.untrack(self)
        await self.transport.aclose()


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first exception of a (nested) group: what the loop died of."""
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
