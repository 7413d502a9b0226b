"""The embeddable shipper: send log lines from your own program to Loki.

``Shipper`` is the asyncio facade and ``SyncShipper`` the thread-safe one for code
without an event loop (it runs a loop in a daemon thread). Both are made of the same
parts (``_Core``: checked labels, one ``EndpointConfig``, a ``write.Writer``), so the
library and the agent share one push path; this module only owns the label checks,
timestamps, the caller-side buffer of ``SyncShipper`` and acknowledgements. Every
endpoint default is ``EndpointConfig``'s, except the queue bound
(``SHIPPER_QUEUE_CAPACITY``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry

from minilog.errors import BrokenError, ClosedError, WouldBlockError
from minilog.labels import validate_label_name
from minilog.loki.push import BasicAuth, TLSConfig
from minilog.model import Delivery, LogEntry, Metadata, StreamBatch
from minilog.write import EndpointConfig, Writer

__all__ = [
    "PUSH_PATH",
    "SHIPPER_QUEUE_CAPACITY",
    "OnDelivery",
    "Shipper",
    "SyncShipper",
    "push_url",
]

_log = logging.getLogger("minilog.shipper")

#: Appended to a base URL given to a shipper.
PUSH_PATH = "/loki/api/v1/push"
#: A shipper's ``queue_capacity``: larger than Alloy's 10 MiB, so that an
#: application's bursts and a Loki outage of a minute fit (README, "Embedding").
SHIPPER_QUEUE_CAPACITY = 64 << 20
_PUSH_PATHS = (PUSH_PATH, "/api/prom/push")

#: Told whether entries settled (``True``: accepted by Loki, or refused by it for good
#: and counted; never for an outage, which is waited out) or were abandoned at close
#: (``False``). A future gets that as its result.
OnDelivery: TypeAlias = (
    "Callable[[bool], None] | asyncio.Future[bool] | concurrent.futures.Future[bool]"
)
MetadataArg: TypeAlias = "Mapping[str, str] | Iterable[tuple[str, str]] | None"


def push_url(url: str) -> str:
    """``url`` if it names a push path already, else ``url`` + ``/loki/api/v1/push``."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith(_PUSH_PATHS):
        return url
    return urlunsplit(parts._replace(path=path + PUSH_PATH))


def _metadata(metadata: MetadataArg) -> Metadata:
    if not metadata:
        return ()
    if isinstance(metadata, Mapping):
        return tuple(metadata.items())
    return tuple(metadata)


def _entry(line: str, timestamp_ns: int | None, metadata: MetadataArg) -> LogEntry:
    """One entry as the ``send*`` calls take it: stamped now when no time is given."""
    ts = time.time_ns() if timestamp_ns is None else timestamp_ns
    return LogEntry(ts, line, _metadata(metadata))


def _delivery(on_delivery: OnDelivery | None) -> Delivery | None:
    if on_delivery is None:
        return None
    if isinstance(on_delivery, asyncio.Future):
        future = on_delivery
        loop = future.get_loop()

        def resolve(ok: bool) -> None:
            # Settlement may run on another thread's loop (SyncShipper).
            loop.call_soon_threadsafe(_set_result, future, ok)

        return Delivery(resolve)
    if isinstance(on_delivery, concurrent.futures.Future):
        cfuture = on_delivery
        return Delivery(lambda ok: None if cfuture.done() else cfuture.set_result(ok))
    return Delivery(on_delivery)


def _set_result(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


class _LabelChecker:
    """Validates label names once: names already seen are remembered."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: set[str] = set()

    def check(self, labels: Mapping[str, str]) -> None:
        known = self._known
        for name in labels:
            if name not in known:
                validate_label_name(name)
                if len(known) < 65536:
                    known.add(name)

    def merge(
        self, base: dict[str, str], labels: Mapping[str, str] | None
    ) -> dict[str, str]:
        """``labels`` checked and merged over ``base`` (``base`` itself when none)."""
        if not labels:
            return base
        self.check(labels)
        return {**base, **labels}


class _Core:
    """What both facades are made of: checked base labels, one endpoint, its writer."""

    __slots__ = ("checker", "config", "labels", "writer")

    def __init__(
        self,
        url: str,
        *,
        labels: Mapping[str, str] | None = None,
        tenant_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        queue_capacity: int = SHIPPER_QUEUE_CAPACITY,
        max_streams: int = 0,
        registry: CollectorRegistry | None = None,
        **endpoint: Any,
    ) -> None:
        self.checker = _LabelChecker()
        self.labels = dict(labels or {})
        self.checker.check(self.labels)
        self.config = EndpointConfig(
            push_url(url),
            tenant_id=tenant_id or "",
            headers=dict(headers or {}),
            queue_capacity=queue_capacity,
            **endpoint,
        )
        self.writer = Writer([self.config], max_streams=max_streams, registry=registry)

    def batch(
        self,
        labels: Mapping[str, str] | None,
        entries: list[LogEntry],
        on_delivery: OnDelivery | None,
    ) -> StreamBatch:
        merged = self.checker.merge(self.labels, labels)
        return StreamBatch(merged, entries, _delivery(on_delivery))


class Shipper:
    """Ship log lines to Loki from asyncio code.

    ::

        async with Shipper("http://loki:3100", labels={"service": "api"}) as shipper:
            await shipper.send({"level": "info"}, "started")
            # Learn when Loki took a line (True) or it was abandoned at close (False).
            delivered = asyncio.get_running_loop().create_future()
            await shipper.send(None, "order 42 paid", on_delivery=delivered)
            accepted = await delivered

    Lines are batched (``batch_size`` bytes or ``batch_wait`` seconds, whichever
    comes first; after ``batch_linger`` while no request is in flight), compressed
    and pushed. While Loki cannot be reached or answers 429/5xx, lines are kept and
    retried until it takes them, however long that is (``max_backoff_retries`` only
    says when the endpoint is reported as failing);
    what Loki refuses for good (another 4xx) is dropped, counted by reason and logged.
    Memory is bounded by ``queue_capacity``: when it is full ``send`` waits and
    ``send_nowait`` raises ``WouldBlockError``; lines of a stream Loki refused for now
    (a 429 naming it) wait the same way while other streams go on. ``aclose``
    abandons what its drain timeout could not deliver (``on_delivery`` gets ``False``).

    Args:
        url: Loki's base URL (``/loki/api/v1/push`` is appended) or the full push URL.
        labels: labels added to every line; per-call labels win on conflict.
        tenant_id: sent as ``X-Scope-OrgID`` (a ``__tenant_id__`` label overrides it).
        batch_wait, batch_size, queue_capacity, remote_timeout, headers, basic_auth,
            bearer_token, bearer_token_file, tls_config, min_backoff_period,
            max_backoff_period, max_backoff_retries, retry_on_http_429, drain_timeout:
            as in Alloy's ``loki.write`` ``endpoint`` block (see ``EndpointConfig``).
        adaptive_batching, batch_linger: minilog's extensions of that block: a batch
            leaves before ``batch_wait`` once it is ``batch_linger`` old while no
            request is in flight; ``adaptive_batching=False`` batches exactly as
            Alloy.
        registry: where the ``loki_write_*`` metrics go (a private registry if
            ``None``).
    """

    def __init__(
        self,
        url: str,
        *,
        labels: Mapping[str, str] | None = None,
        tenant_id: str | None = None,
        batch_wait: float = EndpointConfig.batch_wait,
        batch_size: int = EndpointConfig.batch_size,
        queue_capacity: int = SHIPPER_QUEUE_CAPACITY,
        remote_timeout: float = EndpointConfig.remote_timeout,
        headers: Mapping[str, str] | None = None,
        basic_auth: BasicAuth | None = EndpointConfig.basic_auth,
        bearer_token: str = EndpointConfig.bearer_token,
        bearer_token_file: str = EndpointConfig.bearer_token_file,
        tls_config: TLSConfig | None = EndpointConfig.tls_config,
        min_backoff_period: float = EndpointConfig.min_backoff_period,
        max_backoff_period: float = EndpointConfig.max_backoff_period,
        max_backoff_retries: int = EndpointConfig.max_backoff_retries,
        retry_on_http_429: bool = EndpointConfig.retry_on_http_429,
        drain_timeout: float = EndpointConfig.drain_timeout,
        adaptive_batching: bool = EndpointConfig.adaptive_batching,
        batch_linger: float = EndpointConfig.batch_linger,
        max_streams: int = 0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._core = _Core(
            url,
            labels=labels,
            tenant_id=tenant_id,
            headers=headers,
            queue_capacity=queue_capacity,
            max_streams=max_streams,
            registry=registry,
            batch_wait=batch_wait,
            batch_size=batch_size,
            remote_timeout=remote_timeout,
            basic_auth=basic_auth,
            bearer_token=bearer_token,
            bearer_token_file=bearer_token_file,
            tls_config=tls_config,
            min_backoff_period=min_backoff_period,
            max_backoff_period=max_backoff_period,
            max_backoff_retries=max_backoff_retries,
            retry_on_http_429=retry_on_http_429,
            drain_timeout=drain_timeout,
            adaptive_batching=adaptive_batching,
            batch_linger=batch_linger,
        )
        self._writer = self._core.writer
        self.config = self._core.config
        self.registry = self._writer.registry

    @property
    def closed(self) -> bool:
        return self._writer.closed

    @property
    def queued_bytes(self) -> int:
        """Bytes buffered and not yet accepted by Loki."""
        return sum(self._writer.queued_bytes().values())

    async def send(
        self,
        labels: Mapping[str, str] | None,
        line: str,
        *,
        timestamp_ns: int | None = None,
        metadata: MetadataArg = None,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        """Queue one line, waiting while the queue is full.

        Args:
            labels: stream labels of this line (merged over the shipper's ``labels``).
            timestamp_ns: Unix nanoseconds; now when ``None``.
            metadata: structured metadata, a mapping or ``(name, value)`` pairs.
            on_delivery: callback or future told when the line settled (see
                ``OnDelivery``).

        Raises:
            LabelError: an invalid label name (nothing was queued).
            ClosedError: the shipper is closed (``BrokenError``, a ``ClosedError``:
                its send loop died of a bug).
        """
        entry = _entry(line, timestamp_ns, metadata)
        await self._writer.send(self._core.batch(labels, [entry], on_delivery))

    def send_nowait(
        self,
        labels: Mapping[str, str] | None,
        line: str,
        *,
        timestamp_ns: int | None = None,
        metadata: MetadataArg = None,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        """Queue one line now, or raise ``WouldBlockError`` (counted: queue_is_full).

        When it raises, ``on_delivery`` is told ``False`` (abandoned), as ``send`` does.
        """
        entry = _entry(line, timestamp_ns, metadata)
        batch = self._core.batch(labels, [entry], on_delivery)
        try:
            self._writer.send_nowait(batch)
        except (ClosedError, WouldBlockError):
            # The writer handed the delivery reference back: nothing was queued.
            batch.settle(abandoned=True)
            raise

    async def send_batch(
        self,
        labels: Mapping[str, str] | None,
        entries: Sequence[LogEntry],
        *,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        """Queue many entries of one stream at once (the cheap way to send a lot)."""
        await self._writer.send(self._core.batch(labels, list(entries), on_delivery))

    async def flush(self) -> None:
        """Wait until everything queued so far was accepted (or refused for good).

        While Loki is away that is until it is back: bound it with ``asyncio.timeout``
        if you cannot wait; nothing is lost by giving up the wait.
        """
        await self._writer.flush()

    async def aclose(self, drain_timeout: float | None = None) -> None:
        """Deliver what is queued within the drain timeout, then close. Idempotent."""
        await self._writer.aclose(drain_timeout)

    async def __aenter__(self) -> Shipper:
        if self.closed:
            raise ClosedError("Shipper is closed")
        await self._writer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# A pending SyncShipper item: (labels, entries, delivery, bytes).
_Item: TypeAlias = "tuple[dict[str, str], list[LogEntry], Delivery | None, int]"


class SyncShipper:
    """``Shipper`` for code without an event loop; every method is thread-safe.

    A daemon thread runs the event loop and the writer. ``send`` appends to a small
    caller-side buffer (``buffer_bytes``) and returns at once; it blocks only while that
    buffer and the writer's queue are full. The buffer is moved to the writer in one go
    per wake-up, so the cost per line is a lock and a list append. ``close`` delivers
    what is buffered; an unclosed shipper is closed at interpreter exit (``atexit``).

    Takes the same keyword options as ``Shipper``, plus ``buffer_bytes`` (default:
    ``batch_size``). Delivery callbacks run on the shipper's thread: keep them short.

    ::

        shipper = SyncShipper("http://loki:3100", labels={"job": "batch"})
        shipper.send({"step": "load"}, "42 rows")
        shipper.close(timeout=5)
    """

    def __init__(
        self, url: str, *, buffer_bytes: int | None = None, **options: Any
    ) -> None:
        self._core = _Core(url, **options)  # first: a bad option leaks no loop
        self._writer = self._core.writer
        self._loop = asyncio.new_event_loop()
        self.registry = self._writer.registry
        self._limit = buffer_bytes or self._core.config.batch_size
        self._cond = threading.Condition()
        self._items: list[_Item] = []
        self._buffered = 0  # bytes taken by callers and not yet accepted by the writer
        self._wake_scheduled = False
        self._closed = False
        #: Why the pump stopped, if it died of a bug: later sends fail with it.
        self._broken: BaseException | None = None
        self._pump_lock: asyncio.Lock | None = None
        self._work: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(
            target=self._run_loop, name="minilog-shipper", daemon=True
        )
        self._thread.start()
        self._call(self._start(), None)
        atexit.register(self._atexit)

    # -- the loop thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Any, timeout: float | None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _start(self) -> None:
        self._work = asyncio.Event()
        self._pump_task = asyncio.get_running_loop().create_task(
            self._run_pump(), name="minilog-shipper pump"
        )
        await self._writer.start()

    def _wake(self) -> None:
        assert self._work is not None
        self._work.set()

    async def _run_pump(self) -> None:
        """The pump's task, owned by this shipper: moves what callers buffered into
        the writer. If it dies of a bug, blocked and later sends fail with it."""
        assert self._work is not None
        work = self._work
        try:
            while True:
                await work.wait()
                work.clear()
                await self._pump()
        except Exception as exc:  # noqa: BLE001 - recorded: sends fail with it now
            _log.error("SyncShipper pump failed", exc_info=exc)
            with self._cond:
                self._broken = exc
                self._cond.notify_all()

    async def _pump(self) -> None:
        if self._pump_lock is None:
            self._pump_lock = asyncio.Lock()
        # One pump at a time keeps each stream's lines in the order they were sent.
        async with self._pump_lock:
            with self._cond:
                items, self._items = self._items, []
                self._wake_scheduled = False
            if not items:
                return
            groups = _group(items)
            for index, (labels, entries, delivery, size) in enumerate(groups):
                try:
                    await self._writer.send(StreamBatch(labels, entries, delivery))
                except ClosedError:
                    self._writer.count_dropped(
                        StreamBatch(labels, entries), "drain_timeout"
                    )
                except asyncio.CancelledError:
                    # Close gave up waiting: what never reached the writer is lost.
                    for labels_, entries_, delivery_, _ in groups[index:]:
                        self._writer.count_dropped(
                            StreamBatch(labels_, entries_), "drain_timeout"
                        )
                        if delivery_ is not None and delivery_ is not delivery:
                            delivery_.release(abandoned=True)
                    with self._cond:
                        self._buffered -= sum(g[3] for g in groups[index:])
                        self._cond.notify_all()
                    raise
                with self._cond:
                    self._buffered -= size
                    self._cond.notify_all()

    # -- the callers' side

    def _put(self, item: _Item, block: bool, timeout: float | None) -> None:
        try:
            self._enqueue(item, block, timeout)
        except (ClosedError, WouldBlockError):
            # Refused: nothing was queued, so its delivery is abandoned now.
            if item[2] is not None:
                item[2].release(abandoned=True)
            raise

    def _enqueue(self, item: _Item, block: bool, timeout: float | None) -> None:
        size = item[3]
        with self._cond:
            self._check_open()
            if self._buffered >= self._limit:
                # Waiting on the shipper's own thread would wait for itself forever.
                if not block or threading.current_thread() is self._thread:
                    self._writer.count_dropped(
                        StreamBatch(item[0], item[1]), "queue_is_full"
                    )
                    raise WouldBlockError("shipper buffer is full")
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._buffered >= self._limit:
                    remaining = (
                        None if deadline is None else deadline - time.monotonic()
                    )
                    if remaining is not None and remaining <= 0:
                        raise WouldBlockError("shipper buffer stayed full")
                    self._cond.wait(remaining)
                    self._check_open()
            self._items.append(item)
            self._buffered += size
            if not self._wake_scheduled:
                self._wake_scheduled = True
                self._loop.call_soon_threadsafe(self._wake)

    def _check_open(self) -> None:
        """Under ``_cond``: raise unless sends are taken."""
        if self._broken is not None:
            raise BrokenError(
                f"SyncShipper stopped: {type(self._broken).__name__}: {self._broken}"
            )
        if self._closed:
            raise ClosedError("SyncShipper is closed")

    def _item(
        self,
        labels: Mapping[str, str] | None,
        entries: list[LogEntry],
        on_delivery: OnDelivery | None,
    ) -> _Item:
        merged = self._core.checker.merge(self._core.labels, labels)
        size = (
            sum(len(e.line) for e in entries)
            if len(entries) != 1
            else len(entries[0].line)
        )
        return (merged, entries, _delivery(on_delivery), size)

    def send(
        self,
        labels: Mapping[str, str] | None,
        line: str,
        *,
        timestamp_ns: int | None = None,
        metadata: MetadataArg = None,
        on_delivery: OnDelivery | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue one line; blocks only while the buffers are full (up to ``timeout``).

        Raises:
            LabelError: an invalid label name. ClosedError: after ``close``.
            WouldBlockError: still full after ``timeout`` seconds.
        """
        entry = _entry(line, timestamp_ns, metadata)
        self._put(self._item(labels, [entry], on_delivery), True, timeout)

    def send_nowait(
        self,
        labels: Mapping[str, str] | None,
        line: str,
        *,
        timestamp_ns: int | None = None,
        metadata: MetadataArg = None,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        """Queue one line now, or raise ``WouldBlockError`` (counted: queue_is_full)."""
        entry = _entry(line, timestamp_ns, metadata)
        self._put(self._item(labels, [entry], on_delivery), False, None)

    def send_batch(
        self,
        labels: Mapping[str, str] | None,
        entries: Sequence[LogEntry],
        *,
        on_delivery: OnDelivery | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue many entries of one stream; blocks only while the buffers are full."""
        self._put(self._item(labels, list(entries), on_delivery), True, timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything sent so far was accepted (or refused for good).

        While Loki is away that is until it is back, or ``timeout`` seconds
        (``concurrent.futures.TimeoutError``; the lines stay queued).
        """
        if self._closed:
            return
        self._call(self._aflush(), timeout)

    async def _aflush(self) -> None:
        await self._pump()
        await self._writer.flush()

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is buffered within ``timeout`` (else ``drain_timeout``); stop.

        Idempotent; entries still undelivered at the deadline are abandoned and counted.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        atexit.unregister(self._atexit)
        try:
            self._call(self._aclose(timeout), None)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    async def _aclose(self, drain_timeout: float | None) -> None:
        drain = drain_timeout if drain_timeout is not None else self.drain_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        try:
            async with asyncio.timeout(drain):
                await self._pump()
        except TimeoutError:
            pass
        await self._writer.aclose(max(0.0, deadline - loop.time()))
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _atexit(self) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def drain_timeout(self) -> float:
        """Seconds ``close`` gives queued lines by default (Alloy's
        ``queue_config.drain_timeout``)."""
        return self._core.config.drain_timeout

    def __enter__(self) -> SyncShipper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _group(items: list[_Item]) -> list[_Item]:
    """Merge pending items into one per label set, keeping each stream's order.

    An item with a delivery stays alone so its delivery covers exactly its entries; it
    closes the open group of its stream, so later lines of that stream follow it.
    """
    groups: list[list[Any]] = []
    open_groups: dict[tuple[tuple[str, str], ...], list[Any]] = {}
    for labels, entries, delivery, size in items:
        key = tuple(labels.items())
        if delivery is not None:
            open_groups.pop(key, None)
            groups.append([labels, entries, delivery, size])
            continue
        group = open_groups.get(key)
        if group is None:
            open_groups[key] = group = [labels, list(entries), None, size]
            groups.append(group)
        else:
            group[1].extend(entries)
            group[3] += size
    return [(g[0], g[1], g[2], g[3]) for g in groups]
