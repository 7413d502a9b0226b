"""``Pipeline`` and ``build_pipeline``: Alloy stage arguments and defaults to stages.

Owns argument decoding and validation for every supported stage, raising ``StageError``
with Alloy's reasons, and the ``Pipeline`` facade that turns a ``StreamBatch`` into
segments, runs the stages and regroups the result. Pure; the caller passes the time.
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client import CollectorRegistry, Counter

from minilog._go import surrogate_free
from minilog._re2 import group_index
from minilog.errors import StageError
from minilog.labels import TENANT_LABEL, is_valid_label_name
from minilog.model import StreamBatch
from minilog.process.arguments import (
    METRIC_ARGS,
    NESTED_ARGS,
    OUT_OF_SCOPE,
    RULE_ARGS,
    STAGE_ARGS,
    StageArgs,
)
from minilog.process.core import Segment, compile_regex, finish
from minilog.process.cri import CriStage
from minilog.process.extract import JsonStage, LogfmtStage, PatternStage, RegexStage
from minilog.process.filter import DropStage, LimitStage, MatchStage, SamplingStage
from minilog.process.gotemplate import GoTemplate
from minilog.process.gotime import compile_format
from minilog.process.labels import (
    CopyLabelStage,
    LabelDropStage,
    LabelKeepStage,
    LabelsStage,
    StaticLabelsStage,
    StructuredMetadataDropStage,
    StructuredMetadataStage,
)
from minilog.process.lines import (
    DecolorizeStage,
    DockerStage,
    LuhnStage,
    OutputStage,
    PackStage,
    ReplaceStage,
    TemplateStage,
    TimestampStage,
    TruncateRule,
    TruncateStage,
)
from minilog.process.metrics import (
    MetricSpec,
    MetricsStage,
    SeriesCollector,
    is_valid_metric_name,
    register_collector,
)
from minilog.process.multiline import MultilineStage
from minilog.process.parsers import (
    compile_jmespath,
    compile_pattern,
    parse_selector,
)
from minilog.process.stage import Stage, earliest_deadline, flush_chain, run_chain
from minilog.process.templatefuncs import compile_go_template

__all__ = ["STAGE_NAMES", "Pipeline", "StageSpec", "build_pipeline"]

#: One stage block: its name (``stage.json``) and its decoded arguments by Alloy name.
StageSpec = tuple[str, Mapping[str, Any]]

_NS: Final = 1_000_000_000
#: client_golang's default histogram buckets, for an empty ``buckets`` list.
_DEFAULT_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Pipeline:
    """A compiled ``loki.process`` stage list; build it with ``build_pipeline``.

    Each entry flows through the stages with its labels, its extracted map (seeded with
    the batch labels, as in Alloy), its timestamp, line and structured metadata. Stages
    work on runs of entries that share a label set: those that only touch labels (static
    labels, label drop/keep, a match on labels alone) cost one step per batch, and a
    label dict is copied only when a stage changes it.

    Delivery: ``process`` takes over the batch's delivery reference. Every returned
    batch owns one (``retain`` per extra batch); when every entry is dropped it is
    released; lines held by ``stage.multiline`` keep one until their block is sent, and
    a batch mixing entries of several deliveries carries one that settles them all.

    Usage::

        pipeline = build_pipeline(stage_specs, registry=registry)
        for out in pipeline.process(batch, time.time_ns()):
            await receiver.send(out)
        # when pipeline.next_deadline_ns() passes (flush_all at shutdown):
        for out in pipeline.flush_expired(time.time_ns()):
            await receiver.send(out)
    """

    __slots__ = ("_stages",)

    def __init__(self, stages: Sequence[Stage]) -> None:
        self._stages = tuple(stages)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    @property
    def holds_entries(self) -> bool:
        """Whether entries can be held back until a deadline (``stage.multiline``,
        ``stage.limit`` with ``drop = false``): the caller runs a flush timer."""
        return any(stage.holds for stage in self._stages)

    def backlog(self) -> int:
        """Entries held that their sources should wait for (``stage.limit`` with
        ``drop = false`` waiting for tokens)."""
        return sum(stage.backlog for stage in self._stages)

    def process(self, batch: StreamBatch, now_ns: int) -> list[StreamBatch]:
        """Run ``batch`` through the stages; one batch per resulting label set.

        Args:
            batch: the input; its labels and entries are not modified.
            now_ns: the current Unix time in nanoseconds (``time.time_ns()``), used by
                ``older_than``, multiline waits and year-less timestamp layouts.
        """
        if not self._stages:
            return [batch]
        if not batch.entries:
            batch.settle()
            return []
        seg = Segment(batch.labels, batch.entries, None, batch.labels, batch.delivery)
        return finish(run_chain(self._stages, [seg], now_ns))

    def flush_expired(self, now_ns: int) -> list[StreamBatch]:
        """Multiline blocks idle for ``max_wait_time``, run through the later stages."""
        return finish(flush_chain(self._stages, now_ns, force=False))

    def flush_all(self, now_ns: int) -> list[StreamBatch]:
        """Every held multiline block, whatever its age (at shutdown or reload)."""
        return finish(flush_chain(self._stages, now_ns, force=True))

    def next_deadline_ns(self) -> int | None:
        """When ``flush_expired`` will next have a block to send; None: nothing held."""
        return earliest_deadline(self._stages)


# One counter per name and registry, shared by all stages and pipelines using it (Alloy
# reuses the registered collector the same way), without keeping registries alive.
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Counter]] = (
    weakref.WeakKeyDictionary()
)


def _counter(
    registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]
) -> Counter:
    known = _COUNTERS.setdefault(registry, {})
    counter = known.get(name)
    if counter is None:
        counter = known[name] = Counter(name, doc, labels, registry=registry)
    return counter


def _drop_counter(registry: CollectorRegistry) -> Counter:
    return _counter(
        registry,
        "loki_process_dropped_lines_total",
        "A count of all log lines dropped as a result of a pipeline stage",
        ("reason",),
    )


def build_pipeline(
    stages: Sequence[StageSpec], *, registry: CollectorRegistry | None = None
) -> Pipeline:
    """Build a pipeline from stage blocks in configuration order.

    Args:
        stages: ``(block name, arguments)`` pairs; a ``stage.match`` carries its nested
            stage list the same way under ``"stages"``.
        registry: where ``loki_process_dropped_lines_total`` is registered; a private
            registry when omitted (never the global one).

    Raises:
        StageError: an unknown stage, an unknown or invalid argument.
    """
    builder = _Builder(CollectorRegistry() if registry is None else registry)
    return Pipeline(builder.stages(stages))


class _Builder:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def stages(self, specs: Sequence[StageSpec]) -> list[Stage]:
        out: list[Stage] = []
        for spec in specs:
            if not (isinstance(spec, tuple | list) and len(spec) == 2):
                raise StageError(
                    "each stage must be a (name, arguments) pair", str(spec)[:40]
                )
            name, args = spec
            build = _BUILDERS.get(name)
            if build is None:
                reason = OUT_OF_SCOPE.get(str(name))
                if reason is not None:
                    raise StageError(reason, str(name))
                supported = ", ".join(sorted(STAGE_NAMES))
                raise StageError(
                    f"unsupported stage (supported: {supported})", str(name)
                )
            if not isinstance(args, Mapping):
                raise StageError("arguments must be a mapping", name)
            out.append(build(self, name, args))
        return out

    def json(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        expressions = a.string_map("expressions")
        pattern = a.string("regex")
        if not expressions and not pattern:
            raise a.error("JMES expressions or regex is required")
        source = _source_or_line(a)
        compiled = {}
        for key, expr in expressions.items():
            try:
                compiled[key] = compile_jmespath(expr or key)
            except ValueError as exc:
                hint = ""
                if "-" in (expr or key):
                    hint = ' (quote a name with a "-" in it, as in "\\"a-b\\"")'
                raise a.error(
                    f"could not compile JMES expression: {exc}{hint}",
                    "expressions",
                    key,
                ) from None
        regex = _regex(a, "regex", pattern) if pattern else None
        return JsonStage(compiled, source, a.boolean("drop_malformed"), regex)

    def logfmt(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        mapping = a.string_map("mapping")
        pattern = a.string("regex")
        if not mapping and not pattern:
            raise a.error("logfmt mapping or regex is required")
        regex = _regex(a, "regex", pattern) if pattern else None
        return LogfmtStage(mapping, a.string("source") or None, regex)

    def regex(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        pattern = a.string("expression", required=True)
        source = _source_or_line(a)
        compiled = _regex(a, "expression", pattern)
        groups = group_index(compiled)
        label_groups = None
        if a.boolean("labels_from_groups"):
            label_groups = {k: v for k, v in groups.items() if is_valid_label_name(k)}
        return RegexStage(compiled, groups, source, label_groups)

    def pattern(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        text = a.string("pattern", required=True)
        source = _source_or_line(a)
        try:
            compiled = compile_pattern(text)
        except ValueError as exc:
            raise a.error(f"failed to parse pattern: {exc}", "pattern") from None
        return PatternStage(compiled, source, a.boolean("labels_from_groups"))

    def _label_values(self, a: StageArgs, key: str = "values") -> dict[str, str]:
        values = a.string_map(key)
        for label in values:
            # Alloy v1.18 validates names as UTF-8 (prometheus/common's default).
            if not label or not surrogate_free(label):
                raise a.error(f"invalid label name: {label}", key, label)
        return values

    def labels(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        if not a.has("values"):
            raise a.error("label stage config cannot be empty")
        values = {k: v or k for k, v in self._label_values(a).items()}
        source_type = a.string("source_type", blank=True)
        if source_type not in ("extracted", "structured_metadata"):
            raise a.error(
                f"invalid labels source_type: {source_type}. "
                "Can only be 'extracted' or 'structured_metadata'",
                "source_type",
            )
        return LabelsStage(values, from_metadata=source_type == "structured_metadata")

    def static_labels(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        if not a.has("values"):
            raise a.error("static_labels stage config cannot be empty")
        values = self._label_values(a)
        for label, value in values.items():
            if not surrogate_free(value):
                raise a.error(f"invalid label value: {value}", "values", label)
        return StaticLabelsStage(values)

    def label_drop(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        return LabelDropStage(
            _nonempty_list(a, "labeldrop stage config cannot be empty")
        )

    def label_keep(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        return LabelKeepStage(
            _nonempty_list(a, "labelallow stage config cannot be empty")
        )

    def structured_metadata(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        values = {k: v or k for k, v in self._label_values(a).items()}
        pattern = a.string("regex")
        regex = _regex(a, "regex", pattern) if pattern else None
        return StructuredMetadataStage(values, regex)

    def structured_metadata_drop(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        return StructuredMetadataDropStage(
            _nonempty_list(a, "structured_metadata_drop stage config cannot be empty")
        )

    def timestamp(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        source = a.string("source", required=True)
        fmt = a.string("format", required=True)
        location: ZoneInfo | None = None
        if a.has("location"):
            loc_name = a.string("location")
            try:
                location = ZoneInfo(loc_name or "UTC")
            except (ZoneInfoNotFoundError, ValueError):
                raise a.error(
                    f"invalid location specified: unknown time zone {loc_name}",
                    "location",
                ) from None
        action = a.string("action_on_failure", blank=True)
        if action not in ("fudge", "skip"):
            raise a.error(
                "invalid action on failure (supported values are [skip fudge])",
                "action_on_failure",
            )
        duplicates = a.string("action_on_duplicate_timestamp", blank=True)
        if duplicates not in ("fudge", "keep"):
            raise a.error(
                "invalid action on duplicate timestamp (supported values are "
                "[keep fudge])",
                "action_on_duplicate_timestamp",
            )
        formats = [fmt, *a.string_list("fallback_formats")]
        return TimestampStage(
            source,
            [compile_format(f, location) for f in formats],
            fudge=action == "fudge",
            fudge_duplicates=duplicates == "fudge",
        )

    def output(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        source = a.string("source")
        if not source:
            raise a.error(
                "output source value is required if output is specified", "source"
            )
        return OutputStage(source)

    def replace(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        compiled = _regex(a, "expression", a.string("expression", required=True))
        template = _template(a, "replace", "failed to compile template: ")
        source = a.string("source") or None
        return ReplaceStage(compiled, group_index(compiled), source, template)

    def template(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        source = a.string("source")
        if not source:
            raise a.error("template source value is required", "source")
        if not a.has("template"):
            raise a.error("'template' is required")
        # May be empty: the (empty) result deletes ``source``.
        return TemplateStage(source, _template(a, "template", ""))

    def pack(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        if not a.has("labels"):
            raise a.error("'labels' is required")
        return PackStage(a.string_list("labels"), a.boolean("ingest_timestamp"))

    def docker(self, name: str, raw: Mapping[str, Any]) -> Stage:
        StageArgs(name, raw, STAGE_ARGS[name])
        return DockerStage(compile_format("RFC3339Nano", None))

    def sampling(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        rate = a.number("rate", required=True)
        if not 0.0 <= rate <= 1.0:
            raise a.error(
                "sampling stage failed to parse rate,Sampling Rate must be between "
                f"0.0 and 1.0, received {rate:f}",
                "rate",
            )
        reason = a.string("drop_counter_reason", blank=True)
        dropped = _drop_counter(self._registry).labels(reason)
        return SamplingStage(rate, dropped, random.Random())

    def limit(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        rate = a.number("rate", required=True)
        burst = a.integer("burst")
        if rate <= 0 or burst <= 0:
            raise a.error("limit stage failed to parse rate or burst")
        by_label = a.string("by_label_name")
        drop = a.boolean("drop")
        if by_label and not drop:
            raise a.error("when ratelimiting by label, drop must be true", "drop")
        by_label_counter = None
        if by_label:
            by_label_counter = _counter(
                self._registry,
                "loki_process_dropped_lines_by_label_total",
                "A count of all log lines dropped as a result of a pipeline stage",
                ("label_name", "label_value"),
            )
        return LimitStage(
            rate,
            burst,
            by_label,
            # Alloy raises smaller values to this minimum.
            max(a.integer("max_distinct_labels"), 10_000),
            _drop_counter(self._registry).labels("ratelimit_drop_stage"),
            by_label_counter,
            drop=drop,
        )

    def metrics(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name], blocks=frozenset(METRIC_ARGS))
        collectors: list[SeriesCollector] = []
        for block_name in sorted(METRIC_ARGS):
            for index, args in enumerate(_blocks(a, raw, block_name)):
                kind = block_name.removeprefix("metric.")
                spec = self._metric_spec(name, kind, args, (block_name, index))
                try:
                    collectors.append(register_collector(self._registry, spec))
                except ValueError as exc:
                    raise a.error(
                        f"metric {spec.name}: {exc}", block_name, index, "name"
                    ) from None
        return MetricsStage(collectors)

    def _metric_spec(
        self,
        stage: str,
        kind: str,
        raw: Mapping[str, Any],
        where: tuple[str, int],
    ) -> MetricSpec:
        a = StageArgs(stage, raw, METRIC_ARGS[f"metric.{kind}"])

        def error(message: str, *path: str | int) -> StageError:
            return StageError(message, stage, (*where, *path))

        short = a.string("name", required=True)
        full = a.string("prefix", blank=True) + short
        if not is_valid_metric_name(full):
            raise error(f"invalid metric name {full!r}", "name")
        max_idle_ns = a.duration_ns("max_idle_duration")
        if max_idle_ns < _NS:
            raise error(
                "max_idle_duration must be greater or equal than 1s",
                "max_idle_duration",
            )
        action = a.string("action")
        match_all = a.boolean("match_all")
        value = a.string("value")
        count_bytes = a.boolean("count_entry_bytes")
        if kind == "counter":
            if action not in ("inc", "add"):
                raise error(
                    "the 'action' counter field must be either 'inc' or 'add'", "action"
                )
            if match_all and value:
                raise error(
                    "a 'counter' metric supports either 'match_all' or a 'value', "
                    "but not both"
                )
            if count_bytes and (not match_all or action != "add"):
                raise error(
                    "the 'count_entry_bytes' counter field must be specified along "
                    "with match_all set to true or action set to 'add'"
                )
        elif kind == "gauge" and action not in ("set", "inc", "dec", "add", "sub"):
            raise error(
                "the 'action' gauge field must be one of the following values: "
                "[set, inc, dec, add, sub]",
                "action",
            )
        buckets: tuple[float, ...] = ()
        if kind == "histogram":
            raw_buckets = raw.get("buckets")
            if not isinstance(raw_buckets, Sequence) or not all(
                isinstance(b, int | float) and not isinstance(b, bool)
                for b in raw_buckets
            ):
                raise error("buckets must be a list of numbers", "buckets")
            buckets = tuple(float(b) for b in raw_buckets) or _DEFAULT_BUCKETS
            if buckets[-1] == float("inf"):
                buckets = buckets[:-1]  # client_golang adds +Inf itself
            for i in range(len(buckets) - 1):
                if buckets[i] >= buckets[i + 1]:
                    # client_golang panics on the first update (Alloy crashes).
                    raise error(
                        "histogram buckets must be in increasing order: "
                        f"{buckets[i]} >= {buckets[i + 1]}",
                        "buckets",
                        i + 1,
                    )
        return MetricSpec(
            kind=kind,
            name=full,
            description=a.string("description") or full,
            source=a.string("source") or short,
            value=value,
            action=action,
            match_all=match_all,
            count_entry_bytes=count_bytes,
            buckets=buckets,
            max_idle_ns=max_idle_ns,
        )

    def decolorize(self, name: str, raw: Mapping[str, Any]) -> Stage:
        StageArgs(name, raw, STAGE_ARGS[name])
        return DecolorizeStage()

    def tenant(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        given = [k for k in ("label", "source", "value") if a.string(k)]
        if not given:
            raise a.error("label, source or value config are required")
        if len(given) > 1:
            raise a.error(
                "label, source and value are mutually exclusive: you should set "
                "source, value or label but not all"
            )
        if given[0] == "value":
            return StaticLabelsStage({TENANT_LABEL: a.string("value")})
        if given[0] == "label":
            return CopyLabelStage(TENANT_LABEL, a.string("label"))
        return LabelsStage({TENANT_LABEL: a.string("source")})

    def drop(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        source = a.string("source")
        expression = a.string("expression")
        value = a.string("value")
        older_than_ns = a.duration_ns("older_than")
        longer_than = a.byte_size("longer_than")
        if not (source or expression or older_than_ns or longer_than):
            raise a.error(
                "drop stage config must contain at least one of `source`, "
                "`expression`, `older_than` or `longer_than`"
            )
        if value and expression:
            raise a.error(
                "`value` and `expression` cannot both be defined at the same time"
            )
        if value and not source:
            raise a.error(
                "drop stage config must contain `source` if `value` is specified"
            )
        regex = _regex(a, "expression", expression) if expression else None
        return DropStage(
            sources=tuple(source.split(",")) if source else (),
            separator=a.string("separator", blank=True),
            regex=regex,
            value=value or None,
            older_than_ns=older_than_ns,
            longer_than=longer_than,
            counter=_drop_counter(self._registry),
            reason=a.string("drop_counter_reason", blank=True),
        )

    def match(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name], blocks=frozenset({"stages"}))
        selector_text = a.string("selector", required=True)
        action = a.string("action", blank=True)
        nested = raw.get("stages") or []
        if not isinstance(nested, Sequence) or isinstance(nested, str):
            raise a.error("'stages' must be a list of (name, arguments) pairs")
        if action == "keep":
            if not nested:
                raise a.error("match stage requires at least one additional stage")
        elif action == "drop":
            if nested:
                raise a.error(
                    "match stage configured to drop entries cannot contain stages"
                )
        else:
            raise a.error("match stage action should be 'keep' or 'drop'")
        try:
            selector = parse_selector(selector_text)
        except ValueError as exc:
            raise a.error(f"invalid selector syntax for match stage: {exc}") from None
        counter = None
        if action == "drop":
            reason = a.string("drop_counter_reason", blank=True)
            counter = _drop_counter(self._registry).labels(reason)
        return MatchStage(selector, self.stages(nested), counter)

    def multiline(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        firstline = _regex(a, "firstline", a.string("firstline", required=True))
        max_lines = a.integer("max_lines")
        if max_lines < 0:
            raise a.error("max_lines must not be negative", "max_lines")
        max_wait_ns = a.duration_ns("max_wait_time")
        if max_wait_ns <= 0:
            raise a.error("max_wait_time must be greater than 0", "max_wait_time")
        return MultilineStage(
            firstline, max_lines, max_wait_ns, a.boolean("trim_newlines")
        )

    def cri(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        max_partial_lines = a.integer("max_partial_lines")
        if max_partial_lines <= 0:
            raise a.error(
                "max_partial_lines must be greater than 0", "max_partial_lines"
            )
        max_size = a.integer("max_partial_line_size")
        if max_size < 0:
            raise a.error(
                "max_partial_line_size must not be negative", "max_partial_line_size"
            )
        return CriStage(
            compile_format("RFC3339Nano", None),
            max_partial_lines,
            max_size,
            a.boolean("max_partial_line_size_truncate"),
            _counter(
                self._registry,
                "loki_process_cri_partial_lines_flushed_total",
                "A count of partial lines that were flushed prematurely due to the "
                "max_partial_lines limit being exceeded",
                (),
            ),
            _counter(
                self._registry,
                "loki_process_cri_lines_truncated_total",
                "A count of lines that were truncated due to the "
                "max_partial_line_size limit",
                (),
            ),
        )

    def truncate(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name], blocks=frozenset({"rule"}))
        rules: list[TruncateRule] = []
        for index, args in enumerate(_blocks(a, raw, "rule")):
            rules.append(self._truncate_rule(name, args, index))
        if not rules:
            raise a.error('missing required block "rule"')
        counter = _counter(
            self._registry,
            "loki_process_truncated_fields_total",
            "A count of all log lines, labels, extracted values, or "
            "structured_metadata truncated as a result of a pipeline stage",
            ("field",),
        )
        return TruncateStage(rules, counter)

    def _truncate_rule(
        self, stage: str, raw: Mapping[str, Any], index: int
    ) -> TruncateRule:
        a = StageArgs(stage, raw, RULE_ARGS)

        def error(message: str, *path: str | int) -> StageError:
            return StageError(message, stage, ("rule", index, *path))

        if not a.has("limit"):
            raise error('missing required attribute "limit"')
        limit = a.byte_size("limit")
        if limit <= 0:
            raise error("limit must be greater than zero", "limit")
        source_type = a.string("source_type", blank=True)
        if source_type not in ("line", "label", "structured_metadata", "extracted"):
            raise error(f"unknown source_type: {source_type}", "source_type")
        sources = a.string_list("sources")
        if source_type == "line" and sources:
            raise error("sources cannot be set when source_type is 'line'", "sources")
        suffix = a.string("suffix")
        if suffix and limit <= len(suffix.encode()):
            raise error(
                "suffix length cannot be greater than or equal to limit", "suffix"
            )
        return TruncateRule(limit, suffix, tuple(sources), source_type)

    def luhn(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        source = _source_or_line(a)
        min_length = a.integer("min_length")
        return LuhnStage(
            a.string("replacement", blank=True),
            source,
            min_length if min_length >= 1 else 13,
            a.string("delimiters"),
        )


def _source_or_line(a: StageArgs) -> str | None:
    """``source`` where Alloy reads an unset one as the line and refuses ``""``."""
    if not a.has("source"):
        return None
    source = a.string("source")
    if not source:
        raise a.error("empty source", "source")
    return source


def _regex(a: StageArgs, key: str, pattern: str) -> re.Pattern[str]:
    try:
        return compile_regex(pattern, a.stage, key)
    except StageError as exc:
        raise a.error(exc.message, key) from None


def _template(a: StageArgs, key: str, prefix: str) -> GoTemplate:
    try:
        return compile_go_template(a.string(key))
    except ValueError as exc:
        raise a.error(f"{prefix}{exc}", key) from None


def _nonempty_list(a: StageArgs, message: str) -> list[str]:
    values = a.string_list("values")
    if not values:
        raise a.error(message, "values")
    return values


def _blocks(a: StageArgs, raw: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """The nested blocks called ``name`` (a list of argument maps)."""
    blocks = raw.get(name) or []
    if isinstance(blocks, Mapping):
        blocks = [blocks]
    if not isinstance(blocks, Sequence) or isinstance(blocks, str):
        raise a.error(f"{name!r} must be a list of blocks", name)
    for block in blocks:
        if not isinstance(block, Mapping):
            raise a.error(f"{name!r} must be a list of blocks", name)
    return list(blocks)


_BUILDERS: Final = {
    "stage.cri": _Builder.cri,
    "stage.decolorize": _Builder.decolorize,
    "stage.docker": _Builder.docker,
    "stage.drop": _Builder.drop,
    "stage.json": _Builder.json,
    "stage.label_drop": _Builder.label_drop,
    "stage.label_keep": _Builder.label_keep,
    "stage.labels": _Builder.labels,
    "stage.limit": _Builder.limit,
    "stage.logfmt": _Builder.logfmt,
    "stage.luhn": _Builder.luhn,
    "stage.match": _Builder.match,
    "stage.metrics": _Builder.metrics,
    "stage.multiline": _Builder.multiline,
    "stage.output": _Builder.output,
    "stage.pack": _Builder.pack,
    "stage.pattern": _Builder.pattern,
    "stage.regex": _Builder.regex,
    "stage.replace": _Builder.replace,
    "stage.sampling": _Builder.sampling,
    "stage.static_labels": _Builder.static_labels,
    "stage.structured_metadata": _Builder.structured_metadata,
    "stage.structured_metadata_drop": _Builder.structured_metadata_drop,
    "stage.template": _Builder.template,
    "stage.tenant": _Builder.tenant,
    "stage.timestamp": _Builder.timestamp,
    "stage.truncate": _Builder.truncate,
}

#: The ``stage.*`` blocks minilog implements.
STAGE_NAMES: Final[frozenset[str]] = frozenset(_BUILDERS)

assert set(STAGE_ARGS) == STAGE_NAMES, "every stage needs its arguments"
assert set(NESTED_ARGS) <= STAGE_NAMES
