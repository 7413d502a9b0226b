"""Batcher: per-tenant batches bounded by bytes and age, stream keys, deliveries."""

from __future__ import annotations

from minilog.model import Delivery, LogEntry, StreamBatch, entries_size
from minilog.write.batch import Batch, Batcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entries(*lines: str, start: int = 1) -> list[LogEntry]:
    return [LogEntry(start + i, line) for i, line in enumerate(lines)]


def drain(batcher: Batcher) -> list[Batch]:
    out = []
    while (batch := batcher.pop_ready()) is not None:
        out.append(batch)
    return out


def test_entry_size_counts_utf8_bytes_and_metadata() -> None:
    plain = [LogEntry(1, "abc"), LogEntry(2, "de")]
    assert entries_size(plain) == 5
    assert entries_size([LogEntry(1, "é€")]) == 2 + 3
    with_meta = [LogEntry(1, "ab", (("trace", "xyz"),)), LogEntry(2, "c")]
    assert entries_size(with_meta) == 3 + len("trace") + len("xyz")


def test_streams_are_keyed_by_labels_without_internal_ones() -> None:
    batcher = Batcher(clock=FakeClock())
    batcher.add(StreamBatch({"b": "2", "a": "1", "__meta_x": "y"}, entries("one")))
    batcher.add(StreamBatch({"a": "1", "b": "2", "__path__": "z"}, entries("two")))
    batcher.add(StreamBatch({"a": "other"}, entries("three")))
    batcher.cut_all()
    (batch,) = drain(batcher)
    assert batch.tenant == ""
    assert batch.streams == {
        '{a="1", b="2"}': [LogEntry(1, "one"), LogEntry(1, "two")],
        '{a="other"}': [LogEntry(1, "three")],
    }
    assert batch.entry_count == 3
    assert batch.size_bytes == len("one") + len("two") + len("three")


def test_one_open_batch_per_tenant_and_label_overrides_default() -> None:
    batcher = Batcher(tenant_id="default", clock=FakeClock())
    batcher.add(StreamBatch({"a": "1"}, entries("x")))
    batcher.add(StreamBatch({"a": "1", "__tenant_id__": "t2"}, entries("y")))
    batcher.cut_all()
    by_tenant = {b.tenant: b for b in drain(batcher)}
    assert set(by_tenant) == {"default", "t2"}
    assert by_tenant["t2"].streams == {'{a="1"}': [LogEntry(1, "y")]}


def test_batch_is_ready_when_next_entry_would_exceed_size() -> None:
    batcher = Batcher(batch_size=10, clock=FakeClock())
    batcher.add(StreamBatch({"a": "1"}, entries("12345")))
    batcher.add(StreamBatch({"a": "1"}, entries("1234")))
    assert batcher.ready_count == 0  # 9 bytes: still room
    batcher.add(StreamBatch({"a": "1"}, entries("12")))  # 11 would exceed
    (full,) = drain(batcher)
    assert full.size_bytes == 9
    assert [e.line for e in full.streams['{a="1"}']] == ["12345", "1234"]
    batcher.cut_all()
    (rest,) = drain(batcher)
    assert [e.line for e in rest.streams['{a="1"}']] == ["12"]


def test_batch_exceeds_size_only_by_its_first_entry() -> None:
    batcher = Batcher(batch_size=10, clock=FakeClock())
    big = "x" * 25
    batcher.add(StreamBatch({"a": "1"}, entries(big, "yy", "zzzzzzzzz")))
    batcher.cut_all()
    batches = drain(batcher)
    assert [[e.line for e in b.streams['{a="1"}']] for b in batches] == [
        [big],
        ["yy"],
        ["zzzzzzzzz"],
    ]
    assert [b.size_bytes for b in batches] == [25, 2, 9]


def test_a_stream_batch_split_across_batches_keeps_order_and_sizes() -> None:
    batcher = Batcher(batch_size=100, clock=FakeClock())
    lines = [f"line-{i:04d}" for i in range(50)]  # 9 bytes each
    batcher.add(StreamBatch({"a": "1"}, entries("p" * 50)))
    accepted = batcher.add(StreamBatch({"a": "1"}, entries(*lines)))
    batcher.cut_all()
    batches = drain(batcher)
    assert accepted == 9 * 50
    assert all(b.size_bytes <= 100 for b in batches)
    got = [e.line for b in batches for e in b.streams['{a="1"}']]
    assert got == ["p" * 50, *lines]
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1))


def test_delivery_reference_follows_every_piece() -> None:
    results: list[bool] = []
    delivery = Delivery(results.append)
    batcher = Batcher(batch_size=10, clock=FakeClock())
    batcher.add(
        StreamBatch({"a": "1"}, entries("aaaaaa", "bbbbbb", "cccccc"), delivery)
    )
    batcher.cut_all()
    batches = drain(batcher)
    assert len(batches) == 3
    assert delivery.pending == 3
    for batch in batches[:-1]:
        batch.settle()
    assert results == []
    batches[-1].settle()
    assert results == [True]


def test_abandoned_piece_reports_false() -> None:
    results: list[bool] = []
    delivery = Delivery(results.append)
    batcher = Batcher(batch_size=4, clock=FakeClock())
    batcher.add(StreamBatch({"a": "1"}, entries("aaaa", "bbbb"), delivery))
    batcher.cut_all()
    first, second = drain(batcher)
    first.settle()
    second.settle(abandoned=True)
    assert results == [False]


def test_max_streams_drops_new_streams_and_settles_them() -> None:
    drops: list[tuple[str, str, int, int]] = []
    results: list[bool] = []
    batcher = Batcher(
        max_streams=2, clock=FakeClock(), on_drop=lambda *a: drops.append(a)
    )
    assert batcher.add(StreamBatch({"s": "1"}, entries("a"))) == 1
    assert batcher.add(StreamBatch({"s": "2"}, entries("b"))) == 1
    dropped = StreamBatch({"s": "3"}, entries("cc", "dd"), Delivery(results.append))
    assert batcher.add(dropped) == 0
    assert batcher.add(StreamBatch({"s": "1"}, entries("e"))) == 1  # existing stream
    assert drops == [("", "stream_limited", 2, 4)]
    assert results == [True]  # a final drop settles the delivery
    batcher.cut_all()
    (batch,) = drain(batcher)
    assert set(batch.streams) == {'{s="1"}', '{s="2"}'}


def test_max_streams_does_not_drop_when_the_batch_is_cut_first() -> None:
    drops: list[tuple[str, str, int, int]] = []
    batcher = Batcher(
        batch_size=4,
        max_streams=1,
        clock=FakeClock(),
        on_drop=lambda *a: drops.append(a),
    )
    batcher.add(StreamBatch({"s": "1"}, entries("aaa")))
    batcher.add(
        StreamBatch({"s": "2"}, entries("bbb"))
    )  # overflows: new batch, no drop
    batcher.cut_all()
    assert drops == []
    assert [list(b.streams) for b in drain(batcher)] == [['{s="1"}'], ['{s="2"}']]


def test_age_makes_a_batch_ready() -> None:
    clock = FakeClock()
    batcher = Batcher(batch_wait=1.0, clock=clock)
    assert batcher.next_deadline() is None
    batcher.add(StreamBatch({"a": "1"}, entries("x")))
    assert batcher.next_deadline() == 101.0
    clock.now = 100.999
    assert batcher.cut_expired() == 0
    clock.now = 101.0
    batcher.add(StreamBatch({"__tenant_id__": "late"}, entries("y")))
    assert batcher.cut_expired() == 1
    (ready,) = drain(batcher)
    assert ready.tenant == ""
    assert batcher.next_deadline() == 102.0  # the "late" tenant's batch


# -- adaptive batching: early sends after the linger, only when the sender says so


def test_a_batch_leaves_early_after_its_linger_when_the_sender_is_idle() -> None:
    clock = FakeClock()  # starts at 100.0
    batcher = Batcher(batch_wait=1.0, linger=0.05, clock=clock)
    batcher.add(StreamBatch({"a": "1"}, entries("first")))
    assert batcher.next_deadline(early=True) == 100.05
    assert batcher.next_deadline() == 101.0  # batch_wait stays the bound
    clock.now = 100.049
    assert batcher.cut_expired(early=True) == 0  # younger than the linger
    clock.now = 100.05
    assert batcher.cut_expired(early=True) == 1
    (ready,) = drain(batcher)
    assert ready.stream_items() == [('{a="1"}', entries("first"))]
    # The next batch has a linger of its own, from when it opened.
    clock.now = 100.3
    batcher.add(StreamBatch({"a": "1"}, entries("second")))
    assert batcher.next_deadline(early=True) == 100.35


def test_while_a_request_is_in_flight_the_batch_fills_until_batch_wait() -> None:
    clock = FakeClock()
    batcher = Batcher(batch_wait=1.0, linger=0.05, clock=clock)
    batcher.add(StreamBatch({"a": "1"}, entries("one")))
    clock.now = 100.5  # past the linger, but the sender is busy: not early
    assert batcher.cut_expired() == 0
    batcher.add(StreamBatch({"a": "1"}, entries("two", start=2)))
    clock.now = 100.999
    assert batcher.cut_expired() == 0
    assert batcher.open_count == 1 and batcher.ready_count == 0
    clock.now = 101.0
    assert batcher.cut_expired() == 1
    (ready,) = drain(batcher)
    assert ready.stream_items() == [('{a="1"}', entries("one", "two"))]


def test_the_request_done_a_batch_past_its_linger_leaves_at_once() -> None:
    clock = FakeClock()
    batcher = Batcher(batch_wait=1.0, linger=0.05, clock=clock)
    batcher.add(StreamBatch({"a": "1"}, entries("waited")))
    clock.now = 100.2  # the request in flight took 200 ms
    assert batcher.next_deadline(early=True) == 100.05  # already passed
    assert batcher.cut_expired(early=True) == 1


def test_without_a_linger_batching_is_alloys() -> None:
    clock = FakeClock()
    batcher = Batcher(batch_size=10, batch_wait=1.0, linger=None, clock=clock)
    batcher.add(StreamBatch({"a": "1"}, entries("abc")))
    # Even a sender with nothing to do waits for batch_wait...
    assert batcher.next_deadline(early=True) == 101.0
    clock.now = 100.999
    assert batcher.cut_expired(early=True) == 0
    clock.now = 101.0
    assert batcher.cut_expired(early=True) == 1
    # ... or for the batch to fill.
    batcher.add(StreamBatch({"a": "1"}, entries("0123456", "789")))
    (_, full) = drain(batcher)
    assert full.size_bytes == 10 and batcher.open_count == 0


def test_each_tenant_lingers_on_its_own_and_the_linger_is_capped() -> None:
    clock = FakeClock()
    batcher = Batcher(batch_wait=0.2, linger=0.05, clock=clock)
    batcher.add(StreamBatch({"a": "1"}, entries("x")))
    clock.now = 100.03
    batcher.add(StreamBatch({"__tenant_id__": "t2"}, entries("y")))
    clock.now = 100.05
    assert batcher.cut_expired(early=True) == 1
    assert [b.tenant for b in drain(batcher)] == [""]
    assert batcher.next_deadline(early=True) == 100.08
    capped = Batcher(batch_wait=0.02, linger=0.05, clock=clock)
    capped.add(StreamBatch({"a": "1"}, entries("z")))
    assert capped.next_deadline(early=True) == capped.next_deadline() == 100.07


def test_empty_stream_batch_is_settled_and_holds_nothing() -> None:
    results: list[bool] = []
    batcher = Batcher(clock=FakeClock())
    assert batcher.add(StreamBatch({"a": "1"}, [], Delivery(results.append))) == 0
    assert results == [True]
    assert batcher.open_count == 0


def test_take_all_returns_open_and_ready_batches() -> None:
    batcher = Batcher(batch_size=3, clock=FakeClock())
    batcher.add(StreamBatch({"a": "1"}, entries("aaa", "b")))
    taken = batcher.take_all()
    assert [b.entry_count for b in taken] == [1, 1]
    assert batcher.pop_ready() is None
    assert batcher.open_count == 0


def test_stream_batch_of_labels_only_internal_is_stream_braces() -> None:
    batcher = Batcher(clock=FakeClock())
    batcher.add(StreamBatch({"__x": "1"}, entries("x")))
    batcher.cut_all()
    (batch,) = drain(batcher)
    assert list(batch.streams) == ["{}"]


def test_max_streams_drops_an_overflowing_new_stream_that_fits_its_first_entry() -> (
    None
):
    drops: list[tuple[str, str, int, int]] = []
    results: list[bool] = []
    batcher = Batcher(
        batch_size=10,
        max_streams=1,
        clock=FakeClock(),
        on_drop=lambda *a: drops.append(a),
    )
    batcher.add(StreamBatch({"s": "1"}, entries("aaaa")))
    # 4 + 9 bytes overflow, but "bb" fits the open batch: the stream limit applies
    dropped = StreamBatch(
        {"s": "2"}, entries("bb", "cccccc", "d"), Delivery(results.append)
    )
    assert batcher.add(dropped) == 0
    assert drops == [("", "stream_limited", 3, 9)]
    assert results == [True]
    batcher.cut_all()
    (batch,) = drain(batcher)
    assert list(batch.streams) == ['{s="1"}']


def test_stream_key_memo_stays_correct_when_it_is_reset() -> None:
    batcher = Batcher(clock=FakeClock())
    for i in range(9000):  # more label sets than the memo keeps
        assert batcher.stream_key({"i": str(i)}) == (f'{{i="{i}"}}', "")
    assert batcher.stream_key({"i": "0", "__tenant_id__": "t"}) == ('{i="0"}', "t")


def test_a_batch_keeps_one_reference_per_delivery_and_stream() -> None:
    settled: list[bool] = []
    delivery = Delivery(settled.append)
    delivery.retain(3)  # four pieces: two reads of stdout, one of stderr, one more
    batcher = Batcher(clock=FakeClock())
    out, err = {"stream": "stdout"}, {"stream": "stderr"}
    batcher.add(StreamBatch(out, entries("a"), delivery))
    batcher.add(StreamBatch(err, entries("b"), delivery))
    batcher.add(StreamBatch(out, entries("c"), delivery))  # folded into the first
    batcher.add(StreamBatch(err, entries("d"), delivery))  # folded
    assert batcher.added_refs == 2
    assert delivery.pending == 2
    batcher.cut_all()
    (batch,) = drain(batcher)
    assert len(batch.refs) == 2
    # Loki took stdout, refused stderr for now: its reference stays with it.
    (kept,) = batch.take_deliveries({'{stream="stderr"}'})
    batch.settle()
    assert settled == []
    kept.release()
    assert settled == [True]


def test_a_folded_stream_split_over_batches_keeps_one_reference_per_batch() -> None:
    settled: list[bool] = []
    delivery = Delivery(settled.append)
    delivery.retain()
    batcher = Batcher(batch_size=10, clock=FakeClock())
    labels = {"job": "x"}
    batcher.add(StreamBatch(labels, entries("aaaa"), delivery))
    # Fills the open batch (folded there) and overflows into a new one.
    batcher.add(StreamBatch(labels, entries("bbbbbb", "cccccc"), delivery))
    batcher.cut_all()
    batches = drain(batcher)
    assert [len(b.refs) for b in batches] == [1, 1]
    assert delivery.pending == 2
    batches[0].settle()
    assert settled == []
    batches[1].settle()
    assert settled == [True]
