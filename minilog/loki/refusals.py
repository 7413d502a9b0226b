"""What Loki says it refused: pure parsing of the 4xx answers to a push.

Loki 3.6 stores the valid part of a push and names what it refused, in four shapes:

- the distributor's validation errors (400), grouped (``util.GroupedErrors``): messages
  joined by ``"; "``, each led by ``"<n> errors like: "`` when it repeats or differs
  from another (``pkg/validation/validate.go``, ``pkg/distributor/validator.go``);
- the ingester's per-stream answer (400 or 429, ``pkg/ingester/stream.go``
  ``errorForFailedEntries``): up to ``max_returned_stream_errors`` lines ``entry with
  timestamp <Go time> ignored, reason: '<why>',`` then ``user '<t>', total ignored: N
  out of M for stream: {...}``;
- the ingester's new-stream refusal (429, ``pkg/ingester/instance.go``):
  ``maximum active stream limit exceeded when trying to create stream {...}, ...``;
- the distributor's ingestion rate limit (429): nothing of the request was stored.

Anything else is not understood (``Refusal.understood`` false): callers fall back to
treating the whole request as refused. Reasons are the drop-reason labels of
``loki_write_dropped_entries_total``: Alloy's where it has one (``rate_limited``,
``stream_limited``, ``line_too_long``, ``ingester_error``), Loki's own discard reason
otherwise (``greater_than_max_sample_age``, ``too_far_in_future``, ``too_far_behind``,
...). Stream labels are returned as Loki printed them (canonical, possibly with a
``service_name`` Loki added); :func:`same_stream` compares them with a pushed set.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from minilog.errors import LabelError
from minilog.labels import SERVICE_NAME, parse_labels
from minilog.model import LogEntry, entries_size

__all__ = [
    "ENTRY_REASONS",
    "Refusal",
    "RefusalPlan",
    "RefusedEntry",
    "StreamRefusal",
    "parse_refusal",
    "plan_refusal",
    "same_stream",
]

#: Labels Loki's distributor adds when it shards a stream (``shard_streams``, on by
#: default: ``pkg/ingester/instance.go`` ``ShardLbName``; ``pkg/distributor``
#: ``timeShardLabel``): a refused shard is part of the pushed stream.
_SHARD_LABELS = ("__stream_shard__", "__time_shard__")

#: Reasons that refuse single entries (Loki's per-entry checks); the others refuse a
#: whole stream (label checks, the stream limit) or the whole request.
ENTRY_REASONS = frozenset(
    {
        "line_too_long",
        "greater_than_max_sample_age",
        "too_far_in_future",
        "too_far_behind",
        "out_of_order",
        "rate_limited",
        "disallowed_structured_metadata",
        "structured_metadata_too_large",
        "structured_metadata_too_many",
    }
)


@dataclass(frozen=True, slots=True)
class RefusedEntry:
    """One entry the ingester listed as refused: its timestamp and why."""

    timestamp_ns: int
    reason: str
    #: Flow control (a rate limit): the entry may be accepted later.
    retriable: bool


@dataclass(frozen=True, slots=True)
class StreamRefusal:
    """Entries of one stream that Loki refused for one reason.

    ``count`` is how many (``None``: every entry of the stream in the request).
    ``listed`` holds the entries the ingester named, oldest error first; it is every
    refused entry when ``len(listed) == count``. ``line_length`` is the byte length
    Loki reported for a ``line_too_long`` entry.
    """

    labels: tuple[tuple[str, str], ...]
    reason: str
    count: int | None
    retriable: bool = False
    listed: tuple[RefusedEntry, ...] = ()
    line_length: int | None = None
    #: The label text as printed, for a stream whose labels Loki could not parse.
    raw_labels: str = ""

    @property
    def complete(self) -> bool:
        """Whether ``listed`` names every refused entry."""
        return self.count is not None and len(self.listed) >= self.count


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a 4xx answer says was refused.

    ``whole``: nothing of the request was stored (``reason`` says why; ``retriable``
    is Loki's flow control, the ingestion rate limit). Otherwise ``streams`` lists what
    was refused and everything else was stored. ``understood`` is false when the body
    matched none of Loki's messages (``whole`` is then true, ``reason``
    ``ingester_error``).
    """

    status: int
    whole: bool
    reason: str = "ingester_error"
    retriable: bool = False
    streams: tuple[StreamRefusal, ...] = ()
    understood: bool = True


def same_stream(refused: Sequence[tuple[str, str]], pushed: Mapping[str, str]) -> bool:
    """Whether Loki's printed ``refused`` labels name the ``pushed`` stream.

    Loki drops empty values, adds ``service_name`` when the stream had none, and may
    add a shard label; all are allowed for.
    """
    names = dict(refused)
    if SERVICE_NAME in names and SERVICE_NAME not in pushed:
        del names[SERVICE_NAME]
    for shard in _SHARD_LABELS:
        names.pop(shard, None)
    return names == {k: v for k, v in pushed.items() if v}


# ------------------------------------------------------------------------ templates

# Hole kinds in a message template.
_LABELS = object()  # a {...} label set
_INT = object()  # decimal digits
_ANY = object()  # any text up to the template's next literal


@dataclass(frozen=True, slots=True)
class _Template:
    reason: str
    parts: tuple[object, ...]
    #: The whole stream is refused (one message per stream), not one entry.
    per_stream: bool = False


# Loki 3.6 messages, in pkg/validation/validate.go and pkg/distributor/validator.go.
_DISTRIBUTOR_TEMPLATES = (
    _Template(
        "line_too_long",
        (
            "max entry size '",
            _INT,
            "' bytes exceeded for stream '",
            _LABELS,
            "' while adding an entry with length '",
            _INT,
            "' bytes",
        ),
    ),
    _Template(
        "greater_than_max_sample_age",
        (
            "entry for stream '",
            _LABELS,
            "' has timestamp too old: ",
            _ANY,
            ", oldest acceptable timestamp is: ",
            _ANY,
        ),
    ),
    _Template(
        "too_far_in_future",
        ("entry for stream '", _LABELS, "' has timestamp too new: ", _ANY),
    ),
    _Template(
        "disallowed_structured_metadata",
        (
            "stream '",
            _LABELS,
            "' includes structured metadata, but this feature is disallowed. "
            "Please see `limits_config.allow_structured_metadata` or contact your "
            "Loki administrator to enable it",
        ),
    ),
    _Template(
        "structured_metadata_too_large",
        (
            "stream '",
            _LABELS,
            "' has structured metadata too large: '",
            _INT,
            "' bytes, limit: '",
            _INT,
            "' bytes. Please see `limits_config.max_structured_metadata_size` or "
            "contact your Loki administrator to increase it",
        ),
    ),
    _Template(
        "structured_metadata_too_many",
        (
            "stream '",
            _LABELS,
            "' has too many structured metadata labels: '",
            _INT,
            "', limit: '",
            _INT,
            "'. Please see `limits_config.max_structured_metadata_entries_count` or "
            "contact your Loki administrator to increase it",
        ),
    ),
    _Template(
        "max_label_names_per_series",
        ("entry for stream '", _LABELS, "' has ", _INT, " label names; limit ", _INT),
        per_stream=True,
    ),
    _Template(
        "label_name_too_long",
        ("stream '", _LABELS, "' has label name too long: '", _ANY, "'"),
        per_stream=True,
    ),
    _Template(
        "label_value_too_long",
        ("stream '", _LABELS, "' has label value too long: '", _ANY, "'"),
        per_stream=True,
    ),
    _Template(
        "duplicate_label_names",
        ("stream '", _LABELS, "' has duplicate label name: '", _ANY, "'"),
        per_stream=True,
    ),
    _Template(
        "missing_enforced_labels",
        ("missing required labels ", _ANY, " for user ", _ANY, " for stream ", _LABELS),
        per_stream=True,
    ),
)

_GROUP_COUNT = re.compile(r"(\d+) errors like: ")
_INT_RE = re.compile(r"\d+")

_RATE_LIMIT_PREFIX = "ingestion rate limit exceeded for user "
_STREAM_LIMIT_PREFIX = (
    "maximum active stream limit exceeded when trying to create stream "
)
_STREAM_LIMIT_REST = ", reduce the number of active streams"

_ENTRY_LINE = re.compile(r"entry with timestamp (.+?) ignored, reason: '(.*)',\Z")
_TRAILER = re.compile(
    r"user '(.*)', total ignored: (\d+) out of (\d+) for stream: (\{.*\})\Z"
)
# Go's time.Time.String(): "2006-01-02 15:04:05.999999999 -0700 MST", plus a
# monotonic-clock reading for times taken from the clock (never for pushed entries).
_GO_TIME = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? "
    r"([+-])(\d\d)(\d\d)(?: \S+)?(?: m=[+-][\d.]+)?\Z"
)
_RATE_LIMITED_REASON = "Per stream rate limit exceeded"
_TOO_FAR_BEHIND_REASON = "entry too far behind"
_OUT_OF_ORDER_REASON = "entry out of order"


def _label_set_end(text: str, pos: int) -> int:
    """Index just past the ``{...}`` label set starting at ``pos``; -1 if none.

    Values (and names in Prometheus 3's output) are Go-quoted, so braces, quotes and
    ``'`` inside them never end the set.
    """
    if not text.startswith("{", pos):
        return -1
    i = pos + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                return -1
        elif ch == "}":
            return i + 1
        i += 1
    return -1


def _parse_label_text(text: str) -> tuple[tuple[str, str], ...] | None:
    try:
        return tuple(sorted(parse_labels(text).items()))
    except LabelError:
        return None


def _match(template: _Template, text: str, pos: int) -> tuple[list[str], int] | None:
    """Match ``template`` at ``pos``: the hole values and the end, or ``None``."""
    values: list[str] = []
    parts = template.parts
    for index, part in enumerate(parts):
        if isinstance(part, str):
            if not text.startswith(part, pos):
                return None
            pos += len(part)
        elif part is _LABELS:
            end = _label_set_end(text, pos)
            if end < 0:
                return None
            values.append(text[pos:end])
            pos = end
        elif part is _INT:
            found = _INT_RE.match(text, pos)
            if found is None:
                return None
            values.append(found.group())
            pos = found.end()
        else:  # _ANY: up to the next literal, or the end of this message
            following = parts[index + 1] if index + 1 < len(parts) else None
            if isinstance(following, str):
                end = text.find(following, pos)
            elif following is None:
                end = text.find("; ", pos)
                end = len(text) if end < 0 else end
            else:
                end = -1
            if end < 0:
                return None
            values.append(text[pos:end])
            pos = end
    return values, pos


def _parse_grouped(text: str) -> list[StreamRefusal] | None:
    """The distributor's grouped validation errors; ``None`` if any part is unknown."""
    out: list[StreamRefusal] = []
    pos = 0
    n = len(text)
    while pos < n:
        count = 1
        group = _GROUP_COUNT.match(text, pos)
        if group is not None:
            count = int(group.group(1))
            pos = group.end()
        for template in _DISTRIBUTOR_TEMPLATES:
            matched = _match(template, text, pos)
            if matched is None:
                continue
            values, end = matched
            # A message ends the body or is followed by the next one.
            if end != n and not text.startswith("; ", end):
                continue
            refusal = _distributor_refusal(template, values, count)
            if refusal is None:
                return None
            out.append(refusal)
            pos = end + 2 if end != n else end
            break
        else:
            return None
    return out or None


def _distributor_refusal(
    template: _Template, values: list[str], count: int
) -> StreamRefusal | None:
    label_text = next(v for v in values if v.startswith("{"))
    labels = _parse_label_text(label_text)
    if labels is None:
        return None
    if template.per_stream:
        # Added once per stream: the count says how many streams, all entries each.
        return StreamRefusal(labels, template.reason, None, raw_labels=label_text)
    line_length = int(values[2]) if template.reason == "line_too_long" else None
    return StreamRefusal(
        labels, template.reason, count, line_length=line_length, raw_labels=label_text
    )


def _go_time_ns(text: str) -> int | None:
    found = _GO_TIME.match(text)
    if found is None:
        return None
    year, month, day, hour, minute, second, frac, sign, oh, om = found.groups()
    try:
        seconds = calendar.timegm(
            (int(year), int(month), int(day), int(hour), int(minute), int(second))
        )
    except (ValueError, OverflowError):
        return None
    offset = (int(oh) * 3600 + int(om) * 60) * (1 if sign == "+" else -1)
    nanos = int((frac or "").ljust(9, "0"))
    return (seconds - offset) * 1_000_000_000 + nanos


def _entry_reason(why: str) -> tuple[str, bool]:
    if why.startswith(_RATE_LIMITED_REASON):
        return "rate_limited", True
    if why.startswith(_TOO_FAR_BEHIND_REASON):
        return "too_far_behind", False
    if why.startswith(_OUT_OF_ORDER_REASON):
        return "out_of_order", False
    return "ingester_error", False


def _parse_ingester(status: int, text: str) -> list[StreamRefusal] | None:
    """The ingester's per-entry answer for one stream, split by reason."""
    lines = text.split("\n")
    trailer = _TRAILER.match(lines[-1])
    if trailer is None:
        return None
    labels = _parse_label_text(trailer.group(4))
    if labels is None:
        return None
    total = int(trailer.group(2))
    listed: list[RefusedEntry] = []
    for line in lines[:-1]:
        entry = _ENTRY_LINE.match(line)
        if entry is None:
            return None
        timestamp = _go_time_ns(entry.group(1))
        if timestamp is None:
            return None
        reason, retriable = _entry_reason(entry.group(2))
        listed.append(RefusedEntry(timestamp, reason, retriable))
    if len(listed) > total:
        return None
    raw = trailer.group(4)
    if len(listed) == total:
        # Every refused entry is named: one refusal per reason, exact.
        by_reason: dict[str, list[RefusedEntry]] = {}
        for item in listed:
            by_reason.setdefault(item.reason, []).append(item)
        return [
            StreamRefusal(
                labels,
                reason,
                len(items),
                retriable=items[0].retriable,
                listed=tuple(items),
                raw_labels=raw,
            )
            for reason, items in by_reason.items()
        ]
    # Loki names only the first few: the status tells the kind of the last one
    # (429 when it was rate limited), the listed ones show where refusals began.
    retriable = status == 429 or any(item.retriable for item in listed)
    reason = "rate_limited" if retriable else (listed[0].reason if listed else "")
    return [
        StreamRefusal(
            labels,
            reason or "too_far_behind",
            total,
            retriable=retriable,
            listed=tuple(listed),
            raw_labels=raw,
        )
    ]


def _parse_stream_limit(text: str) -> list[StreamRefusal] | None:
    if not text.startswith(_STREAM_LIMIT_PREFIX):
        return None
    start = len(_STREAM_LIMIT_PREFIX)
    end = _label_set_end(text, start)
    if end < 0 or not text.startswith(_STREAM_LIMIT_REST, end):
        return None
    labels = _parse_label_text(text[start:end])
    if labels is None:
        return None
    return [
        StreamRefusal(
            labels, "stream_limited", None, retriable=True, raw_labels=text[start:end]
        )
    ]


def parse_refusal(status: int, text: str) -> Refusal:
    """What the 4xx answer ``status`` with body ``text`` says Loki refused.

    ``text`` is the whole body (Loki ends it with a newline). Statuses other than
    400 and 429 (413, 422, 401, ...) refuse the whole request.
    """
    body = text[:-1] if text.endswith("\n") else text
    if status == 429:
        if body.startswith(_RATE_LIMIT_PREFIX):
            return Refusal(status, True, "rate_limited", retriable=True)
        streams = _parse_stream_limit(body) or _parse_ingester(status, body)
        if streams:
            return Refusal(status, False, streams=tuple(streams))
        # A 429 from anything else (a gateway, an older Loki): flow control for the
        # whole request, as Alloy treats every 429.
        return Refusal(status, True, "rate_limited", retriable=True, understood=False)
    if status == 400:
        streams = _parse_ingester(status, body) or _parse_grouped(body)
        if streams:
            return Refusal(status, False, streams=tuple(streams))
    return Refusal(status, True, "ingester_error", understood=False)


# ------------------------------------------------------------------ onto the request


@dataclass(slots=True)
class RefusalPlan:
    """A refusal mapped onto the streams of the refused request.

    ``dropped``: reason -> (entries, bytes) finally refused. ``held``: stream key ->
    entries to push again later (flow control), ``held_reasons`` why. ``unstored``:
    streams refused as a whole. Everything else was stored.
    ``retry_whole``: a stream Loki named as rate limited is not in the request, so
    nothing can be settled: push the whole request again. ``understood`` false: a
    refused stream could not be found or counted; treat the request as Alloy does.
    """

    dropped: dict[str, tuple[int, int]] = field(default_factory=dict)
    held: dict[str, list[LogEntry]] = field(default_factory=dict)
    held_reasons: dict[str, str] = field(default_factory=dict)
    unstored: set[str] = field(default_factory=set)
    retry_whole: bool = False
    understood: bool = True

    @property
    def dropped_entries(self) -> int:
        return sum(entries for entries, _ in self.dropped.values())

    @property
    def held_entries(self) -> int:
        return sum(len(entries) for entries in self.held.values())


def _find_stream(
    refusal: StreamRefusal,
    streams: Mapping[str, Sequence[LogEntry]],
    parsed: dict[str, dict[str, str] | None],
) -> str | None:
    """The key of the pushed stream Loki named, or ``None``."""
    if refusal.raw_labels in streams:
        return refusal.raw_labels
    for key in streams:
        if key not in parsed:
            try:
                parsed[key] = parse_labels(key)
            except LabelError:
                parsed[key] = None
        labels = parsed[key]
        if labels is not None and same_stream(refusal.labels, labels):
            return key
    return None


def plan_refusal(
    refusal: Refusal,
    streams: Mapping[str, Sequence[LogEntry]],
    *,
    hold_retriable: bool,
    unconfirmed: Collection[str] = (),
) -> RefusalPlan:
    """Map a partial ``refusal`` (``refusal.whole`` false) onto the pushed ``streams``.

    Rate-limited entries are held when ``hold_retriable`` (``retry_on_http_429``),
    else dropped with their reason. Entries Loki listed are held one by one (by
    timestamp: Loki drops an identical timestamp and line it already has, so holding
    a same-timestamp neighbour too is harmless); when it listed only the first few,
    the stream is held from the first refused entry on. A stream over Loki's stream
    limit is held whole, and so is every stream of ``unconfirmed`` (streams Loki has
    not accepted lately): the ingester reports only the last stream of a request that
    failed, so a new stream refused before it would otherwise be lost unseen.
    """
    plan = RefusalPlan()
    held_index: dict[str, set[int]] = {}
    dropped_from: dict[str, int] = {}
    parsed: dict[str, dict[str, str] | None] = {}
    stream_limited = False
    for item in refusal.streams:
        key = _find_stream(item, streams, parsed)
        hold = item.retriable and hold_retriable
        if key is None:
            if hold:
                plan.retry_whole = True
                return plan
            if item.count is None:
                plan.understood = False  # a whole stream of unknown size
                return plan
            _count(plan, item.reason, item.count, _line_bytes(item) * item.count)
            continue
        entries = streams[key]
        if item.reason == "stream_limited" and hold:
            stream_limited = True
        indexes: Sequence[int]
        if item.count is None:
            plan.unstored.add(key)
            indexes = range(len(entries))
        elif item.listed and (item.complete or hold):
            stamps = {entry.timestamp_ns for entry in item.listed}
            indexes = [i for i, e in enumerate(entries) if e.timestamp_ns in stamps]
            if not item.complete and indexes:
                # Refusals began at the first listed entry; some later ones passed.
                indexes = range(indexes[0], len(entries))
        else:
            # Counted, not named: nothing to hold, only to count.
            already = dropped_from.get(key, 0)
            count = max(0, min(item.count, len(entries) - already))
            dropped_from[key] = already + count
            size = (
                _line_bytes(item) * count
                if item.line_length is not None
                else _average_bytes(entries) * count
            )
            _count(plan, item.reason, count, size)
            continue
        if hold:
            held_index.setdefault(key, set()).update(indexes)
            plan.held_reasons.setdefault(key, item.reason)
        else:
            chosen = [entries[i] for i in indexes]
            count = item.count if item.count is not None else len(chosen)
            already = dropped_from.get(key, 0)
            count = max(0, min(count, len(entries) - already))
            dropped_from[key] = already + count
            _count(plan, item.reason, count, entries_size(chosen) if chosen else 0)
    if stream_limited:
        for key in streams:
            if key in unconfirmed:
                held_index.setdefault(key, set()).update(range(len(streams[key])))
                plan.held_reasons.setdefault(key, "stream_limited")
    for key, chosen_indexes in held_index.items():
        entries = streams[key]
        plan.held[key] = [entries[i] for i in sorted(chosen_indexes)]
    return plan


def _count(plan: RefusalPlan, reason: str, entries: int, size: int) -> None:
    if entries <= 0:
        return
    old_entries, old_size = plan.dropped.get(reason, (0, 0))
    plan.dropped[reason] = (old_entries + entries, old_size + size)


def _line_bytes(item: StreamRefusal) -> int:
    return item.line_length or 0


def _average_bytes(entries: Sequence[LogEntry]) -> int:
    if not entries:
        return 0
    return entries_size(entries) // len(entries)
