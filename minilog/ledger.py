"""Delivery-gated positions of one tailed log (a container's, a file's): what may be
committed, given what Loki acknowledged (pure: no I/O, no asyncio). Owned by neither
boundary: ``docker.tailer`` and ``files.tailer`` both keep one per log.

A position is ``(Docker timestamp in ns, lines read at exactly that timestamp)``:
Docker's ``since`` is inclusive, so the count says how many lines at the boundary to
skip when resuming. Two positions are kept: the *read* one (what was decoded; a
reconnect within this process resumes from it, so nothing in flight is read twice)
and the *committed* one (the newest position whose lines, and every line before them,
settled; only this one reaches the positions file). Each read chunk is a ``Chunk``
waiting for its delivery (whose callback it is); chunks commit in read order. Reads
that follow one another while the newest chunk is still pending join it for up to
``JOIN_WINDOW_S`` (one delivery, its references counted up), so a stalled writer keeps
a few chunks per container rather than one per read. A delivery abandoned at shutdown
freezes the committed position, so the next start reads those lines again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from minilog.model import Delivery

__all__ = ["JOIN_WINDOW_S", "Chunk", "Ledger", "Position"]

#: ``(Docker timestamp ns, lines read at that timestamp)``.
Position = tuple[int, int]

_PENDING: Final = 0
_OK: Final = 1
_ABANDONED: Final = 2

#: How long after its first read a pending chunk takes in the reads that follow. While
#: Loki is down every read would otherwise leave its own chunk and delivery in the
#: writer's queue (at 1,000 lines/s a read holds about 4 lines, and those records took
#: more of the queue than the compressed lines). A joined read commits only with the
#: chunk's last one, so this is also how much longer a line may wait to be committed
#: after Loki acknowledged it (a crash re-sends at most that much more).
JOIN_WINDOW_S: Final = 0.5


class Chunk:
    """The position reached by one read chunk, waiting for its delivery to settle.

    It is the delivery's callback itself (``Delivery(chunk)``), and holds that delivery
    while reads may still join it (``delivery``; ``None`` once it settled, which also
    breaks the cycle between the two).
    """

    __slots__ = (
        "count",
        "delivery",
        "generation",
        "ledger",
        "opened_s",
        "position",
        "state",
    )

    def __init__(
        self, ledger: Ledger, position: int, count: int, generation: int, state: int
    ) -> None:
        self.ledger = ledger
        self.position = position
        self.count = count
        self.generation = generation
        self.state = state
        self.delivery: Delivery | None = None
        self.opened_s = 0.0

    def __call__(self, ok: bool) -> None:
        """The chunk's delivery settled (``ok``) or was abandoned."""
        self.delivery = None
        self.ledger.settle(self, ok)


class Ledger:
    """Read and committed positions of one container, and the chunks in between.

    Args:
        start: the committed position to start from (the positions file's).
        on_commit: told each new committed position, in order.
        on_settled: told after a chunk of this generation settled.
        join_window_s: how long a pending chunk takes in the reads that follow (0:
            never; one chunk per read).
    """

    __slots__ = (
        "_chunks",
        "_frozen",
        "_generation",
        "_join_window_s",
        "_on_commit",
        "_on_settled",
        "_stopped",
        "committed",
        "read",
    )

    def __init__(
        self,
        start: Position,
        on_commit: Callable[[Position], None],
        on_settled: Callable[[], None] | None = None,
        join_window_s: float = JOIN_WINDOW_S,
    ) -> None:
        self.read: Position = start
        self._join_window_s = join_window_s
        self.committed: Position = start
        self._on_commit = on_commit
        self._on_settled = on_settled
        self._chunks: deque[Chunk] = deque()
        self._generation = 0
        self._frozen = False
        self._stopped = False

    @property
    def in_flight(self) -> int:
        """Chunks whose deliveries have not all settled."""
        return len(self._chunks)

    def read_to(self, position: Position) -> Chunk:
        """Record a read chunk that ends at ``position``; settle its delivery later
        with :meth:`settle`, or by calling it (a chunk that sent nothing settles at
        once)."""
        self.read = position
        chunk = Chunk(self, position[0], position[1], self._generation, _PENDING)
        self._chunks.append(chunk)
        return chunk

    def deliver_to(self, position: Position, refs: int, now_s: float) -> Delivery:
        """A delivery holding ``refs`` references for a read chunk that ends at
        ``position``: the newest chunk's, when it is still pending and opened less
        than the join window before ``now_s`` (monotonic seconds; it then ends at
        ``position``), else a new chunk's."""
        queue = self._chunks
        newest = queue[-1] if queue else None
        if (
            newest is not None
            and newest.delivery is not None
            and now_s - newest.opened_s < self._join_window_s
        ):
            delivery = newest.delivery
            delivery.retain(refs)
            self.read = position
            newest.position, newest.count = position
            return delivery
        chunk = self.read_to(position)
        chunk.opened_s = now_s
        chunk.delivery = delivery = Delivery(chunk)
        if refs > 1:
            delivery.retain(refs - 1)
        return delivery

    def settle(self, chunk: Chunk, ok: bool) -> bool:
        """``chunk``'s delivery settled (``ok``) or was abandoned; commits every
        chunk now settled in read order. False for a chunk from before a rewind."""
        chunk.state = _OK if ok else _ABANDONED
        if chunk.generation != self._generation:
            return False
        queue = self._chunks
        while queue and queue[0].state != _PENDING:
            head = queue.popleft()
            if head.state == _ABANDONED:
                self._frozen = True
            elif not self._frozen and not self._stopped:
                new = (head.position, head.count)
                if new > self.committed:
                    self.committed = new
                    self._on_commit(new)
        if self._on_settled is not None:
            self._on_settled()
        return True

    def rewind(self) -> None:
        """Forget the chunks in flight and read again from the committed position
        (after a crash: at-least-once, entries in flight may be sent twice)."""
        self._generation += 1
        self._chunks.clear()
        self._frozen = False
        self.read = self.committed

    def stop(self) -> None:
        """Commit nothing more (the container is gone; its position was removed)."""
        self._stopped = True

    def lag_s(self, now_s: float) -> float:
        """Seconds since the newest committed line while newer ones are unsettled."""
        if self.read <= self.committed:
            return 0.0
        ts_ns = self.committed[0]
        if ts_ns == 0:
            # Nothing acknowledged yet: the oldest chunk in flight is the best estimate.
            ts_ns = self._chunks[0].position if self._chunks else self.read[0]
        return max(0.0, now_s - ts_ns / 1e9)
