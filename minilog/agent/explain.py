"""Why each target of a source is shipped or not: the explanation the UI, its JSON and
``minilog explain`` show (pure).

It follows the real data path of a target, with the engine's tracing mode
(``RelabelRules.trace``, the same compiled steps the pipeline runs):

    discovery (discovery.docker: one target per container network)
      -> each discovery.relabel between discovery and the source, rule by rule
      -> the source: its ``labels`` merged in, one target per container (Alloy's
         dedupe), then per stream (stdout, stderr) its own ``relabel_rules`` and the
         internal ``__`` labels dropped (``relabel.trace_stream``)

and adds what the source reports at run time (running, read and acknowledged
positions, lag, lines and bytes handed on per stream, the last error) where there is
a running agent. A source type plugs in with a :class:`SourceKind` in
``SOURCE_KINDS`` (what identifies and names a target, which discovery feeds it, its
streams); ``loki.source.docker`` is the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from minilog._go import go_quote
from minilog.docker.targets import dedupe_targets
from minilog.labels import (
    DOCKER_CONTAINER_ID,
    DOCKER_CONTAINER_NAME,
    DOCKER_LOG_STREAM,
    format_labels,
)
from minilog.relabel import (
    DEFAULT_REGEX,
    DEFAULT_REPLACEMENT,
    DEFAULT_SEPARATOR,
    RelabelRules,
    Rule,
    Trace,
    trace_stream,
)

__all__ = [
    "SOURCE_KINDS",
    "DiscoveredTarget",
    "Pipeline",
    "SourceKind",
    "TargetStatus",
    "explain_pipeline",
    "format_ns",
    "render_text",
    "rule_text",
    "source_paths",
]

#: What a target's explanation says when it reaches Loki.
SHIPPED: Final = "shipped"


@dataclass(frozen=True, slots=True)
class SourceKind:
    """How one source type's targets are identified, named and split into streams.

    Args:
        source: the source component's name (``loki.source.docker``).
        discovery: the discovery component names that produce its targets.
        target: what a target is called on the page (``container``).
        key_label: the label that identifies a target (the source tails each once).
        name_label: the label that names it for a reader.
        streams: ``(stream name, labels added for it)``; the source's rules run once
            per stream.
        dedupe: targets to ``{key: labels}`` as the source picks them, with its static
            ``labels`` merged in.
    """

    source: str
    discovery: tuple[str, ...]
    target: str
    key_label: str
    name_label: str
    streams: tuple[tuple[str, Mapping[str, str]], ...]
    dedupe: Callable[
        [Iterable[Mapping[str, str]], Mapping[str, str]], dict[str, dict[str, str]]
    ]

    def display_name(self, labels: Mapping[str, str]) -> str:
        return labels.get(self.name_label, "").lstrip("/") or labels.get(
            self.key_label, "?"
        )


#: Source types the explanation knows, by component name.
SOURCE_KINDS: dict[str, SourceKind] = {
    "loki.source.docker": SourceKind(
        source="loki.source.docker",
        discovery=("discovery.docker",),
        target="container",
        key_label=DOCKER_CONTAINER_ID,
        name_label=DOCKER_CONTAINER_NAME,
        streams=(
            ("stdout", {DOCKER_LOG_STREAM: "stdout"}),
            ("stderr", {DOCKER_LOG_STREAM: "stderr"}),
        ),
        dedupe=dedupe_targets,
    ),
}

#: Components that relabel targets between discovery and a source.
_RELABEL_STAGES: Final = frozenset({"discovery.relabel"})


@dataclass(frozen=True, slots=True)
class DiscoveredTarget:
    """A target as discovery produced it, or would (a stopped container that
    discovery does not list: ``listed`` False, ``state`` says why)."""

    labels: Mapping[str, str]
    state: str = ""
    listed: bool = True


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """What a running source reports about one target (a tailer)."""

    running: bool
    position_ns: int
    read_position_ns: int
    lag_s: float
    last_error: str
    #: Per stream: ``{"lines": int, "bytes": int, "last_ns": int}``.
    streams: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """One source and the path(s) of components that feed it targets.

    ``paths``: each a discovery component ID then the relabel components after it,
    in data order; ``rules`` the relabel rules of each relabel component;
    ``source_labels`` and ``source_rules`` the source's ``labels`` and
    ``relabel_rules`` (as its streams apply them).
    """

    source_id: str
    kind: SourceKind
    paths: tuple[tuple[str, ...], ...]
    rules: Mapping[str, RelabelRules]
    source_labels: Mapping[str, str]
    source_rules: RelabelRules | None


def source_paths(
    source_id: str, deps: Mapping[str, Iterable[str]], names: Mapping[str, str]
) -> tuple[tuple[str, ...], ...]:
    """The discovery paths into ``source_id``: follow references upstream through
    relabel components until a discovery component; each path in data order
    (``("discovery.docker.c", "discovery.relabel.logs")``)."""
    kind = SOURCE_KINDS[names[source_id]]
    out: list[tuple[str, ...]] = []

    def walk(node: str, tail: tuple[str, ...], seen: frozenset[str]) -> None:
        for dep in sorted(deps.get(node, ())):
            if dep in seen:
                continue
            name = names.get(dep, "")
            if name in kind.discovery:
                out.append((dep, *tail))
            elif name in _RELABEL_STAGES:
                walk(dep, (dep, *tail), seen | {dep})

    walk(source_id, (), frozenset({source_id}))
    return tuple(out)


def format_ns(ns: int) -> str:
    """Unix ns -> RFC 3339 with nanoseconds (``""`` for 0: nothing yet)."""
    if ns <= 0:
        return ""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:09d}Z"


def rule_text(rule: Rule) -> str:
    """A rule in Alloy's words, its non-default arguments only."""
    parts = [f"action={go_quote(str(rule.action))}"]
    if rule.source_labels:
        names = ", ".join(go_quote(n) for n in rule.source_labels)
        parts.append(f"source_labels=[{names}]")
    if rule.regex != DEFAULT_REGEX:
        parts.append(f"regex={go_quote(rule.regex)}")
    if rule.target_label:
        parts.append(f"target_label={go_quote(rule.target_label)}")
    if rule.replacement != DEFAULT_REPLACEMENT:
        parts.append(f"replacement={go_quote(rule.replacement)}")
    if rule.separator != DEFAULT_SEPARATOR:
        parts.append(f"separator={go_quote(rule.separator)}")
    if rule.modulus:
        parts.append(f"modulus={rule.modulus}")
    return " ".join(parts)


def _diff(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    return {
        "set": {k: v for k, v in after.items() if before.get(k) != v},
        "removed": sorted(k for k in before if k not in after),
    }


def _stage(component: str, trace: Trace) -> dict[str, Any]:
    steps = []
    before: Mapping[str, str] = trace.input
    for step in trace.steps:
        item: dict[str, Any] = {
            "rule": step.number,
            "action": str(step.rule.action),
            "text": rule_text(step.rule),
            "reads": list(step.rule.source_labels),
            "labels": step.labels,
        }
        if step.labels is not None:
            item["changes"] = _diff(before, step.labels)
            before = step.labels
        steps.append(item)
    dropped = trace.dropped_by
    return {
        "component": component,
        "input": trace.input,
        "steps": steps,
        "output": trace.output,
        "dropped_by": None if dropped is None else dropped.describe(),
    }


def _explain_path(
    pipeline: Pipeline, path: tuple[str, ...], target: Mapping[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str] | None, str]:
    """Trace one discovered target through the relabel components of ``path``."""
    stages = []
    labels: dict[str, str] | None = dict(target)
    for component in path[1:]:
        assert labels is not None
        trace = pipeline.rules[component].trace(labels)
        stages.append(_stage(component, trace))
        dropped = trace.dropped_by
        # discovery.relabel keeps a target only if some label is left.
        labels = trace.output or None
        if labels is None:
            why = (
                f"dropped by {dropped.describe()} of {component}"
                if dropped is not None
                else f"no label left after {component}"
            )
            return stages, None, why
    return stages, labels, ""


def _streams(
    pipeline: Pipeline, labels: Mapping[str, str], status: TargetStatus | None
) -> list[dict[str, Any]]:
    out = []
    for stream, extra in pipeline.kind.streams:
        trace, final = trace_stream({**labels, **extra}, pipeline.source_rules)
        item: dict[str, Any] = {
            "stream": stream,
            "relabel_rules": None
            if trace is None
            else _stage(f"{pipeline.source_id} relabel_rules", trace),
            "labels": final,
            "labels_text": "" if not final else format_labels(final),
            "shipped": bool(final),
        }
        if trace is not None and trace.dropped_by is not None:
            item["verdict"] = (
                f"dropped by {trace.dropped_by.describe()} of "
                f"{pipeline.source_id} relabel_rules"
            )
        elif not final:
            item["verdict"] = "no label left: Loki would refuse it"
        else:
            item["verdict"] = SHIPPED
        stats = None if status is None else status.streams.get(stream)
        if stats is not None:
            item["lines"] = stats.get("lines", 0)
            item["bytes"] = stats.get("bytes", 0)
            item["last_entry"] = format_ns(stats.get("last_ns", 0))
        out.append(item)
    return out


def _runtime(status: TargetStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {
        "running": status.running,
        "read_position": format_ns(status.read_position_ns),
        "acknowledged_position": format_ns(status.position_ns),
        "lag_seconds": round(status.lag_s, 3),
        "last_error": status.last_error,
    }


def explain_pipeline(
    pipeline: Pipeline,
    discovered: Mapping[str, Sequence[DiscoveredTarget]],
    status: Mapping[str, TargetStatus] | None = None,
) -> list[dict[str, Any]]:
    """One explanation per target of ``pipeline``'s source.

    Args:
        discovered: per discovery component ID, what it produced (plus, for the
            CLI and the UI, what it would produce for targets it does not list).
        status: per target key, what the running source reports (``None`` when
            nothing runs: ``minilog explain``).
    """
    kind = pipeline.kind
    status = status or {}
    # key -> [(path, target, stages, labels after the path, why dropped)]
    seen: dict[str, list[tuple[DiscoveredTarget, list[dict[str, Any]], str]]] = {}
    survivors: dict[str, list[dict[str, str]]] = {}
    order: list[str] = []
    for path in pipeline.paths:
        for target in discovered.get(path[0], ()):
            key = target.labels.get(kind.key_label, "")
            if not key:
                continue
            if key not in seen:
                seen[key] = []
                order.append(key)
            stages, out, why = _explain_path(pipeline, path, target.labels)
            seen[key].append((target, [_discovery(path[0], target), *stages], why))
            if out is not None and target.listed:
                survivors.setdefault(key, []).append(out)
    chosen = kind.dedupe(
        [t for group in survivors.values() for t in group], pipeline.source_labels
    )
    results = []
    for key in order:
        tries = seen[key]
        target = tries[0][0]
        item: dict[str, Any] = {
            "source": pipeline.source_id,
            "kind": kind.target,
            "id": key,
            "name": kind.display_name(target.labels),
            "state": target.state,
        }
        labels = chosen.get(key)
        if labels is None:
            # Explain the first way in: its stages say where it stopped.
            _, stages, why = next(((t, s, w) for t, s, w in tries if w), tries[0])
            if not target.listed:
                why = f"not discovered: {target.state or 'not listed by discovery'}"
            item.update(shipped=False, verdict=why, stages=stages, streams=[])
        else:
            _, stages, _ = next(((t, s, w) for t, s, w in tries if not w), tries[0])
            streams = _streams(pipeline, labels, status.get(key))
            shipped = any(s["shipped"] for s in streams)
            verdict = (
                SHIPPED
                if shipped
                else "; ".join(f"{s['stream']}: {s['verdict']}" for s in streams)
            )
            if pipeline.source_labels:
                stages.append(
                    {
                        "component": f"{pipeline.source_id} labels",
                        "input": dict(pipeline.source_labels),
                        "steps": [],
                        "output": labels,
                        "dropped_by": None,
                    }
                )
            item.update(
                shipped=shipped, verdict=verdict, stages=stages, streams=streams
            )
        item["tailer"] = _runtime(status.get(key))
        results.append(item)
    # Targets the source tails that discovery no longer lists (a stopped container
    # read one last time): shown, with what the source reports.
    for key, st in status.items():
        if key not in seen:
            results.append(
                {
                    "source": pipeline.source_id,
                    "kind": kind.target,
                    "id": key,
                    "name": key[:12],
                    "state": "no longer discovered",
                    "shipped": False,
                    "verdict": "no longer discovered: the source reads what is left",
                    "stages": [],
                    "streams": [],
                    "tailer": _runtime(st),
                }
            )
    return results


def _discovery(component: str, target: DiscoveredTarget) -> dict[str, Any]:
    return {
        "component": component,
        "input": None,
        "steps": [],
        "output": dict(target.labels),
        "dropped_by": None,
    }


def _fmt_labels(labels: Mapping[str, str] | None) -> str:
    return "(dropped)" if labels is None else format_labels(labels)


def render_text(explanations: Sequence[Mapping[str, Any]], *, verbose: bool) -> str:
    """The explanations as ``minilog explain`` prints them."""
    lines: list[str] = []
    source = None
    for ex in explanations:
        if ex["source"] != source:
            source = ex["source"]
            lines.append(f"{source}:")
        state = f" [{ex['state']}]" if ex.get("state") else ""
        mark = "SHIPPED" if ex["shipped"] else "NOT SHIPPED"
        lines.append(f"  {ex['kind']} {ex['name']} ({ex['id'][:12]}){state}: {mark}")
        if not ex["shipped"]:
            lines.append(f"    why: {ex['verdict']}")
        read = _labels_read(ex)
        for stage in ex["stages"]:
            if not stage["steps"]:
                labels = stage["output"]
                if labels is not None and not verbose:
                    shown = {k: v for k, v in labels.items() if k in read}
                    rest = len(labels) - len(shown)
                    text = format_labels(shown)
                    if rest:
                        text += f" and {rest} more (-v shows them)"
                else:
                    text = _fmt_labels(labels)
                lines.append(f"    {stage['component']}: {text}")
                continue
            lines.append(f"    {stage['component']}:")
            lines.extend(_render_steps(stage))
        for st in ex["streams"]:
            rules = st["relabel_rules"]
            if rules is not None and (verbose or not st["shipped"]):
                lines.append(f"    {rules['component']} ({st['stream']}):")
                lines.extend(_render_steps(rules))
            figures = ""
            if "lines" in st:
                figures = f"  lines={st['lines']} bytes={st['bytes']}"
                if st.get("last_entry"):
                    figures += f" last={st['last_entry']}"
            where = st["labels_text"] if st["shipped"] else st["verdict"]
            lines.append(f"    {st['stream']} -> {where}{figures}")
        tailer = ex.get("tailer")
        if tailer:
            lines.append(
                "    tailer: "
                + ("running" if tailer["running"] else "not following")
                + f", read {tailer['read_position'] or '-'}"
                + f", acknowledged {tailer['acknowledged_position'] or '-'}"
                + f", lag {tailer['lag_seconds']}s"
                + (
                    f", last error: {tailer['last_error']}"
                    if tailer["last_error"]
                    else ""
                )
            )
    return "\n".join(lines) + ("\n" if lines else "")


def _labels_read(ex: Mapping[str, Any]) -> set[str]:
    """The labels an explanation's rules read, and the target's name."""
    names = {"__meta_docker_container_name"}
    stages = [*ex["stages"], *(s["relabel_rules"] or {} for s in ex["streams"])]
    for stage in stages:
        for step in stage.get("steps", ()):
            names.update(step.get("reads", ()))
    return names


def _render_steps(stage: Mapping[str, Any]) -> list[str]:
    out = []
    for step in stage["steps"]:
        head = f"      rule {step['rule']}: {step['text']}"
        if step["labels"] is None:
            out.append(f"{head}\n        => DROPPED")
            continue
        changes = step.get("changes") or {}
        parts = [f'+{k}="{v}"' for k, v in (changes.get("set") or {}).items()]
        parts += [f"-{k}" for k in changes.get("removed") or []]
        out.append(f"{head}\n        => {' '.join(parts) or 'no change'}")
    return out
