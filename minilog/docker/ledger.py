"""Delivery-gated positions of one container's log: what may be committed, given what
Loki acknowledged (pure: no I/O, no asyncio).

A position is ``(Docker timestamp in ns, lines read at exactly that timestamp)``:
Docker's ``since`` is inclusive, so the count says how many lines at the boundary to
skip when resuming. Two positions are kept: the *read* one (what was decoded; a
reconnect within this process resumes from it, so nothing in flight is read twice)
and the *committed* one (the newest position whose lines, and every line before them,
settled; only this one reaches the positions file). Each read chunk is a ``Chunk``
waiting for its delivery (whose callback it is); chunks commit in read order. A
delivery abandoned at shutdown freezes the committed position, so the next start reads
those lines again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

__all__ = ["Chunk", "Ledger", "Position"]

#: ``(Docker timestamp ns, lines read at that timestamp)``.
Position = tuple[int, int]

_PENDING: Final = 0
_OK: Final = 1
_ABANDONED: Final = 2


class Chunk:
    """The position reached by one read chunk, waiting for its delivery to settle.

    It is the delivery's callback itself (``Delivery(chunk)``): while Loki is down the
    writer's queue keeps one per read, so it is kept to one small object (a callback
    wrapping it would more than double what each read leaves allocated).
    """

    __slots__ = ("count", "generation", "ledger", "position", "state")

    def __init__(
        self, ledger: Ledger, position: int, count: int, generation: int, state: int
    ) -> None:
        self.ledger = ledger
        self.position = position
        self.count = count
        self.generation = generation
        self.state = state

    def __call__(self, ok: bool) -> None:
        """The chunk's delivery settled (``ok``) or was abandoned."""
        self.ledger.settle(self, ok)


class Ledger:
    """Read and committed positions of one container, and the chunks in between.

    Args:
        start: the committed position to start from (the positions file's).
        on_commit: told each new committed position, in order.
        on_settled: told after a chunk of this generation settled.
    """

    __slots__ = (
        "_chunks",
        "_frozen",
        "_generation",
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
    ) -> None:
        self.read: Position = start
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
