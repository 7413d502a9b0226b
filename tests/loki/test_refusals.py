"""refusals: Loki 3.6's 4xx answers parsed into what it refused, and mapped onto the
pushed streams.

The texts are built from Loki 3.6.0's own formats: ``pkg/validation/validate.go``
(messages), ``pkg/distributor/validator.go`` (timestamps as RFC 3339),
``pkg/util/errors.go`` (``GroupedErrors``), ``pkg/ingester/stream.go``
(``errorForFailedEntries``, Go ``time.Time.String`` timestamps) and
``pkg/ingester/instance.go`` (the stream limit). Each body ends with the newline Go's
``http.Error`` adds.
"""

from __future__ import annotations

import loki_messages as messages
import pytest

from minilog.loki.refusals import (
    RefusedEntry,
    StreamRefusal,
    parse_refusal,
    plan_refusal,
    same_stream,
)
from minilog.model import LogEntry

__all__: list[str] = []

APP = '{app="api", service_name="api"}'  # as Loki prints it: service_name added
APP_PAIRS = (("app", "api"), ("service_name", "api"))


def line_too_long(labels: str = APP, length: int = 300000) -> str:
    return messages.line_too_long(labels, length)


def too_old(labels: str = APP) -> str:
    return messages.too_old(labels)


def rate_limited_line(ns: int, labels: str = APP) -> str:
    return messages.rate_limited_line(ns, labels)


def trailer(ignored: int, total: int, labels: str = APP) -> str:
    return messages.trailer(ignored, total, labels)


STREAM_LIMIT = messages.stream_limit(APP)
TS1_NS = 1767225600_000000001  # 2026-01-01 00:00:00.000000001 +0000 UTC
TS2_NS = 1767225600_000000002
TS3_NS = 1767225601_000000000  # 2026-01-01 00:00:01 +0000 UTC (no fraction)


# ----------------------------------------------------------------- the distributor


def test_one_over_long_line_names_its_stream_and_length() -> None:
    refusal = parse_refusal(400, line_too_long() + "\n")
    assert not refusal.whole and refusal.understood
    assert refusal.streams == (
        StreamRefusal(
            APP_PAIRS, "line_too_long", 1, line_length=300000, raw_labels=APP
        ),
    )


def test_grouped_errors_are_counted_per_message() -> None:
    # GroupedErrors: "<n> errors like: " when a message repeats or several differ,
    # joined by "; " in Go map order.
    body = (
        f"3 errors like: {line_too_long()}; 1 errors like: {too_old()}; "
        f"2 errors like: {line_too_long(length=270000)}\n"
    )
    refusal = parse_refusal(400, body)
    got = sorted((s.reason, s.count, s.line_length) for s in refusal.streams)
    assert got == [
        ("greater_than_max_sample_age", 1, None),
        ("line_too_long", 2, 270000),
        ("line_too_long", 3, 300000),
    ]


def test_label_values_that_look_like_message_text_do_not_confuse_the_parser() -> None:
    tricky = '{app="a\'; 1 errors like: b", path="{x}", q="\\"}"}'
    body = f"1 errors like: {line_too_long(tricky)}; 1 errors like: {too_old()}\n"
    refusal = parse_refusal(400, body)
    assert [dict(s.labels) for s in refusal.streams] == [
        {"app": "a'; 1 errors like: b", "path": "{x}", "q": '"}'},
        dict(APP_PAIRS),
    ]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            f"entry for stream '{APP}' has timestamp too new: 2027-01-01T00:00:00Z",
            "too_far_in_future",
        ),
        (
            f"stream '{APP}' includes structured metadata, but this feature is "
            "disallowed. Please see `limits_config.allow_structured_metadata` or "
            "contact your Loki administrator to enable it",
            "disallowed_structured_metadata",
        ),
        (
            f"stream '{APP}' has structured metadata too large: '70000' bytes, limit: "
            "'65536' bytes. Please see `limits_config.max_structured_metadata_size` or "
            "contact your Loki administrator to increase it",
            "structured_metadata_too_large",
        ),
        (
            f"stream '{APP}' has too many structured metadata labels: '129', "
            "limit: '128'. Please see "
            "`limits_config.max_structured_metadata_entries_count` or contact your "
            "Loki administrator to increase it",
            "structured_metadata_too_many",
        ),
    ],
    ids=["too-new", "metadata-disallowed", "metadata-too-large", "metadata-too-many"],
)
def test_per_entry_reasons_use_lokis_names(message: str, reason: str) -> None:
    (stream,) = parse_refusal(400, message + "\n").streams
    assert (stream.reason, stream.count, stream.labels) == (reason, 1, APP_PAIRS)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            f"entry for stream '{APP}' has 16 label names; limit 15",
            "max_label_names_per_series",
        ),
        (
            f"stream '{APP}' has label name too long: '{'n' * 1025}'",
            "label_name_too_long",
        ),
        (f"stream '{APP}' has label value too long: 'v'", "label_value_too_long"),
        (f"stream '{APP}' has duplicate label name: 'app'", "duplicate_label_names"),
        (
            f"missing required labels team,env for user fake for stream {APP}",
            "missing_enforced_labels",
        ),
    ],
    ids=["label-count", "name-too-long", "value-too-long", "duplicate", "enforced"],
)
def test_stream_level_reasons_refuse_the_whole_stream(
    message: str, reason: str
) -> None:
    (stream,) = parse_refusal(400, f"{message}; {line_too_long()}\n").streams[:1]
    assert (stream.reason, stream.count) == (reason, None)


# ----------------------------------------------------------------- the ingester


def test_per_stream_rate_limit_lists_every_refused_entry() -> None:
    body = (
        "\n".join([rate_limited_line(TS1_NS), rate_limited_line(TS2_NS), trailer(2, 5)])
        + "\n"
    )
    (stream,) = parse_refusal(429, body).streams
    assert stream.reason == "rate_limited" and stream.retriable
    assert stream.count == 2 and stream.complete
    assert [e.timestamp_ns for e in stream.listed] == [TS1_NS, TS2_NS]
    assert stream.labels == APP_PAIRS


def test_mixed_ingester_reasons_split_by_reason() -> None:
    body = "\n".join(
        [messages.too_far_behind_line(TS1_NS), rate_limited_line(TS3_NS), trailer(2, 3)]
    )
    refusal = parse_refusal(429, body + "\n")
    got = {
        (s.reason, s.retriable, tuple(e.timestamp_ns for e in s.listed))
        for s in refusal.streams
    }
    assert got == {
        ("too_far_behind", False, (TS1_NS,)),
        ("rate_limited", True, (TS3_NS,)),
    }


def test_more_refusals_than_listed_keep_the_total() -> None:
    # max_returned_stream_errors (10) bounds the list, not the total.
    lines = [rate_limited_line(TS1_NS)] * 10
    (stream,) = parse_refusal(429, "\n".join([*lines, trailer(25, 40)])).streams
    assert (stream.count, len(stream.listed), stream.complete) == (25, 10, False)
    assert stream.retriable


def test_too_far_behind_is_a_400_that_drops() -> None:
    body = "\n".join([messages.too_far_behind_line(TS1_NS), trailer(1, 4)]) + "\n"
    (stream,) = parse_refusal(400, body).streams
    assert (stream.reason, stream.retriable, stream.count) == (
        "too_far_behind",
        False,
        1,
    )


def test_go_time_with_offset_and_monotonic_reading() -> None:
    line = messages.rate_limited_line(0, APP).replace(
        messages.go_time(0), "2026-01-01 02:00:00.5 +0200 CEST m=+0.001"
    )
    (stream,) = parse_refusal(429, f"{line}\n{trailer(1, 1)}").streams
    assert stream.listed == (RefusedEntry(1767225600_500000000, "rate_limited", True),)


def test_the_stream_limit_names_one_new_stream() -> None:
    refusal = parse_refusal(429, STREAM_LIMIT)
    assert not refusal.whole
    assert refusal.streams == (
        StreamRefusal(
            APP_PAIRS, "stream_limited", None, retriable=True, raw_labels=APP
        ),
    )


# ----------------------------------------------------------------- whole requests


def test_the_ingestion_rate_limit_refuses_the_whole_request() -> None:
    body = (
        "ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) while "
        "attempting to ingest '1000' lines totaling '1048576' bytes, reduce log volume "
        "or contact your Loki administrator to see if the limit can be increased\n"
    )
    refusal = parse_refusal(429, body)
    assert (refusal.whole, refusal.retriable, refusal.reason) == (
        True,
        True,
        "rate_limited",
    )
    assert refusal.understood


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, "couldn't parse push request: snappy: corrupt input\n", "ingester_error"),
        (400, f"{line_too_long()}; something Loki 3.7 says\n", "ingester_error"),
        (
            413,
            "request body too large: 104857601 bytes, limit: 104857600 bytes\n",
            "ingester_error",
        ),
        (
            422,
            "error at least one valid stream is required for ingestion\n",
            "ingester_error",
        ),
        (401, "no org id\n", "ingester_error"),
        (429, "Too Many Requests (from a gateway)\n", "rate_limited"),
    ],
    ids=["parse-error", "unknown-part", "413", "422", "401", "gateway-429"],
)
def test_anything_else_is_the_whole_request_not_understood(
    status: int, body: str, reason: str
) -> None:
    refusal = parse_refusal(status, body)
    assert refusal.whole and not refusal.understood
    assert refusal.reason == reason
    assert refusal.retriable == (status == 429)


# ----------------------------------------------------------------- matching


def test_same_stream_allows_the_service_name_loki_added() -> None:
    assert same_stream(APP_PAIRS, {"app": "api"})
    assert same_stream(APP_PAIRS, {"app": "api", "service_name": "api"})
    assert not same_stream(APP_PAIRS, {"app": "api", "service_name": "x"})
    assert not same_stream(APP_PAIRS, {"app": "web"})
    assert same_stream((("app", "api"),), {"app": "api", "empty": ""})
    # shard_streams (on by default) names a shard of the pushed stream
    sharded = (("__stream_shard__", "2"), *APP_PAIRS)
    assert same_stream(sharded, {"app": "api"})


def entries(n: int, start: int = 1, size: int = 10) -> list[LogEntry]:
    return [LogEntry(start + i, f"{i:0{size}d}") for i in range(n)]


def test_plan_counts_a_400_exactly_and_stores_the_rest() -> None:
    streams = {'{app="api"}': entries(249), '{app="web"}': entries(1)}
    plan = plan_refusal(
        parse_refusal(400, line_too_long(length=300000) + "\n"),
        streams,
        hold_retriable=True,
    )
    assert plan.dropped == {"line_too_long": (1, 300000)}
    assert plan.held == {} and plan.understood


def test_plan_holds_only_the_listed_rate_limited_entries() -> None:
    api = [LogEntry(TS1_NS - 1, "a"), LogEntry(TS1_NS, "b"), LogEntry(TS2_NS, "c")]
    streams = {'{app="api"}': api, '{app="web"}': entries(3)}
    body = "\n".join(
        [rate_limited_line(TS1_NS), rate_limited_line(TS2_NS), trailer(2, 3)]
    )
    plan = plan_refusal(parse_refusal(429, body), streams, hold_retriable=True)
    assert plan.held == {'{app="api"}': api[1:]}
    assert plan.dropped == {}
    dropped = plan_refusal(parse_refusal(429, body), streams, hold_retriable=False)
    assert dropped.held == {} and dropped.dropped == {"rate_limited": (2, 2)}


def test_plan_holds_from_the_first_listed_entry_when_the_list_is_cut() -> None:
    api = [LogEntry(TS1_NS - 1, "a"), LogEntry(TS1_NS, "b"), *entries(20, TS3_NS)]
    body = "\n".join([*[rate_limited_line(TS1_NS)] * 10, trailer(15, 22)])
    plan = plan_refusal(
        parse_refusal(429, body), {'{app="api"}': api}, hold_retriable=True
    )
    assert plan.held == {'{app="api"}': api[1:]}


def test_plan_for_the_stream_limit_holds_the_new_streams() -> None:
    streams = {
        '{app="old"}': entries(100),
        '{app="other-new"}': entries(2),
        '{app="api"}': entries(1),
    }
    plan = plan_refusal(
        parse_refusal(429, STREAM_LIMIT),
        streams,
        hold_retriable=True,
        unconfirmed={'{app="other-new"}', '{app="api"}'},
    )
    # Loki names only the last stream it failed; an earlier new one may have failed
    # unseen: held too (re-sending a stored entry is deduplicated by Loki).
    assert set(plan.held) == {'{app="api"}', '{app="other-new"}'}
    assert plan.held_reasons == dict.fromkeys(plan.held, "stream_limited")
    assert plan.dropped == {} and plan.unstored == {'{app="api"}'}
    off = plan_refusal(parse_refusal(429, STREAM_LIMIT), streams, hold_retriable=False)
    assert off.held == {} and off.dropped == {"stream_limited": (1, 10)}


def test_plan_retries_the_whole_request_when_a_named_stream_is_not_in_it() -> None:
    plan = plan_refusal(
        parse_refusal(429, STREAM_LIMIT),
        {'{app="web"}': entries(3)},
        hold_retriable=True,
    )
    assert plan.retry_whole
