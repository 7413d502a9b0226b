"""What every tailing source's supervisor does, whatever it tails (containers, files).

``TailerSupervisor`` keeps the tailers of one source in one task group (a crash is
counted, logged and restarted with backoff, so one bad target never ends the source),
keeps idle tailers until their deliveries settle (a returning target takes its tailer
back instead of racing its positions), runs the stale-position sweep on its schedule,
saves positions with a bound and drains at shutdown. ``docker.source.DockerSource`` and
``files.source.FileSource`` each own one and keep what is theirs: which targets they
tail, when a finished tailer runs again, which positions are stale. Owned by neither
boundary package, as ``fswatch`` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

from prometheus_client import Counter

from minilog.backoff import Backoff
from minilog.fswatch import DirectoryWatcher

__all__ = ["DRAIN_TIMEOUT_S", "PositionsFile", "Tailer", "TailerSupervisor"]

#: How long a source's ``aclose`` waits for deliveries in flight by default.
DRAIN_TIMEOUT_S: Final = 5.0

#: How often positions that no tailer reads are checked for staleness: their targets
#: rarely go while nothing tails them, and each check may cost a call per position.
_STALE_CHECK_S: Final = 600.0
#: Restart delays of a crashed tailer.
_CRASH_BACKOFF_MIN_S: Final = 0.5
_CRASH_BACKOFF_MAX_S: Final = 30.0
#: A save still hanging after this long (a stalled disk) is given up, so that a
#: shutdown ends; the store keeps the positions in memory for a later save.
_SAVE_TIMEOUT_S: Final = 10.0


class Tailer(Protocol):
    """One target's tailer, as its supervisor sees it."""

    #: Its supervised task while it has one; set and cleared by the supervisor.
    task: asyncio.Task[None] | None
    #: Shown in the UI; the supervisor records a crash here.
    last_error: str

    @property
    def in_flight(self) -> int:
        """Deliveries handed on and not settled yet."""
        ...

    async def run(self) -> None:
        """Tail until done or cancelled; raising is a crash."""
        ...

    def rewind(self) -> None:
        """After a crash: read again from the committed position."""
        ...


class PositionsFile(Protocol):
    """A positions store (``docker.positions.PositionStore``), as supervisors use it."""

    @property
    def path(self) -> Path: ...

    def ids(self) -> list[str]: ...

    async def asave(self) -> None: ...

    async def run_flusher(self, interval_s: float = 0.0) -> None: ...


TailerT = TypeVar("TailerT", bound=Tailer)


class TailerSupervisor(Generic[TailerT]):
    """The tailers of one source, by key (container ID, path), and their tasks.

    Args:
        name: the source's class name, for the error of a second ``run``.
        positions: the source's positions store: flushed while ``run`` runs, saved on
            the way out and after the drain.
        crashes: counts the tailer crashes caught.
        log: the source's logger (crashes and give-up saves are the source's news).
        describe: a key as log messages name its target ("container 0123456789ab").
        task_name: a key's task name.
        sweep: one round of the stale-position sweep, run at start and every 10 min.
        sweep_name: the sweep's task name.
        run_again: asked after a tailer returned (not crashed) while the source runs:
            whether to run it again. It may also forget or retire the tailer. ``None``:
            a tailer that returns is done.
        watcher: the inotify watcher the tailers share, closed when ``run`` ends.
        flush_interval_s: the least time between two writes of the positions file.

    The source reconciles ``tailers`` with its targets and calls ``start`` for each
    tailer it keeps, ``retire`` for each it lets go, and hands ``on_settled`` to its
    tailers as their delivery callback's nudge.
    """

    def __init__(
        self,
        *,
        name: str,
        positions: PositionsFile,
        crashes: Counter,
        log: logging.Logger,
        describe: Callable[[str], str],
        task_name: Callable[[str], str],
        sweep: Callable[[], Awaitable[None]],
        sweep_name: str,
        run_again: Callable[[str, TailerT], bool] | None = None,
        watcher: DirectoryWatcher | None = None,
        flush_interval_s: float = 0.0,
    ) -> None:
        self._name = name
        self._positions = positions
        self._crashes = crashes
        self._log = log
        self._describe = describe
        self._task_name = task_name
        self._sweep = sweep
        self._sweep_name = sweep_name
        self._run_again = run_again
        self._watcher = watcher
        self._flush_interval_s = flush_interval_s
        #: The tailers of the current targets, by key; the source reconciles it.
        self.tailers: dict[str, TailerT] = {}
        # Tailers let go with deliveries still in flight, kept so that a returning
        # target reuses their positions instead of racing them.
        self._idle: dict[str, TailerT] = {}
        self._settled = asyncio.Event()
        #: The tailers' task group while ``run`` runs.
        self._group: asyncio.TaskGroup | None = None
        self._running = False
        self._closed = False
        self._run_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def closed(self) -> bool:
        """``run`` has ended (or ``aclose`` came first): no tailer starts again."""
        return self._closed

    def tails(self, key: str) -> bool:
        """Whether a tailer (current or idle) holds ``key``'s position."""
        return key in self.tailers or key in self._idle

    def take_idle(self, key: str) -> TailerT | None:
        """The idle tailer of ``key``, no longer idle (its target is back)."""
        return self._idle.pop(key, None)

    def start(self, key: str, tailer: TailerT) -> None:
        """Give ``tailer`` its task, if the source runs and it has none."""
        if self._group is not None and not self._closed and tailer.task is None:
            self._spawn(key, tailer)

    def retire(self, key: str, tailer: TailerT, *, reusable: bool = True) -> None:
        """``tailer`` left ``tailers``: keep it while deliveries are in flight, unless
        its target can never return (``reusable`` False)."""
        if tailer.in_flight and reusable:
            self._idle[key] = tailer
        self._prune_idle()

    def on_settled(self) -> None:
        """A delivery settled: wake the drain, drop idle tailers with nothing left."""
        self._settled.set()
        if self._idle:
            self._prune_idle()

    # -- lifetime --

    async def run(self) -> None:
        """Tail until cancelled (or ``aclose()``); saves positions on the way out.

        Owns every tailer's task, the stale-position sweep and the positions flusher
        in one task group: cancelling ``run`` stops them all, and waits for them.
        """
        if self._running or self._closed:
            raise RuntimeError(f"{self._name}.run() called twice or after aclose()")
        self._running = True
        self._run_task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for key, tailer in self.tailers.items():
                    if tailer.task is None:
                        self._spawn(key, tailer)
                group.create_task(self._sweep_forever(), name=self._sweep_name)
                await self._positions.run_flusher(self._flush_interval_s)
        finally:
            self._group = None
            self._closed = True
            if self._watcher is not None:
                await self._watcher.aclose()
            await self._save()
            self._stopped.set()

    async def aclose(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop tailing, wait up to ``drain_timeout_s`` for deliveries in flight, then
        save positions. Idempotent."""
        if self._run_task is not None and not self._stopped.is_set():
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stopped.wait()
        elif not self._closed:
            self._closed = True  # never ran: no tailer task to stop
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                while self._in_flight():
                    self._settled.clear()
                    await self._settled.wait()
        await self._save()

    # -- inside --

    def _prune_idle(self) -> None:
        for key in [k for k, t in self._idle.items() if not t.in_flight]:
            del self._idle[key]

    def _in_flight(self) -> int:
        return sum(t.in_flight for t in (*self.tailers.values(), *self._idle.values()))

    async def _sweep_forever(self) -> None:
        while True:
            await self._sweep()
            await asyncio.sleep(_STALE_CHECK_S)

    async def _save(self) -> None:
        try:
            async with asyncio.timeout(_SAVE_TIMEOUT_S):
                await self._positions.asave()
        except OSError:
            pass  # the store says so (once per run of failures) and keeps save_error
        except TimeoutError:
            self._log.error(
                "saving positions file %s took over %g s; gave up",
                self._positions.path,
                _SAVE_TIMEOUT_S,
            )

    def _spawn(self, key: str, tailer: TailerT) -> None:
        assert self._group is not None
        tailer.task = self._group.create_task(
            self._supervise(key, tailer), name=self._task_name(key)
        )

    async def _supervise(self, key: str, tailer: TailerT) -> None:
        """Run ``tailer`` until it returns and is not to run again; a crash is caught,
        counted and restarted with backoff."""
        backoff = Backoff(_CRASH_BACKOFF_MIN_S, _CRASH_BACKOFF_MAX_S)
        try:
            while True:
                try:
                    await tailer.run()
                except Exception as exc:  # noqa: BLE001 - counted, logged, restarted
                    self._crashes.inc()
                    tailer.last_error = f"tailer crashed: {exc!r}"
                    self._log.exception("tailer of %s crashed", self._describe(key))
                    await asyncio.sleep(backoff.next_delay())
                    tailer.rewind()
                    continue
                if self._closed or self._run_again is None:
                    return
                if not self._run_again(key, tailer):
                    return
        finally:
            tailer.task = None
