"""Tests for ``minilog.ledger``: what may be committed, given what settled."""

from __future__ import annotations

from minilog.ledger import Ledger, Position


def ledger(start: Position = (0, 0)) -> tuple[Ledger, list[Position]]:
    commits: list[Position] = []
    return Ledger(start, commits.append), commits


def test_chunks_commit_in_read_order_whatever_order_they_settle_in() -> None:
    book, commits = ledger()
    first, second, third = (book.read_to((ts, 1)) for ts in (10, 20, 30))
    assert book.in_flight == 3
    book.settle(third, True)
    book.settle(second, True)
    assert commits == []  # the first is still pending: nothing may be committed
    book.settle(first, True)
    assert commits == [(10, 1), (20, 1), (30, 1)]  # each, in read order
    assert book.committed == book.read == (30, 1)
    assert book.in_flight == 0


def test_an_abandoned_chunk_freezes_the_committed_position() -> None:
    book, commits = ledger()
    first, second = book.read_to((10, 1)), book.read_to((20, 1))
    book.settle(first, False)  # abandoned at shutdown: read it again next time
    book.settle(second, True)
    assert commits == []
    assert book.committed == (0, 0)
    assert book.lag_s(100.0) > 0  # read is ahead of committed


def test_rewind_forgets_chunks_in_flight_and_reads_from_the_commit() -> None:
    book, commits = ledger((5, 2))
    stale = book.read_to((10, 1))
    book.rewind()
    assert book.read == book.committed == (5, 2)
    assert book.settle(stale, True) is False  # a chunk from before the rewind
    assert commits == []
    fresh = book.read_to((10, 1))
    assert book.settle(fresh, True) is True
    assert commits == [(10, 1)]


def test_a_stopped_ledger_commits_nothing() -> None:
    book, commits = ledger()
    chunk = book.read_to((10, 1))
    book.stop()  # the container is gone, its position removed
    book.settle(chunk, True)
    assert commits == []


def test_lag_is_measured_from_the_newest_commit_while_reads_are_ahead() -> None:
    book, _ = ledger()
    assert book.lag_s(5.0) == 0.0  # nothing read
    chunk = book.read_to((2_000_000_000, 1))
    # Nothing committed yet: the oldest chunk in flight is the estimate.
    assert book.lag_s(5.0) == 3.0
    book.settle(chunk, True)
    assert book.lag_s(5.0) == 0.0
    book.read_to((4_000_000_000, 1))
    assert book.lag_s(5.0) == 3.0  # now - the committed timestamp


def test_reads_join_the_pending_newest_chunk_within_the_window() -> None:
    commits: list[Position] = []
    book = Ledger((0, 0), commits.append, join_window_s=1.0)
    first = book.deliver_to((10, 1), 1, now_s=100.0)
    second = book.deliver_to((20, 1), 2, now_s=100.5)  # two receivers
    assert second is first  # one delivery, its references counted up
    assert first.pending == 3
    assert book.in_flight == 1 and book.read == (20, 1)
    later = book.deliver_to((30, 1), 1, now_s=101.0)  # the window has passed
    assert later is not first and book.in_flight == 2
    later.release()
    first.release()
    first.release()
    assert commits == []  # the joined read (20, 1) is still in flight
    first.release()
    # The joined chunk commits at its last read, then the one behind it.
    assert commits == [(20, 1), (30, 1)]


def test_a_settled_chunk_takes_in_no_more_reads() -> None:
    commits: list[Position] = []
    book = Ledger((0, 0), commits.append, join_window_s=60.0)
    first = book.deliver_to((10, 1), 1, now_s=0.0)
    first.release()
    second = book.deliver_to((20, 1), 1, now_s=0.0)
    assert second is not first and second.pending == 1
    # A read that sent nothing (settled at once) ends the join as well.
    book.read_to((30, 1))(True)
    third = book.deliver_to((40, 1), 1, now_s=0.0)
    assert third is not second
    third.release()
    second.release()
    assert commits == [(10, 1), (20, 1), (30, 1), (40, 1)]


def test_an_abandoned_joined_read_freezes_the_whole_chunk() -> None:
    commits: list[Position] = []
    book = Ledger((0, 0), commits.append, join_window_s=60.0)
    delivery = book.deliver_to((10, 1), 1, now_s=0.0)
    book.deliver_to((20, 1), 1, now_s=0.0)
    delivery.release()
    delivery.release(abandoned=True)  # the second read was given up at shutdown
    assert commits == []  # the first read is read again too (at-least-once)
    assert book.in_flight == 0


def test_no_window_means_one_chunk_per_read() -> None:
    commits: list[Position] = []
    book = Ledger((0, 0), commits.append, join_window_s=0.0)
    first = book.deliver_to((10, 1), 1, now_s=0.0)
    second = book.deliver_to((20, 1), 1, now_s=0.0)
    assert second is not first and book.in_flight == 2
    first.release()
    assert commits == [(10, 1)]
    second.release()
    assert commits == [(10, 1), (20, 1)]
