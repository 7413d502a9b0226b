"""Every stage's arguments, written once: Alloy's names, types, defaults, and a reader.

``STAGE_ARGS`` (and ``METRIC_ARGS`` for ``stage.metrics``' blocks) is the one table of
stage arguments. ``process.schemas`` turns it into the config decoder's schemas, and
``build_pipeline`` reads a stage's arguments through ``StageArgs``, which takes an
absent argument's default from the same table, so a default cannot differ between a
configuration file and a ``build_pipeline`` call. Config-free: the stages work (and are
tested) without the config package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from minilog._go import parse_base2_bytes, parse_duration_ns
from minilog.errors import StageError
from minilog.process.core import go_string

__all__ = [
    "METRIC_ARGS",
    "NESTED_ARGS",
    "NO_DEFAULT",
    "OUT_OF_SCOPE",
    "RULE_ARGS",
    "STAGE_ARGS",
    "StageArg",
    "StageArgs",
]

_NS: Final = 1_000_000_000


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


#: An argument without a default: absent, it reads as its type's zero value.
NO_DEFAULT: Final = _NoDefault()


@dataclass(frozen=True, slots=True)
class StageArg:
    """One stage argument: its Alloy name and type, and its default (durations in
    seconds, as the config decoder gives them)."""

    name: str
    type: str
    default: Any = NO_DEFAULT
    required: bool = False


def _metric_args(kind: str) -> tuple[StageArg, ...]:
    args = [
        StageArg("name", "string", required=True),
        StageArg("description", "string", ""),
        StageArg("source", "string", ""),
        StageArg("prefix", "string", "loki_process_custom_"),
        StageArg("value", "string", ""),
        StageArg("max_idle_duration", "duration", 300.0),
    ]
    if kind != "histogram":
        args.append(StageArg("action", "string", required=True))
    if kind == "counter":
        args.append(StageArg("match_all", "bool", False))
        args.append(StageArg("count_entry_bytes", "bool", False))
    if kind == "histogram":
        args.append(StageArg("buckets", "list(number)", required=True))
    return tuple(args)


#: ``stage.metrics``' blocks (``metric.counter``...), with their arguments.
METRIC_ARGS: Final[Mapping[str, tuple[StageArg, ...]]] = {
    f"metric.{kind}": _metric_args(kind) for kind in ("counter", "gauge", "histogram")
}

#: ``stage.truncate``'s ``rule`` block.
RULE_ARGS: Final[tuple[StageArg, ...]] = (
    StageArg("limit", "bytes", required=True),
    StageArg("suffix", "string", ""),
    StageArg("sources", "list(string)", []),
    StageArg("source_type", "string", "line"),
)

#: The blocks nested in a stage (besides ``stage.match``'s stages): their names,
#: arguments, and whether one is required.
NESTED_ARGS: Final[Mapping[str, Mapping[str, tuple[tuple[StageArg, ...], bool]]]] = {
    "stage.metrics": {name: (args, False) for name, args in METRIC_ARGS.items()},
    "stage.truncate": {"rule": (RULE_ARGS, True)},
}

_VALUES_MAP: Final = StageArg("values", "map(string)", required=True)
_VALUES_LIST: Final = StageArg("values", "list(string)", required=True)
#: ``source`` where Alloy tells unset (the line) from ``""`` (refused): no default.
_SOURCE_OR_LINE: Final = StageArg("source", "string")

#: Each supported stage's arguments (``stage.match`` also nests stages,
#: ``stage.metrics`` and ``stage.truncate`` hold ``NESTED_ARGS`` blocks).
STAGE_ARGS: Final[Mapping[str, tuple[StageArg, ...]]] = {
    "stage.cri": (
        StageArg("max_partial_lines", "int", 100),
        StageArg("max_partial_line_size", "uint", 0),
        StageArg("max_partial_line_size_truncate", "bool", False),
    ),
    "stage.decolorize": (),
    "stage.docker": (),
    "stage.drop": (
        StageArg("source", "string", ""),
        StageArg("value", "string", ""),
        StageArg("separator", "string", ";"),
        StageArg("expression", "string", ""),
        StageArg("older_than", "duration"),
        StageArg("longer_than", "bytes"),
        StageArg("drop_counter_reason", "string", "drop_stage"),
    ),
    "stage.json": (
        StageArg("expressions", "map(string)", {}),
        StageArg("regex", "string", ""),
        _SOURCE_OR_LINE,
        StageArg("drop_malformed", "bool", False),
    ),
    "stage.label_drop": (_VALUES_LIST,),
    "stage.label_keep": (_VALUES_LIST,),
    "stage.labels": (
        _VALUES_MAP,
        StageArg("source_type", "string", "extracted"),
    ),
    "stage.limit": (
        StageArg("rate", "number", required=True),
        StageArg("burst", "int", required=True),
        StageArg("drop", "bool", False),
        StageArg("by_label_name", "string", ""),
        StageArg("max_distinct_labels", "int", 10_000),
    ),
    "stage.logfmt": (
        StageArg("mapping", "map(string)", {}),
        StageArg("source", "string", ""),
        StageArg("regex", "string", ""),
    ),
    "stage.luhn": (
        StageArg("replacement", "string", "**REDACTED**"),
        _SOURCE_OR_LINE,
        StageArg("min_length", "int", 13),
        StageArg("delimiters", "string", ""),
    ),
    "stage.match": (
        StageArg("selector", "string", required=True),
        StageArg("action", "string", "keep"),
        StageArg("pipeline_name", "string", ""),
        StageArg("drop_counter_reason", "string", "match_stage"),
    ),
    "stage.metrics": (),
    "stage.multiline": (
        StageArg("firstline", "string", required=True),
        StageArg("max_lines", "uint", 128),
        StageArg("max_wait_time", "duration", 3.0),
        StageArg("trim_newlines", "bool", True),
    ),
    "stage.output": (StageArg("source", "string", required=True),),
    "stage.pack": (
        StageArg("labels", "list(string)", required=True),
        StageArg("ingest_timestamp", "bool", True),
    ),
    "stage.pattern": (
        StageArg("pattern", "string", required=True),
        _SOURCE_OR_LINE,
        StageArg("labels_from_groups", "bool", False),
    ),
    "stage.regex": (
        StageArg("expression", "string", required=True),
        _SOURCE_OR_LINE,
        StageArg("labels_from_groups", "bool", False),
    ),
    "stage.replace": (
        StageArg("expression", "string", required=True),
        StageArg("source", "string", ""),
        StageArg("replace", "string", ""),
    ),
    "stage.sampling": (
        StageArg("rate", "number", required=True),
        StageArg("drop_counter_reason", "string", "sampling_stage"),
    ),
    "stage.static_labels": (_VALUES_MAP,),
    "stage.structured_metadata": (
        StageArg("values", "map(string)", {}),
        StageArg("regex", "string", ""),
    ),
    "stage.structured_metadata_drop": (_VALUES_LIST,),
    "stage.template": (
        StageArg("source", "string", required=True),
        StageArg("template", "string", required=True),
    ),
    "stage.tenant": (
        StageArg("label", "string", ""),
        StageArg("source", "string", ""),
        StageArg("value", "string", ""),
    ),
    "stage.timestamp": (
        StageArg("source", "string", required=True),
        StageArg("format", "string", required=True),
        StageArg("fallback_formats", "list(string)", []),
        StageArg("location", "string"),
        StageArg("action_on_failure", "string", "fudge"),
        StageArg("action_on_duplicate_timestamp", "string", "fudge"),
    ),
    "stage.truncate": (),
}

#: Alloy's stages minilog refuses, and why.
OUT_OF_SCOPE: Final[Mapping[str, str]] = {
    "stage.geoip": (
        "stage.geoip is not supported by minilog: it needs a MaxMind GeoIP database, "
        "which minilog does not ship or read"
    ),
    "stage.eventlogmessage": (
        "stage.eventlogmessage is not supported by minilog: it parses Windows Event "
        "Log messages, and minilog ships logs from Docker on Linux"
    ),
    "stage.windowsevent": (
        "stage.windowsevent is not supported by minilog: it parses Windows Event Log "
        "messages, and minilog ships logs from Docker on Linux"
    ),
}


class StageArgs:
    """One stage's arguments, read by type; refuses names the stage does not have.

    An absent (or ``null``) argument reads as its ``StageArg`` default, else as its
    type's zero value (``""``, ``0``, ``False``, ``[]``, ``{}``). With ``blank=True`` an
    empty string reads as the default too (Alloy treats ``""`` as unset there).
    """

    def __init__(
        self,
        stage: str,
        args: Mapping[str, Any],
        spec: Sequence[StageArg],
        *,
        blocks: frozenset[str] = frozenset(),
    ) -> None:
        self._spec = {arg.name: arg for arg in spec}
        unknown = sorted(set(args) - set(self._spec) - blocks)
        if unknown:
            raise StageError(f"unsupported argument(s): {', '.join(unknown)}", stage)
        self.stage = stage
        self._args = args

    def error(self, message: str, *path: str | int) -> StageError:
        """A ``StageError`` of this stage, located at ``path`` (argument, keys)."""
        return StageError(message, self.stage, tuple(path))

    def has(self, key: str) -> bool:
        return self._args.get(key) is not None

    def _default(self, key: str, zero: Any) -> Any:
        arg = self._spec.get(key)
        return zero if arg is None or arg.default is NO_DEFAULT else arg.default

    def string(self, key: str, *, required: bool = False, blank: bool = False) -> str:
        value = self._args.get(key)
        if value is None:
            if required:
                raise self.error(f"{key!r} is required", key)
            return str(self._default(key, ""))
        text = _as_string(value)
        if text is None:
            raise self.error(
                f"{key!r} must be a string, got {type(value).__name__}", key
            )
        if required and not text:
            raise self.error(f"{key!r} must not be empty", key)
        if blank and not text:
            return str(self._default(key, ""))
        return text

    def number(self, key: str, *, required: bool = False) -> float:
        value = self._args.get(key)
        if value is None:
            if required:
                raise self.error(f"{key!r} is required", key)
            return float(self._default(key, 0.0))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{key!r} must be a number", key)
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self._args.get(key)
        if value is None:
            return bool(self._default(key, False))
        if not isinstance(value, bool):
            raise self.error(f"{key!r} must be a bool", key)
        return value

    def integer(self, key: str) -> int:
        value = self._args.get(key)
        if value is None:
            return int(self._default(key, 0))
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise self.error(f"{key!r} must be a whole number", key)

    def string_map(self, key: str, *, required: bool = False) -> dict[str, str]:
        value = self._args.get(key)
        if value is None:
            if required:
                raise self.error(f"{key!r} is required", key)
            return dict(self._default(key, {}))
        if not isinstance(value, Mapping):
            raise self.error(f"{key!r} must be a map of strings", key)
        out: dict[str, str] = {}
        for k, v in value.items():
            text = "" if v is None else _as_string(v)
            if not isinstance(k, str) or text is None:
                raise self.error(f"{key!r} must be a map of strings", key)
            out[k] = text
        return out

    def string_list(self, key: str) -> list[str]:
        value = self._args.get(key)
        if value is None:
            return list(self._default(key, []))
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise self.error(f"{key!r} must be a list of strings", key)
        texts = [_as_string(v) for v in value]
        if any(t is None for t in texts):
            raise self.error(f"{key!r} must be a list of strings", key)
        return [t for t in texts if t is not None]

    def duration_ns(self, key: str) -> int:
        value = self._args.get(key)
        if value is None or value == "":
            return round(float(self._default(key, 0.0)) * _NS)
        if isinstance(value, bool):
            raise self.error(f"{key!r} must be a duration", key)
        if isinstance(value, int | float):
            return round(value * _NS)
        if isinstance(value, str):
            try:
                return parse_duration_ns(value.strip())
            except ValueError:
                raise self.error(f"{key!r}: invalid duration {value!r}", key) from None
        raise self.error(f"{key!r} must be a duration", key)

    def byte_size(self, key: str) -> int:
        value = self._args.get(key)
        if value is None or value == "":
            return int(self._default(key, 0))
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str):
            try:
                return parse_base2_bytes(value.strip())
            except ValueError:
                pass
        raise self.error(f'{key!r}: invalid size {value!r} (for example "8KB")', key)


def _as_string(value: Any) -> str | None:
    """A string argument; numbers convert as Alloy converts them, bools do not."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return go_string(value)
    return None
