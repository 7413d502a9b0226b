"""The relabel engine: Alloy's ``rule`` block, its validation, the 11 actions, and
the per-stream label step of the Loki sources.

Pure logic shared by ``discovery.relabel`` (targets), ``loki.relabel`` (batches) and
the ``relabel_rules`` of ``loki.source.docker`` and ``loki.source.api`` (streams, in
:func:`relabel_stream`). Semantics follow Prometheus ``model/relabel`` as Alloy copies
it (``internal/component/common/relabel``); ``$`` templates follow Go
``Regexp.Expand``. The RE2 dialect translation lives in ``_re2.py``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

from minilog._go import go_quote
from minilog._re2 import compile_re2, group_index
from minilog.errors import Re2Error, RuleError
from minilog.labels import DOCKER_LOG_STREAM, is_internal

__all__ = [
    "DEFAULT_REGEX",
    "DEFAULT_REPLACEMENT",
    "DEFAULT_SEPARATOR",
    "Action",
    "RelabelRules",
    "RelabelRulesLike",
    "Rule",
    "RuleStep",
    "Trace",
    "compile_rules",
    "docker_stream_labels",
    "expand",
    "go_lower",
    "go_upper",
    "is_legacy_label_name",
    "is_template_name",
    "is_utf8_label_name",
    "parse_action",
    "process",
    "relabel_stream",
    "trace_stream",
]

DEFAULT_SEPARATOR: Final = ";"
DEFAULT_REGEX: Final = "(.*)"
DEFAULT_REPLACEMENT: Final = "$1"


class Action(StrEnum):
    """The relabel actions, spelled as in Alloy's ``action`` attribute."""

    REPLACE = "replace"
    KEEP = "keep"
    DROP = "drop"
    KEEPEQUAL = "keepequal"
    DROPEQUAL = "dropequal"
    HASHMOD = "hashmod"
    LABELMAP = "labelmap"
    LABELDROP = "labeldrop"
    LABELKEEP = "labelkeep"
    LOWERCASE = "lowercase"
    UPPERCASE = "uppercase"


_ACTION_VALUES: Final = frozenset(a.value for a in Action)


def parse_action(text: str) -> Action:
    """Decode an ``action`` attribute as Alloy does (``""`` is unrecognized too)."""
    try:
        return Action(text)
    except ValueError:
        raise RuleError(
            f"unrecognized action type {go_quote(text)}", "action"
        ) from None


_LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Accepts what Prometheus' relabelTarget `^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$`
# accepts, rewritten without nested quantifiers so Python's backtracking stays linear.
_TEMPLATE_NAME = re.compile(
    r"(?:[a-zA-Z_]|\$(?:\{\w+\}|\w))(?:\w|\$(?:\{\w+\}|\w))*", re.ASCII
)


def is_template_name(text: str) -> bool:
    """Whether ``text`` is a valid ``target_label`` template for ``replace`` (a name,
    possibly with ``$1`` / ``${name}`` references), as Prometheus' ``relabelTarget``."""
    return _TEMPLATE_NAME.fullmatch(text) is not None


def is_legacy_label_name(name: str) -> bool:
    """``[a-zA-Z_][a-zA-Z0-9_]*``: the legacy scheme (relabel_rules of Loki sources)."""
    return _LEGACY_NAME.fullmatch(name) is not None


def is_utf8_label_name(name: str) -> bool:
    """Any non-empty valid UTF-8 string: prometheus/common's default (UTF-8) scheme."""
    if not name:
        return False
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
        return False
    return True


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``rule`` block, with Alloy's defaults; the regex is compiled on construction.

    ``regex`` is the user's RE2 pattern, matched as ``^(?s:regex)$``. ``action`` may be
    given as a string; a valid one is normalised to ``Action``, any other is reported
    by ``validate()``. An empty ``source_labels`` counts as unset (Alloy, unlike us,
    tells an explicit ``[]`` apart in the ``labeldrop``/``labelkeep`` check).

    Raises:
        RuleError: ``regex`` is not valid RE2 (``field="regex"``, ``offset`` set).
    """

    source_labels: tuple[str, ...] = ()
    separator: str = DEFAULT_SEPARATOR
    regex: str = DEFAULT_REGEX
    modulus: int = 0
    target_label: str = ""
    replacement: str = DEFAULT_REPLACEMENT
    action: Action | str = Action.REPLACE
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given: object = self.source_labels
        if not isinstance(given, tuple):
            # Accept any sequence (a list from the config decoder); store it hashable.
            object.__setattr__(self, "source_labels", tuple(self.source_labels))
        if not isinstance(self.action, Action) and self.action in _ACTION_VALUES:
            object.__setattr__(self, "action", Action(self.action))
        try:
            pattern = compile_re2(self.regex)
        except Re2Error as exc:
            raise RuleError(
                f"error parsing regexp: {exc.message}", "regex", offset=exc.offset
            ) from None
        object.__setattr__(self, "pattern", pattern)

    def validate(self) -> None:
        """Check the rule as Alloy's ``Config.Validate`` does, in the same order.

        Raises:
            RuleError: with Alloy's message and the offending ``field``.
        """
        action = self.action
        if action == "":
            raise RuleError("relabel action cannot be empty", "action")
        if not isinstance(action, Action):
            raise RuleError(f"unrecognized action type {go_quote(action)}", "action")
        target = self.target_label
        if action is Action.HASHMOD and self.modulus == 0:
            raise RuleError(
                "relabel configuration for hashmod requires non-zero modulus", "modulus"
            )
        if not 0 <= self.modulus < 2**64:
            # Alloy decodes modulus into a uint64; anything else fails decoding.
            raise RuleError(
                f"modulus must be an unsigned 64-bit integer, got {self.modulus}",
                "modulus",
            )
        if action in _NEEDS_TARGET and target == "":
            raise RuleError(
                f"relabel configuration for {action} action requires "
                "'target_label' value",
                "target_label",
            )
        if action is Action.REPLACE:
            valid = (
                _TEMPLATE_NAME.fullmatch(target) is not None
                if "$" in target
                else is_utf8_label_name(target)
            )
            if not valid:
                raise _invalid_target(target, action)
        if action in _NO_REPLACEMENT:
            if not is_utf8_label_name(target):
                raise _invalid_target(target, action)
            if self.replacement != DEFAULT_REPLACEMENT:
                raise RuleError(
                    f"'replacement' can not be set for {action} action", "replacement"
                )
        if (
            action is Action.LABELMAP
            and _TEMPLATE_NAME.fullmatch(self.replacement) is None
        ):
            raise RuleError(
                f"{go_quote(self.replacement)} is invalid 'replacement' "
                f"for {action} action",
                "replacement",
            )
        if action is Action.HASHMOD and not is_utf8_label_name(target):
            raise _invalid_target(target, action)
        if action in (Action.LABELDROP, Action.LABELKEEP):
            extra = self._first_non_default(
                ("source_labels", "target_label", "modulus", "separator", "replacement")
            )
            if extra:
                raise RuleError(
                    f"{action} action requires only 'regex', and no other fields", extra
                )
        if action in (Action.KEEPEQUAL, Action.DROPEQUAL):
            extra = self._first_non_default(
                ("regex", "modulus", "separator", "replacement")
            )
            if extra:
                raise RuleError(
                    f"{action} action requires only 'source_labels' and "
                    "'target_label', and no other fields",
                    extra,
                )

    def _first_non_default(self, names: Iterable[str]) -> str:
        for name in names:
            if getattr(self, name) != _DEFAULTS[name]:
                return name
        return ""


def _invalid_target(target: str, action: Action) -> RuleError:
    return RuleError(
        f"{go_quote(target)} is invalid 'target_label' for {action} action",
        "target_label",
    )


_DEFAULTS: Final[dict[str, object]] = {
    "source_labels": (),
    "separator": DEFAULT_SEPARATOR,
    "regex": DEFAULT_REGEX,
    "modulus": 0,
    "target_label": "",
    "replacement": DEFAULT_REPLACEMENT,
}
_NEEDS_TARGET: Final = frozenset(
    {
        Action.REPLACE,
        Action.HASHMOD,
        Action.LOWERCASE,
        Action.UPPERCASE,
        Action.KEEPEQUAL,
        Action.DROPEQUAL,
    }
)
_NO_REPLACEMENT: Final = frozenset(
    {Action.LOWERCASE, Action.UPPERCASE, Action.KEEPEQUAL, Action.DROPEQUAL}
)


# -- Go Regexp.Expand

#: A parsed template: literal text, a group number, or a group name (a 1-tuple).
_Piece = str | int | tuple[str]
#: A template bound to one pattern: literal text or a group number.
_Bound = tuple[str | int, ...]


def _is_name_char(ch: str) -> bool:
    # Go's extract(): unicode.IsLetter (L*), unicode.IsDigit (Nd) or '_'.
    return ch == "_" or ch.isalpha() or ch.isdecimal()


def _parse_template(template: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    n = len(template)
    i = 0
    literal_start = 0
    while True:
        dollar = template.find("$", i)
        if dollar < 0:
            break
        j = dollar + 1
        if j < n and template[j] == "$":
            # "$$" is a literal "$".
            pieces.append(template[literal_start:j])
            i = literal_start = j + 1
            continue
        brace = j < n and template[j] == "{"
        k = j + 1 if brace else j
        name_start = k
        while k < n and _is_name_char(template[k]):
            k += 1
        name = template[name_start:k]
        if not name or (brace and (k >= n or template[k] != "}")):
            # Malformed reference: the "$" stays literal and scanning resumes after it.
            i = j
            continue
        end = k + 1 if brace else k
        if dollar > literal_start:
            pieces.append(template[literal_start:dollar])
        num = _group_number(name)
        pieces.append(num if num >= 0 else (name,))
        i = literal_start = end
    if literal_start < n:
        pieces.append(template[literal_start:])
    return pieces


def _group_number(name: str) -> int:
    """Go's rule: ASCII digits, no leading zero (bar ``0``), below 1e9; else -1."""
    num = 0
    for ch in name:
        if not "0" <= ch <= "9" or num >= 100_000_000:
            return -1
        num = num * 10 + ord(ch) - 48
    if name[0] == "0" and len(name) > 1:
        return -1
    return num


def _bind(pieces: Sequence[_Piece], pattern: re.Pattern[str]) -> _Bound:
    """Resolve names; drop references to groups that cannot exist."""
    names = group_index(pattern)
    bound: list[str | int] = []
    for piece in pieces:
        if isinstance(piece, tuple):
            index = names.get(piece[0])
            if index is not None:
                bound.append(index)
        elif isinstance(piece, int):
            if piece <= pattern.groups:
                bound.append(piece)
        elif bound and isinstance(bound[-1], str):
            bound[-1] += piece
        else:
            bound.append(piece)
    return tuple(bound)


def _expand_bound(bound: _Bound, match: re.Match[str]) -> str:
    if len(bound) == 1:
        only = bound[0]
        return only if isinstance(only, str) else (match.group(only) or "")
    return "".join([p if isinstance(p, str) else (match.group(p) or "") for p in bound])


def expand(template: str, match: re.Match[str]) -> str:
    """Expand ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$`` as Go ``Regexp.Expand``.

    A name is the longest run of Unicode letters, digits and ``_``; all-digit names
    without a leading zero are group numbers. Missing or non-participating groups expand
    to ``""``; a ``$`` not followed by a valid reference is kept literally.
    """
    return _expand_bound(_bind(_parse_template(template), match.re), match)


# -- Go strings.ToLower / ToUpper


def _simple_lower(ch: str) -> str:
    low = ch.lower()
    if len(low) == 1:
        return low
    # Only U+0130 has a multi-character full lowercase; its simple mapping is "i".
    return "i" if ch == "\u0130" else ch


def _simple_upper(ch: str) -> str:
    up = ch.upper()
    if len(up) == 1:
        return up
    # Go maps rune by rune (UnicodeData simple mapping): no "ß" -> "SS". Where a simple
    # mapping exists for such characters it is the titlecase form (U+1FB3 -> U+1FBC).
    title = ch.title()
    return title if len(title) == 1 else ch


def go_lower(text: str) -> str:
    """``strings.ToLower``: per-code-point simple mapping, no final-sigma context."""
    if text.isascii():
        return text.lower()
    return "".join([_simple_lower(ch) for ch in text])


def go_upper(text: str) -> str:
    """``strings.ToUpper``: per-code-point simple mapping (``ß`` stays ``ß``)."""
    if text.isascii():
        return text.upper()
    return "".join([_simple_upper(ch) for ch in text])


# -- compiled rules

_Labels = dict[str, str]
#: One compiled rule: mutates the working label dict, returns False to drop the target.
_Step = Callable[[_Labels], bool]


def _value_getter(rule: Rule) -> Callable[[_Labels], str]:
    names = rule.source_labels
    if not names:
        return lambda labels: ""
    if len(names) == 1:
        (name,) = names
        return lambda labels: labels.get(name, "")
    sep = rule.separator
    return lambda labels: sep.join([labels.get(n, "") for n in names])


def _compile_step(rule: Rule, legacy_names: bool) -> _Step:
    action = rule.action
    fullmatch = rule.pattern.fullmatch
    value = _value_getter(rule)
    target = rule.target_label

    if action is Action.KEEP:
        return lambda labels: fullmatch(value(labels)) is not None
    if action is Action.DROP:
        return lambda labels: fullmatch(value(labels)) is None
    if action is Action.KEEPEQUAL:
        return lambda labels: labels.get(target, "") == value(labels)
    if action is Action.DROPEQUAL:
        return lambda labels: labels.get(target, "") != value(labels)
    if action is Action.REPLACE:
        return _replace_step(rule, value, legacy_names)
    if action is Action.HASHMOD:
        modulus = rule.modulus

        def hashmod(labels: _Labels) -> bool:
            data = value(labels).encode("utf-8", "surrogatepass")
            digest = hashlib.md5(data, usedforsecurity=False).digest()
            # Prometheus uses only the last 8 bytes, big-endian, for compatibility.
            labels[target] = str(int.from_bytes(digest[8:], "big") % modulus)
            return True

        return hashmod
    if action in (Action.LOWERCASE, Action.UPPERCASE):
        convert = go_lower if action is Action.LOWERCASE else go_upper

        def set_case(labels: _Labels) -> bool:
            result = convert(value(labels))
            if result:
                labels[target] = result
            else:
                labels.pop(target, None)
            return True

        return set_case
    if action is Action.LABELMAP:
        bound = _bind(_parse_template(rule.replacement), rule.pattern)

        def labelmap(labels: _Labels) -> bool:
            # Iterate a snapshot, as Prometheus does: added names are not revisited.
            for name, val in list(labels.items()):
                m = fullmatch(name)
                if m is not None:
                    labels[_expand_bound(bound, m)] = val
            return True

        return labelmap
    if action in (Action.LABELDROP, Action.LABELKEEP):
        drop_matching = action is Action.LABELDROP

        def label_filter(labels: _Labels) -> bool:
            for name in [
                n for n in labels if (fullmatch(n) is not None) is drop_matching
            ]:
                del labels[name]
            return True

        return label_filter
    raise RuleError(f"unrecognized action type {go_quote(str(action))}", "action")


def _replace_step(
    rule: Rule, value: Callable[[_Labels], str], legacy_names: bool
) -> _Step:
    fullmatch = rule.pattern.fullmatch
    is_valid = is_legacy_label_name if legacy_names else is_utf8_label_name
    replacement = _bind(_parse_template(rule.replacement), rule.pattern)
    if "$" not in rule.target_label:
        static_target = rule.target_label
        if not is_valid(static_target):
            # The expanded name can never be valid: the rule is a no-op.
            return lambda labels: True

        def replace_static(labels: _Labels) -> bool:
            m = fullmatch(value(labels))
            if m is not None:
                result = _expand_bound(replacement, m)
                if result:
                    labels[static_target] = result
                else:
                    labels.pop(static_target, None)
            return True

        return replace_static

    target = _bind(_parse_template(rule.target_label), rule.pattern)

    def replace(labels: _Labels) -> bool:
        m = fullmatch(value(labels))
        if m is None:
            return True
        name = _expand_bound(target, m)
        if not is_valid(name):
            return True
        result = _expand_bound(replacement, m)
        if result:
            labels[name] = result
        else:
            labels.pop(name, None)
        return True

    return replace


@dataclass(frozen=True, slots=True)
class RuleStep:
    """One rule of a :class:`Trace`: its 1-based number (as a reader counts the
    ``rule`` blocks), the rule, and the labels after it (``None``: it dropped them)."""

    number: int
    rule: Rule
    labels: dict[str, str] | None

    @property
    def dropped(self) -> bool:
        return self.labels is None

    def describe(self) -> str:
        """``rule 2 (keep)``: how the UI and the CLI name the rule."""
        return f"rule {self.number} ({self.rule.action})"


@dataclass(frozen=True, slots=True)
class Trace:
    """Rule-by-rule result of :meth:`RelabelRules.trace`.

    ``input`` is the label set the rules saw (empty values removed), ``output`` the
    result (``None`` when a rule dropped it: the last step, then).
    """

    input: dict[str, str]
    steps: tuple[RuleStep, ...]
    output: dict[str, str] | None

    @property
    def dropped_by(self) -> RuleStep | None:
        """The rule that dropped the labels, if one did."""
        if self.output is None and self.steps:
            return self.steps[-1]
        return None


class RelabelRules:
    """A compiled, validated rule list; build it with ``compile_rules``.

    ``rules`` keeps the source ``Rule`` objects (Alloy's ``rules`` export), so a
    consumer can recompile them in another name-validation mode.
    """

    __slots__ = ("_steps", "legacy_names", "rules")

    def __init__(self, rules: Sequence[Rule], *, legacy_names: bool = False) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.legacy_names = legacy_names
        self._steps: tuple[_Step, ...] = tuple(
            _compile_step(rule, legacy_names) for rule in self.rules
        )

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return (
            f"RelabelRules({len(self.rules)} rules, legacy_names={self.legacy_names})"
        )

    def process(self, labels: Mapping[str, str]) -> dict[str, str] | None:
        """Apply the rules top-down to a copy of ``labels``.

        Returns the new label set without empty values, or ``None`` if a rule dropped
        it. The input is never mutated.
        """
        # An empty value is a deleted label, on input as on output.
        working = {name: val for name, val in labels.items() if val}
        for step in self._steps:
            if not step(working):
                return None
        return working

    def trace(self, labels: Mapping[str, str]) -> Trace:
        """``process`` one rule at a time, keeping the labels after each rule.

        The same compiled steps as ``process`` (no second implementation of the
        actions); only the loop differs, so the hot path pays nothing for it. The
        trace stops at the rule that dropped the labels.
        """
        working = {name: val for name, val in labels.items() if val}
        start = dict(working)
        steps: list[RuleStep] = []
        for index, (rule, step) in enumerate(zip(self.rules, self._steps, strict=True)):
            kept = step(working)
            after = {name: val for name, val in working.items() if val}
            steps.append(RuleStep(index + 1, rule, after if kept else None))
            if not kept:
                return Trace(start, tuple(steps), None)
        return Trace(start, tuple(steps), working)

    def process_many(
        self, targets: Iterable[Mapping[str, str]]
    ) -> list[dict[str, str]]:
        """Relabel every target, keeping the survivors in order (discovery.relabel)."""
        out: list[dict[str, str]] = []
        process = self.process
        for target in targets:
            result = process(target)
            if result is not None:
                out.append(result)
        return out


def compile_rules(rules: Sequence[Rule], *, legacy_names: bool = False) -> RelabelRules:
    """Validate and compile ``rules``.

    Args:
        rules: the ``rule`` blocks, in order.
        legacy_names: validate ``replace`` targets after expansion with the legacy
            ``[a-zA-Z_][a-zA-Z0-9_]*`` scheme (``relabel_rules`` of ``loki.source.*``)
            instead of UTF-8 (``discovery.relabel``).

    Raises:
        RuleError: the first invalid rule; ``index`` says which one.
    """
    for index, rule in enumerate(rules):
        try:
            rule.validate()
        except RuleError as exc:
            exc.index = index
            raise
    return RelabelRules(rules, legacy_names=legacy_names)


def process(labels: Mapping[str, str], rules: RelabelRules) -> dict[str, str] | None:
    """Function form of ``RelabelRules.process``."""
    return rules.process(labels)


class RelabelRulesLike(Protocol):
    """What a source's ``relabel_rules`` must offer (``RelabelRules`` does)."""

    def process(self, labels: Mapping[str, str]) -> dict[str, str] | None: ...


def relabel_stream(
    labels: Mapping[str, str],
    rules: RelabelRulesLike | None,
    *,
    keep: frozenset[str] = frozenset(),
) -> dict[str, str] | None:
    """The per-stream label step of the Loki sources, as Alloy's: ``rules`` applied
    (when there are any), then the internal ``__`` labels dropped, those in ``keep``
    excepted (``loki.source.api`` keeps the tenant: it is how the writer picks
    ``X-Scope-OrgID``).

    Returns ``None`` when a rule dropped the stream or left it without any label; an
    empty dict when only internal labels were left.
    """
    if rules is not None:
        relabelled = rules.process(labels)
        if not relabelled:
            return None
        labels = relabelled
    return _strip_internal(labels, keep)


def _strip_internal(labels: Mapping[str, str], keep: frozenset[str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if not is_internal(k) or k in keep}


def trace_stream(
    labels: Mapping[str, str],
    rules: RelabelRules | None,
    *,
    keep: frozenset[str] = frozenset(),
) -> tuple[Trace | None, dict[str, str] | None]:
    """:func:`relabel_stream` with the rules traced: ``(trace, labels)``, where
    ``labels`` is what ``relabel_stream`` returns for the same input (``trace`` is
    ``None`` when there are no rules)."""
    trace = None if rules is None else rules.trace(labels)
    if trace is not None:
        if not trace.output:
            return trace, None
        labels = trace.output
    return trace, _strip_internal(labels, keep)


def docker_stream_labels(
    target_labels: Mapping[str, str], stream: str, rules: RelabelRulesLike | None
) -> dict[str, str] | None:
    """The labels one stream (``stdout``/``stderr``) of a container reaches Loki with:
    the target's labels and ``__meta_docker_container_log_stream``, then
    :func:`relabel_stream` (``None``: not sent)."""
    return relabel_stream({**target_labels, DOCKER_LOG_STREAM: stream}, rules)
