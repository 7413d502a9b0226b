"""Argument pieces several components share: Alloy's ``rule``, ``basic_auth`` and
``tls_config`` blocks, the Docker ``host`` checks, and positioned errors.

Defaults come from the classes the blocks decode into (``relabel.Rule``,
``loki.push.BasicAuth``, ``loki.push.TLSConfig``): the schemas here name their Alloy
types only. Components import this module, never each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from minilog.config.ast import Attribute, Block, Pos
from minilog.config.ast import Literal as LiteralNode
from minilog.config.schema import Attr, BlockSpec, Schema, defaults_of
from minilog.errors import ConfigError, Diagnostic, MinilogError, RuleError
from minilog.loki.push import BasicAuth, TLSConfig
from minilog.redact import strip_userinfo
from minilog.relabel import RelabelRules, Rule, compile_rules

__all__ = [
    "BASIC_AUTH_SCHEMA",
    "RULE_BLOCK",
    "RULE_SCHEMA",
    "TLS_CONFIG_SCHEMA",
    "basic_auth_of",
    "check_docker_host",
    "check_relabel_rules",
    "compile_rule_args",
    "go_duration",
    "legacy_rules",
    "positioned",
    "rule_blocks",
    "tls_config_of",
]

_RULE = defaults_of(Rule)
#: Alloy's ``rule`` block, with ``relabel.Rule``'s defaults.
RULE_SCHEMA = Schema(
    attrs=[
        Attr("source_labels", "list(string)", default=list(_RULE["source_labels"])),
        Attr("separator", "string", default=_RULE["separator"]),
        Attr("regex", "string", default=_RULE["regex"]),
        Attr("modulus", "uint", default=_RULE["modulus"]),
        Attr("target_label", "string", default=_RULE["target_label"]),
        Attr("replacement", "string", default=_RULE["replacement"]),
        Attr("action", "string", default=str(_RULE["action"])),
    ]
)
RULE_BLOCK = BlockSpec("rule", RULE_SCHEMA, repeated=True)

_BASIC_AUTH = defaults_of(BasicAuth)
#: Alloy's ``basic_auth`` block (``username`` may be left out, as in Alloy).
BASIC_AUTH_SCHEMA = Schema(
    attrs=[
        Attr("username", "string", default=""),
        Attr("password", "secret", default=_BASIC_AUTH["password"]),
        Attr("password_file", "string", default=_BASIC_AUTH["password_file"]),
    ]
)

_TLS = defaults_of(TLSConfig)
#: Alloy's ``tls_config`` block (the part the push client uses).
TLS_CONFIG_SCHEMA = Schema(
    attrs=[
        Attr("ca_file", "string", default=_TLS["ca_file"]),
        Attr("cert_file", "string", default=_TLS["cert_file"]),
        Attr("key_file", "string", default=_TLS["key_file"]),
        Attr("server_name", "string", default=_TLS["server_name"]),
        Attr("insecure_skip_verify", "bool", default=_TLS["insecure_skip_verify"]),
    ]
)

_DOCKER_SCHEMES = ("unix", "tcp", "http", "https")


def basic_auth_of(values: Mapping[str, Any] | None) -> BasicAuth | None:
    """A decoded ``basic_auth`` block as ``BasicAuth`` (``None`` when absent)."""
    if not values:
        return None
    return BasicAuth(
        username=str(values["username"]),
        password=str(values["password"]),
        password_file=str(values["password_file"]),
    )


def tls_config_of(values: Mapping[str, Any] | None) -> TLSConfig | None:
    """A decoded ``tls_config`` block as ``TLSConfig`` (``None`` when absent)."""
    if not values:
        return None
    return TLSConfig(
        ca_file=str(values["ca_file"]),
        cert_file=str(values["cert_file"]),
        key_file=str(values["key_file"]),
        server_name=str(values["server_name"]),
        insecure_skip_verify=bool(values["insecure_skip_verify"]),
    )


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` (``1m30s``, ``500ms``, ``0s``), for messages
    that quote a duration as Alloy's do."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size or unit == "ns":
                whole, frac = divmod(ns, size)
                digits = (
                    f"{frac:0{len(str(size)) - 1}d}".rstrip("0") if size > 1 else ""
                )
                return f"{sign}{whole}{'.' + digits if digits else ''}{unit}"
    secs, frac = divmod(ns, 1_000_000_000)
    hours, secs = divmod(secs, 3600)
    minutes, secs = divmod(secs, 60)
    digits = f"{frac:09d}".rstrip("0")
    text = f"{secs}{'.' + digits if digits else ''}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def check_docker_host(
    host: str, refresh_interval: float, block: Block, *, source: bool = False
) -> None:
    """Alloy's checks of ``host`` and ``refresh_interval``, shared by the Docker
    components (worded as each words them: ``source`` for ``loki.source.docker``),
    plus the host schemes minilog can reach.

    Raises:
        ConfigError: an empty or unparsable host, a scheme minilog does not support
            (npipe), or a refresh interval that is not positive.
    """
    if refresh_interval <= 0:
        if source:
            raise positioned(
                block,
                "refresh_interval must be positive, got "
                f'"{go_duration(refresh_interval)}"',
            )
        raise positioned(block, "refresh_interval must be greater than 0")
    if not host:
        # Alloy's loki.source.docker accepts an empty host and fails to connect;
        # refusing it up front is clearer.
        raise positioned(block, "host attribute must not be empty")
    try:
        scheme = urlsplit(host).scheme
    except ValueError as exc:
        raise positioned(block, f"parsing host attribute: {exc}") from exc
    if scheme not in _DOCKER_SCHEMES:
        # Printed as a diagnostic, outside the log filter: no userinfo in it.
        raise positioned(
            block,
            f"unsupported Docker host {strip_userinfo(host)!r}; supported schemes: "
            + ", ".join(f"{s}://" for s in _DOCKER_SCHEMES),
        )


def check_relabel_rules(rules: object, block: Block) -> None:
    """``relabel_rules`` must be what a ``discovery.relabel`` or ``loki.relabel``
    exports as ``rules`` (or absent)."""
    if rules is not None and not isinstance(rules, RelabelRules):
        raise positioned(block, "relabel_rules must be a RelabelRules value")


def legacy_rules(rules: RelabelRules | None) -> RelabelRules | None:
    """``relabel_rules`` of a Loki source use legacy label-name validation (Alloy)."""
    if rules is None or len(rules) == 0:
        return None
    if rules.legacy_names:
        return rules
    return RelabelRules(rules.rules, legacy_names=True)


def rule_blocks(block: Block) -> list[Block]:
    """The ``rule`` sub-blocks of a component block, in source order."""
    return [s for s in block.body if isinstance(s, Block) and s.full_name == "rule"]


def compile_rule_args(
    rules: Sequence[Mapping[str, Any]],
    block: Block,
    *,
    legacy_names: bool = False,
) -> RelabelRules:
    """Decoded ``rule`` blocks -> compiled rules; each bad rule is a positioned error.

    Raises:
        ConfigError: one diagnostic per invalid rule, at that rule block.
    """
    blocks = rule_blocks(block)
    diagnostics: list[Diagnostic] = []
    compiled: list[Rule] = []
    for i, args in enumerate(rules):
        where = blocks[i] if i < len(blocks) else block
        pos = where.pos
        try:
            rule = Rule(**args)
            rule.validate()
        except RuleError as exc:
            # At the offending attribute when the rule names it (regex, action, ...).
            for stmt in where.body:
                if isinstance(stmt, Attribute) and stmt.name == exc.field:
                    pos = _inside_literal(stmt.value, exc.offset) or stmt.value.pos
            diagnostics.append(
                Diagnostic(pos.file, pos.line, pos.col, f"rule: {exc.message}")
            )
            continue
        except ConfigError as exc:
            diagnostics.extend(
                Diagnostic(pos.file, pos.line, pos.col, d.message)
                for d in exc.diagnostics
            )
            continue
        except (ValueError, TypeError, MinilogError) as exc:
            diagnostics.append(Diagnostic(pos.file, pos.line, pos.col, str(exc)))
            continue
        compiled.append(rule)
    if diagnostics:
        raise ConfigError(diagnostics)
    try:
        return compile_rules(compiled, legacy_names=legacy_names)
    except (ValueError, MinilogError) as exc:
        raise ConfigError(
            Diagnostic(block.pos.file, block.pos.line, block.pos.col, str(exc))
        ) from exc


def _inside_literal(value: object, offset: int | None) -> Pos | None:
    """The position of character ``offset`` of a string literal's value, when its
    source spells it character for character (one line, no escapes before it)."""
    if offset is None or not isinstance(value, LiteralNode):
        return None
    body = value.raw[1 : offset + 2]
    escapes = not value.raw.startswith("`") and "\\" in body
    if escapes or "\n" in value.raw or not isinstance(value.value, str):
        return None
    pos = value.pos
    return Pos(pos.line, pos.col + 1 + offset, pos.offset + 1 + offset, pos.file)


def positioned(block: Block, message: str) -> ConfigError:
    """A ``ConfigError`` with one diagnostic at ``block``."""
    pos = block.pos
    return ConfigError(Diagnostic(pos.file, pos.line, pos.col, message))
