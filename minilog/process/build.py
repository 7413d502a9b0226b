"""``Pipeline`` and ``build_pipeline``: Alloy stage arguments and defaults to stages.

Owns argument decoding and validation for every supported stage, raising ``StageError``
with Alloy's reasons, and the ``Pipeline`` facade that turns a ``StreamBatch`` into
segments, runs the stages and regroups the result. Pure; the caller passes the time.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client import CollectorRegistry, Counter

from minilog._re2 import group_index
from minilog.errors import StageError
from minilog.labels import TENANT_LABEL, is_valid_label_name
from minilog.model import StreamBatch
from minilog.process.arguments import METRIC_ARGS, STAGE_ARGS, StageArgs
from minilog.process.core import Segment, compile_regex, finish
from minilog.process.extract import JsonStage, LogfmtStage, RegexStage
from minilog.process.filter import DropStage, LimitStage, MatchStage, SamplingStage
from minilog.process.gotime import compile_format
from minilog.process.labels import (
    CopyLabelStage,
    LabelDropStage,
    LabelKeepStage,
    LabelsStage,
    StaticLabelsStage,
    StructuredMetadataStage,
)
from minilog.process.lines import (
    DecolorizeStage,
    DockerStage,
    OutputStage,
    PackStage,
    ReplaceStage,
    TemplateStage,
    TimestampStage,
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
    compile_template,
    parse_selector,
    template_fields,
)
from minilog.process.stage import Stage, earliest_deadline, flush_chain, run_chain

__all__ = ["STAGE_NAMES", "Pipeline", "StageSpec", "build_pipeline"]

#: One stage block: its name (``stage.json``) and its decoded arguments by Alloy name.
StageSpec = tuple[str, Mapping[str, Any]]

#: The actions each ``stage.metrics`` block allows.
_METRIC_ACTIONS: Final = {
    "metric.counter": ("inc", "add"),
    "metric.gauge": ("set", "inc", "dec", "add", "sub"),
    "metric.histogram": (),
}
_NS: Final = 1_000_000_000


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
        """Whether entries can be held back (a ``stage.multiline`` somewhere)."""
        return _has_multiline(self._stages)

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


def _has_multiline(stages: Sequence[Stage]) -> bool:
    for stage in stages:
        if isinstance(stage, MultilineStage):
            return True
        if isinstance(stage, MatchStage) and _has_multiline(stage.stages):
            return True
    return False


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
        expressions = a.string_map("expressions", required=True)
        if not expressions:
            raise a.error("JMES expression is required")
        compiled = {}
        for key, expr in expressions.items():
            try:
                compiled[key] = compile_jmespath(expr or key)
            except ValueError as exc:
                raise a.error(
                    f"could not compile JMES expression for {key!r}: {exc}"
                ) from None
        return JsonStage(
            compiled, a.string("source") or None, a.boolean("drop_malformed")
        )

    def logfmt(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        mapping = a.string_map("mapping")
        pattern = a.string("regex")
        if not mapping and not pattern:
            raise a.error("logfmt mapping or regex is required")
        regex = compile_regex(pattern, name, "regex") if pattern else None
        return LogfmtStage(mapping, a.string("source") or None, regex)

    def regex(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        pattern = a.string("expression", required=True)
        compiled = compile_regex(pattern, name)
        groups = group_index(compiled)
        label_groups = None
        if a.boolean("labels_from_groups"):
            label_groups = {k: v for k, v in groups.items() if is_valid_label_name(k)}
        source = a.string("source") or None
        return RegexStage(compiled, groups, source, label_groups)

    def _label_values(self, a: StageArgs, key: str = "values") -> dict[str, str]:
        values = a.string_map(key)
        for label in values:
            if not is_valid_label_name(label):
                raise a.error(f"invalid label name: {label}")
        return values

    def labels(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        values = {k: v or k for k, v in self._label_values(a).items()}
        source_type = a.string("source_type")
        if source_type not in ("extracted", "structured_metadata"):
            raise a.error(
                f"invalid labels source_type: {source_type}. "
                "Can only be 'extracted' or 'structured_metadata'"
            )
        return LabelsStage(values, from_metadata=source_type == "structured_metadata")

    def static_labels(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        return StaticLabelsStage(self._label_values(a))

    def label_drop(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        return LabelDropStage(a.string_list("values"))

    def label_keep(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        return LabelKeepStage(a.string_list("values"))

    def structured_metadata(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        values = {k: v or k for k, v in self._label_values(a).items()}
        pattern = a.string("regex")
        regex = compile_regex(pattern, name, "regex") if pattern else None
        return StructuredMetadataStage(values, regex)

    def timestamp(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        source = a.string("source", required=True)
        fmt = a.string("format", required=True)
        location: ZoneInfo | None = None
        loc_name = a.string("location")
        if loc_name:
            try:
                location = ZoneInfo(loc_name)
            except (ZoneInfoNotFoundError, ValueError):
                raise a.error(f"invalid location specified: {loc_name}") from None
        action = a.string("action_on_failure", blank=True)
        if action not in ("fudge", "skip"):
            raise a.error(
                "invalid action on failure (supported values are [skip fudge])"
            )
        formats = [fmt, *a.string_list("fallback_formats")]
        return TimestampStage(
            source,
            [compile_format(f, location) for f in formats],
            fudge=action == "fudge",
        )

    def output(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        return OutputStage(a.string("source", required=True))

    def replace(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        compiled = compile_regex(a.string("expression", required=True), name)
        text = a.string("replace")
        try:
            template = compile_template(text)
            fields = template_fields(text)
        except ValueError as exc:
            raise a.error(f"replace: {exc}") from None
        source = a.string("source") or None
        return ReplaceStage(compiled, group_index(compiled), source, template, fields)

    def template(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name])
        source = a.string("source", required=True)
        if not a.has("template"):
            raise a.error("'template' is required")
        text = a.string("template")  # may be empty: the result deletes ``source``
        try:
            template = compile_template(text)
            fields = template_fields(text)
        except ValueError as exc:
            raise a.error(f"template: {exc}") from None
        return TemplateStage(source, template, fields)

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
            raise a.error(f"rate must be between 0.0 and 1.0, got {rate}")
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
        if not a.boolean("drop"):
            raise a.error(
                "drop = false (wait for tokens, slowing the pipeline) is not supported "
                "by minilog; set drop = true"
            )
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
        )

    def metrics(self, name: str, raw: Mapping[str, Any]) -> Stage:
        a = StageArgs(name, raw, STAGE_ARGS[name], blocks=frozenset(METRIC_ARGS))
        collectors: list[SeriesCollector] = []
        for block_name in sorted(METRIC_ARGS):
            blocks = raw.get(block_name) or []
            if isinstance(blocks, Mapping):
                blocks = [blocks]
            if not isinstance(blocks, Sequence) or isinstance(blocks, str):
                raise a.error(f"{block_name!r} must be a list of blocks")
            for args in blocks:
                if not isinstance(args, Mapping):
                    raise a.error(f"{block_name!r} must be a list of blocks")
                kind = block_name.removeprefix("metric.")
                spec = self._metric_spec(name, kind, args)
                try:
                    collectors.append(register_collector(self._registry, spec))
                except ValueError as exc:
                    raise a.error(f"metric {spec.name}: {exc}") from None
        return MetricsStage(collectors)

    def _metric_spec(self, stage: str, kind: str, raw: Mapping[str, Any]) -> MetricSpec:
        a = StageArgs(f"{stage} metric.{kind}", raw, METRIC_ARGS[f"metric.{kind}"])
        short = a.string("name", required=True)
        full = a.string("prefix", blank=True) + short
        if not is_valid_metric_name(full):
            raise a.error(f"invalid metric name {full!r}")
        action = a.string("action")
        actions = _METRIC_ACTIONS[f"metric.{kind}"]
        if kind != "histogram" and action not in actions:
            raise a.error(f"action must be one of {', '.join(actions)}")
        match_all = a.boolean("match_all")
        value = a.string("value")
        count_bytes = a.boolean("count_entry_bytes")
        if match_all and value:
            raise a.error("match_all and value cannot both be set")
        if count_bytes and not (match_all or action == "add"):
            raise a.error("count_entry_bytes needs match_all = true or action = add")
        buckets: tuple[float, ...] = ()
        if kind == "histogram":
            raw_buckets = raw.get("buckets")
            if not isinstance(raw_buckets, Sequence) or not raw_buckets:
                raise a.error("buckets must be a non-empty list of numbers")
            if not all(
                isinstance(b, int | float) and not isinstance(b, bool)
                for b in raw_buckets
            ):
                raise a.error("buckets must be a non-empty list of numbers")
            buckets = tuple(sorted(float(b) for b in raw_buckets))
        max_idle_ns = a.duration_ns("max_idle_duration")
        if max_idle_ns < _NS:
            raise a.error("max_idle_duration less than 1s not allowed")
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
        if len(given) != 1:
            raise a.error("exactly one of 'label', 'source' or 'value' must be set")
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
        regex = compile_regex(expression, name) if expression else None
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
        firstline = compile_regex(
            a.string("firstline", required=True), name, "firstline"
        )
        max_lines = a.integer("max_lines")
        if max_lines < 1:
            raise a.error("max_lines must be at least 1")
        max_wait_ns = a.duration_ns("max_wait_time")
        if max_wait_ns <= 0:
            raise a.error("max_wait_time must be greater than 0")
        return MultilineStage(firstline, max_lines, max_wait_ns)


_BUILDERS: Final = {
    "stage.decolorize": _Builder.decolorize,
    "stage.docker": _Builder.docker,
    "stage.drop": _Builder.drop,
    "stage.json": _Builder.json,
    "stage.label_drop": _Builder.label_drop,
    "stage.label_keep": _Builder.label_keep,
    "stage.labels": _Builder.labels,
    "stage.limit": _Builder.limit,
    "stage.logfmt": _Builder.logfmt,
    "stage.match": _Builder.match,
    "stage.metrics": _Builder.metrics,
    "stage.multiline": _Builder.multiline,
    "stage.output": _Builder.output,
    "stage.pack": _Builder.pack,
    "stage.regex": _Builder.regex,
    "stage.replace": _Builder.replace,
    "stage.sampling": _Builder.sampling,
    "stage.static_labels": _Builder.static_labels,
    "stage.structured_metadata": _Builder.structured_metadata,
    "stage.template": _Builder.template,
    "stage.tenant": _Builder.tenant,
    "stage.timestamp": _Builder.timestamp,
}

#: The ``stage.*`` blocks minilog implements.
STAGE_NAMES: Final[frozenset[str]] = frozenset(_BUILDERS)

assert set(STAGE_ARGS) == STAGE_NAMES, "every stage needs its arguments"
