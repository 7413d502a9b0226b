"""The relabel engine: every action, Go ``Regexp.Expand`` templates, Alloy's validation.

Cases follow the spirit of Prometheus' ``model/relabel/relabel_test.go``, written anew.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilog._re2 import compile_re2
from minilog.errors import ConfigError, RuleError
from minilog.relabel import (
    Action,
    RelabelRules,
    Rule,
    compile_rules,
    expand,
    go_lower,
    go_upper,
    is_legacy_label_name,
    is_template_name,
    is_utf8_label_name,
    parse_action,
    process,
    relabel_stream,
    trace_stream,
)


def md5_mod(value: str, modulus: int) -> str:
    """Prometheus' hashmod, computed here with struct rather than int.from_bytes."""
    (tail,) = struct.unpack(">Q", hashlib.md5(value.encode()).digest()[8:16])
    return str(tail % modulus)


def case(
    case_id: str,
    rules: list[dict[str, Any]],
    labels: dict[str, str],
    expected: dict[str, str] | None,
) -> Any:
    return pytest.param(rules, labels, expected, id=case_id)


BASE = {"a": "foo", "b": "bar", "c": "baz"}

# Compact, hand-aligned tables read better than the formatter's one-key-per-line layout.
# fmt: off
PROCESS_CASES = [
    # -- replace
    case("replace-capture-into-new-label",
         [{"source_labels": ["a"], "regex": "f(.*)", "target_label": "d",
           "replacement": "ch${1}-ch${1}"}],
         BASE, {**BASE, "d": "choo-choo"}),
    case("replace-defaults-copy-the-value",
         [{"source_labels": ["b"], "target_label": "copy"}],
         BASE, {**BASE, "copy": "bar"}),
    case("replace-static-label-without-source",
         [{"target_label": "env", "replacement": "prod"}],
         {"a": "foo"}, {"a": "foo", "env": "prod"}),
    case("replace-joins-sources-with-default-separator",
         [{"source_labels": ["a", "b"], "regex": "f(.*);(.*)r", "target_label": "a",
           "replacement": "b${1}${2}m"}],
         BASE, {**BASE, "a": "boobam"}),
    case("replace-custom-separator",
         [{"source_labels": ["a", "b", "c"], "separator": "/", "target_label": "path"}],
         BASE, {**BASE, "path": "foo/bar/baz"}),
    case("replace-missing-source-reads-empty",
         [{"source_labels": ["missing", "a"], "regex": ";(.*)", "target_label": "d"}],
         BASE, {**BASE, "d": "foo"}),
    case("replace-copying-missing-label-deletes-target",
         [{"source_labels": ["missing"], "target_label": "a"}],
         BASE, {"b": "bar", "c": "baz"}),
    case("replace-empty-replacement-deletes-target",
         [{"source_labels": ["a"], "regex": "foo", "target_label": "b",
           "replacement": ""}],
         BASE, {"a": "foo", "c": "baz"}),
    case("replace-no-match-no-change",
         [{"source_labels": ["a"], "regex": "f", "target_label": "b",
           "replacement": "x"}],
         BASE, BASE),
    case("replace-chained-rules-see-earlier-results",
         [{"source_labels": ["a", "b"], "regex": "f(.*);(.*)r", "target_label": "a",
           "replacement": "b${1}${2}m"},
          {"source_labels": ["c", "a"], "regex": "(b).*b(.*)ba(.*)",
           "target_label": "d", "replacement": "$1$2$2$3"}],
         BASE, {"a": "boobam", "b": "bar", "c": "baz", "d": "boooom"}),
    case("replace-regex-is-anchored-at-start",
         [{"source_labels": ["name"], "regex": "nginx.*", "target_label": "m",
           "replacement": "yes"}],
         {"name": "/nginx"}, {"name": "/nginx"}),
    case("replace-explicit-caret-still-anchored",
         [{"source_labels": ["name"], "regex": "^nginx.*", "target_label": "m",
           "replacement": "yes"}],
         {"name": "/nginx"}, {"name": "/nginx"}),
    case("replace-regex-is-anchored-at-end",
         [{"source_labels": ["name"], "regex": "/ngin", "target_label": "m",
           "replacement": "yes"}],
         {"name": "/nginx"}, {"name": "/nginx"}),
    case("replace-matching-slash-prefix",
         [{"source_labels": ["name"], "regex": "/nginx.*", "target_label": "m",
           "replacement": "yes"}],
         {"name": "/nginx-1"}, {"name": "/nginx-1", "m": "yes"}),
    case("replace-dot-matches-newline",
         [{"source_labels": ["a"], "regex": "foo.(bar)", "target_label": "d"}],
         {"a": "foo\nbar"}, {"a": "foo\nbar", "d": "bar"}),
    case("template-dollar-1x-is-a-name-so-empty-deletes",
         [{"source_labels": ["a"], "regex": "(f)oo", "target_label": "b",
           "replacement": "$1x"}],
         BASE, {"a": "foo", "c": "baz"}),
    case("template-braced-1-then-x",
         [{"source_labels": ["a"], "regex": "(f)oo", "target_label": "b",
           "replacement": "${1}x"}],
         BASE, {**BASE, "b": "fx"}),
    case("template-double-dollar-is-literal",
         [{"source_labels": ["a"], "regex": "(f)oo", "target_label": "price",
           "replacement": "$$${1}$$1"}],
         BASE, {**BASE, "price": "$f$1"}),
    case("template-named-groups",
         [{"source_labels": ["a"], "regex": "(?P<first>f)(?<rest>.*)",
           "target_label": "d", "replacement": "${rest}-$first"}],
         BASE, {**BASE, "d": "oo-f"}),
    case("template-dollar-10-without-ten-groups-is-empty",
         [{"source_labels": ["a"], "regex": "(f)(o)(o)", "target_label": "d",
           "replacement": "<$10>"}],
         BASE, {**BASE, "d": "<>"}),
    case("template-dollar-10-is-group-ten",
         [{"source_labels": ["v"], "regex": "(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)",
           "target_label": "d", "replacement": "$10"}],
         {"v": "abcdefghij"}, {"v": "abcdefghij", "d": "j"}),
    case("template-dollar-01-is-a-name",
         [{"source_labels": ["a"], "regex": "(f)oo", "target_label": "d",
           "replacement": "<$01>"}],
         BASE, {**BASE, "d": "<>"}),
    case("template-dollar-01-finds-group-named-01",
         [{"source_labels": ["a"], "regex": "(f)(?P<01>oo)", "target_label": "d",
           "replacement": "<$01>"}],
         BASE, {**BASE, "d": "<oo>"}),
    case("template-lone-dollar-is-literal",
         [{"source_labels": ["a"], "target_label": "d", "replacement": "$ $-${x"}],
         BASE, {**BASE, "d": "$ $-${x"}),
    case("target-label-template",
         [{"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
           "target_label": "${1}", "replacement": "${2}"}],
         {"a": "some-name-value"}, {"a": "some-name-value", "name": "value"}),
    case("target-label-template-empty-replacement-deletes-nothing-new",
         [{"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
           "target_label": "${1}", "replacement": "${3}"}],
         {"a": "some-name-value"}, {"a": "some-name-value"}),
    case("target-label-template-no-match-no-change",
         [{"source_labels": ["a"], "regex": "x(.*)", "target_label": "${1}"}],
         {"a": "foo"}, {"a": "foo"}),
    case("target-label-expanding-to-empty-is-invalid-no-change",
         [{"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
           "target_label": "${3}", "replacement": "${1}"}],
         {"a": "some-name-0"}, {"a": "some-name-0"}),
    case("real-life-tags-parsing",
         [{"source_labels": ["__meta_sd_tags"], "regex": "(?:.+,|^)path:(/[^,]+).*",
           "target_label": "__metrics_path__"},
          {"source_labels": ["__meta_sd_tags"], "regex": "(?:.+,|^)job:([^,]+).*",
           "target_label": "job"},
          {"source_labels": ["__meta_sd_tags"],
           "regex": "(?:.+,|^)label:([^=]+)=([^,]+).*", "target_label": "${1}",
           "replacement": "${2}"}],
         {"__meta_sd_tags": "path:/secret,job:some-job,label:foo=bar"},
         {"__meta_sd_tags": "path:/secret,job:some-job,label:foo=bar",
          "__metrics_path__": "/secret", "job": "some-job", "foo": "bar"}),
    # -- keep / drop
    case("keep-matching",
         [{"source_labels": ["a"], "regex": "f.*", "action": "keep"}], BASE, BASE),
    case("keep-not-matching-drops",
         [{"source_labels": ["a"], "regex": "no-match", "action": "keep"}], BASE, None),
    case("keep-is-anchored",
         [{"source_labels": ["a"], "regex": "fo", "action": "keep"}], BASE, None),
    case("keep-missing-label-matches-empty",
         [{"source_labels": ["missing"], "regex": "", "action": "keep"}], BASE, BASE),
    case("drop-matching",
         [{"source_labels": ["a"], "regex": ".*o.*", "action": "drop"}], BASE, None),
    case("drop-not-matching",
         [{"source_labels": ["a"], "regex": "f|o", "action": "drop"}], BASE, BASE),
    case("drop-stops-later-rules",
         [{"source_labels": ["a"], "regex": ".*o.*", "action": "drop"},
          {"target_label": "never", "replacement": "x"}],
         BASE, None),
    # -- keepequal / dropequal
    case("keepequal-equal-keeps",
         [{"source_labels": ["__tmp_port"], "target_label": "__port1",
           "action": "keepequal"}],
         {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"},
         {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"}),
    case("keepequal-different-drops",
         [{"source_labels": ["__tmp_port"], "target_label": "__port2",
           "action": "keepequal"}],
         {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"}, None),
    case("keepequal-missing-target-equals-empty-source",
         [{"source_labels": ["missing"], "target_label": "absent",
           "action": "keepequal"}],
         BASE, BASE),
    case("dropequal-equal-drops",
         [{"source_labels": ["__tmp_port"], "target_label": "__port1",
           "action": "dropequal"}],
         {"__tmp_port": "1234", "__port1": "1234"}, None),
    case("dropequal-different-keeps",
         [{"source_labels": ["__tmp_port"], "target_label": "__port2",
           "action": "dropequal"}],
         {"__tmp_port": "1234", "__port2": "5678"},
         {"__tmp_port": "1234", "__port2": "5678"}),
    # -- hashmod ("976" and "734" are Prometheus' own expected values)
    case("hashmod-known-value-baz",
         [{"source_labels": ["c"], "target_label": "d", "action": "hashmod",
           "modulus": 1000}],
         BASE, {**BASE, "d": "976"}),
    case("hashmod-known-value-with-newline",
         [{"source_labels": ["a"], "target_label": "b", "action": "hashmod",
           "modulus": 1000}],
         {"a": "foo\nbar"}, {"a": "foo\nbar", "b": "734"}),
    case("hashmod-joined-sources",
         [{"source_labels": ["a", "b"], "target_label": "shard", "action": "hashmod",
           "modulus": 7}],
         BASE, {**BASE, "shard": md5_mod("foo;bar", 7)}),
    case("hashmod-huge-modulus-keeps-all-64-bits",
         [{"source_labels": ["a"], "target_label": "h", "action": "hashmod",
           "modulus": 2**64 - 1}],
         BASE, {**BASE, "h": md5_mod("foo", 2**64 - 1)}),
    # -- labelmap
    case("labelmap-copies-and-keeps-originals",
         [{"regex": "(b.*)", "replacement": "bar_${1}", "action": "labelmap"}],
         {"a": "foo", "b1": "bar", "b2": "baz"},
         {"a": "foo", "b1": "bar", "b2": "baz", "bar_b1": "bar", "bar_b2": "baz"}),
    case("labelmap-strips-meta-prefix",
         [{"regex": "__meta_(my.*)", "replacement": "${1}", "action": "labelmap"}],
         {"a": "foo", "__meta_my_bar": "aaa", "__meta_my_baz": "bbb",
          "__meta_other": "ccc"},
         {"a": "foo", "__meta_my_bar": "aaa", "__meta_my_baz": "bbb",
          "__meta_other": "ccc", "my_bar": "aaa", "my_baz": "bbb"}),
    case("labelmap-iterates-a-snapshot",
         [{"regex": "(.*)", "replacement": "x_${1}", "action": "labelmap"}],
         {"a": "1", "b": "2"}, {"a": "1", "b": "2", "x_a": "1", "x_b": "2"}),
    case("labelmap-is-anchored",
         [{"regex": "b", "replacement": "z", "action": "labelmap"}],
         {"b1": "x", "b": "y"}, {"b1": "x", "b": "y", "z": "y"}),
    # -- labeldrop / labelkeep
    case("labeldrop-matching", [{"regex": "(b.*)", "action": "labeldrop"}],
         {"a": "foo", "b1": "bar", "b2": "baz"}, {"a": "foo"}),
    case("labeldrop-anchored", [{"regex": "^port_name$", "action": "labeldrop"}],
         {"port_name": "foo", "port_name_x": "bar"}, {"port_name_x": "bar"}),
    case("labelkeep-matching", [{"regex": "(b.*)", "action": "labelkeep"}],
         {"a": "foo", "b1": "bar", "b2": "baz"}, {"b1": "bar", "b2": "baz"}),
    case("labelkeep-nothing-matches-empties-the-set",
         [{"regex": "zzz", "action": "labelkeep"}], BASE, {}),
    # -- lowercase / uppercase
    case("upper-and-lower",
         [{"source_labels": ["foo"], "action": "uppercase", "target_label": "up"},
          {"source_labels": ["foo"], "action": "lowercase", "target_label": "low"}],
         {"foo": "bAr123Foo"},
         {"foo": "bAr123Foo", "up": "BAR123FOO", "low": "bar123foo"}),
    case("lowercase-unicode",
         [{"source_labels": ["v"], "action": "lowercase", "target_label": "v"}],
         {"v": "ÄÖÜ ΔΈΛΤΑ"}, {"v": "äöü δέλτα"}),
    case("lowercase-no-final-sigma-like-go",
         [{"source_labels": ["v"], "action": "lowercase", "target_label": "v"}],
         {"v": "ΟΔΟΣ"}, {"v": "οδοσ"}),
    case("uppercase-keeps-sharp-s-like-go",
         [{"source_labels": ["v"], "action": "uppercase", "target_label": "v"}],
         {"v": "straße"}, {"v": "STRAßE"}),
    case("lowercase-of-missing-deletes-target",
         [{"source_labels": ["missing"], "action": "lowercase", "target_label": "a"}],
         BASE, {"b": "bar", "c": "baz"}),
    # -- general
    case("no-rules-passthrough", [], BASE, BASE),
    case("empty-input-values-are-removed", [], {"a": "foo", "e": ""}, {"a": "foo"}),
    case("empty-input-value-reads-as-missing",
         [{"source_labels": ["e"], "regex": "", "action": "keep"},
          {"source_labels": ["e"], "target_label": "copy", "replacement": "was-${1}"}],
         {"a": "foo", "e": ""}, {"a": "foo", "copy": "was-"}),
]
# fmt: on


@pytest.mark.parametrize(("rules", "labels", "expected"), PROCESS_CASES)
def test_process(
    rules: list[dict[str, Any]], labels: dict[str, str], expected: dict[str, str] | None
) -> None:
    compiled = compile_rules([Rule(**r) for r in rules])
    original = dict(labels)
    assert compiled.process(labels) == expected
    assert labels == original


@pytest.mark.parametrize(("rules", "labels", "expected"), PROCESS_CASES)
def test_trace_ends_where_process_ends(
    rules: list[dict[str, Any]], labels: dict[str, str], expected: dict[str, str] | None
) -> None:
    # The tracing mode runs the same compiled steps: its end is process()'s result,
    # and each step's labels are what process() gives for the rules up to it.
    compiled = compile_rules([Rule(**r) for r in rules])
    trace = compiled.trace(labels)
    assert trace.output == expected
    for step in trace.steps:
        prefix = compile_rules(compiled.rules[: step.number])
        assert step.labels == prefix.process(labels)
    if expected is None:
        assert trace.dropped_by is trace.steps[-1]
    else:
        assert trace.dropped_by is None
        assert len(trace.steps) == len(rules)


def test_trace_names_the_rule_that_dropped_and_stops_there() -> None:
    rules = compile_rules(
        [*SEED_RULES, Rule(target_label="after", replacement="never")]
    )
    trace = rules.trace({"__meta_docker_container_name": "/loki"})
    assert trace.input == {"__meta_docker_container_name": "/loki"}
    assert [s.labels for s in trace.steps] == [
        {"__meta_docker_container_name": "/loki", "service": "loki"},
        None,
    ]
    dropped = trace.dropped_by
    assert dropped is not None
    assert dropped.describe() == "rule 2 (keep)"


def test_trace_stream_matches_relabel_stream() -> None:
    rules = compile_rules(SEED_RULES, legacy_names=True)
    for name in ("/web-gateway", "/loki"):
        labels = {"__meta_docker_container_name": name, "__meta_docker_x": "1"}
        trace, out = trace_stream(labels, rules)
        assert out == relabel_stream(labels, rules)
        assert trace is not None
        assert trace.output == rules.process(labels)
    assert trace_stream({"a": "b", "__x": "y"}, None) == (None, {"a": "b"})


SEED_RULES = [
    # The two rules of the seed config (tests/data/alloy/seed-config.alloy).
    Rule(
        source_labels=("__meta_docker_container_name",),
        regex="/(.*)",
        target_label="service",
    ),
    Rule(
        source_labels=("service",),
        regex="(web-gateway|order-api|fulfillment-worker)",
        action="keep",
    ),
]


def test_seed_rules_are_the_ones_in_the_seed_config() -> None:
    text = (Path(__file__).parent / "data" / "alloy" / "seed-config.alloy").read_text()
    for rule in SEED_RULES:
        assert f'regex         = "{rule.regex}"' in text
        assert f'source_labels = ["{rule.source_labels[0]}"]' in text
    assert 'target_label  = "service"' in text
    assert 'action        = "keep"' in text


def test_seed_config_keeps_web_gateway_with_service_label() -> None:
    target = {
        "__meta_docker_container_name": "/web-gateway",
        "__meta_docker_container_id": "abc123",
        "__meta_docker_network_ip": "",
    }
    assert compile_rules(SEED_RULES).process(target) == {
        "__meta_docker_container_name": "/web-gateway",
        "__meta_docker_container_id": "abc123",
        "service": "web-gateway",
    }


def test_seed_config_drops_loki() -> None:
    assert (
        compile_rules(SEED_RULES).process({"__meta_docker_container_name": "/loki"})
        is None
    )


def test_seed_config_service_name_must_match_whole_value() -> None:
    rules = compile_rules(SEED_RULES)
    assert rules.process({"__meta_docker_container_name": "/web-gateway-2"}) is None
    assert rules.process({"__meta_docker_container_name": "web-gateway"}) is None


def test_process_many_keeps_survivors_in_order() -> None:
    rules = compile_rules(SEED_RULES)
    names = ["/order-api", "/loki", "/web-gateway", "/grafana", "/fulfillment-worker"]
    out = rules.process_many([{"__meta_docker_container_name": n} for n in names])
    assert [t["service"] for t in out] == [
        "order-api",
        "web-gateway",
        "fulfillment-worker",
    ]


def test_process_function_form() -> None:
    rules = compile_rules([Rule(target_label="x", replacement="y")])
    assert process({"a": "b"}, rules) == {"a": "b", "x": "y"}


def test_returns_a_new_dict_each_time() -> None:
    rules = compile_rules([])
    labels = {"a": "b"}
    out = rules.process(labels)
    assert out == labels
    assert out is not labels


# -- label-name schemes


@pytest.mark.parametrize(
    ("rule", "labels", "utf8", "legacy"),
    [
        pytest.param(
            Rule(target_label="foo-bar", replacement="x"),
            {},
            {"foo-bar": "x"},
            {},
            id="static-dashed-target",
        ),
        pytest.param(
            Rule(
                source_labels=("k",), regex="(.*)", target_label="${1}", replacement="v"
            ),
            {"k": "my-label"},
            {"k": "my-label", "my-label": "v"},
            {"k": "my-label"},
            id="templated-dashed-target",
        ),
        pytest.param(
            Rule(
                source_labels=("k",), regex="(.*)", target_label="${1}", replacement="v"
            ),
            {"k": "9lives"},
            {"k": "9lives", "9lives": "v"},
            {"k": "9lives"},
            id="templated-leading-digit",
        ),
        pytest.param(
            Rule(
                source_labels=("k",), regex="(.*)", target_label="${1}", replacement="v"
            ),
            {"k": "ok_name"},
            {"k": "ok_name", "ok_name": "v"},
            {"k": "ok_name", "ok_name": "v"},
            id="templated-legacy-valid-target",
        ),
    ],
)
def test_replace_target_validity_depends_on_scheme(
    rule: Rule, labels: dict[str, str], utf8: dict[str, str], legacy: dict[str, str]
) -> None:
    assert compile_rules([rule]).process(labels) == utf8
    assert compile_rules([rule], legacy_names=True).process(labels) == legacy


@pytest.mark.parametrize(
    ("name", "legacy", "utf8"),
    [
        ("job", True, True),
        ("_x9", True, True),
        ("9x", False, True),
        ("a-b", False, True),
        ("é", False, True),
        ("", False, False),
        ("\ud800", False, False),
    ],
)
def test_label_name_schemes(name: str, legacy: bool, utf8: bool) -> None:
    assert is_legacy_label_name(name) is legacy
    assert is_utf8_label_name(name) is utf8


def test_compiling_an_unvalidated_unknown_action_fails() -> None:
    with pytest.raises(RuleError, match='unrecognized action type "bogus"'):
        RelabelRules([Rule(action="bogus")])


def test_rules_keep_their_source_for_recompiling() -> None:
    rules = compile_rules(SEED_RULES)
    assert rules.rules == tuple(SEED_RULES)
    assert len(rules) == 2
    legacy = compile_rules(rules.rules, legacy_names=True)
    assert isinstance(legacy, RelabelRules)
    assert legacy.legacy_names
    assert repr(legacy) == "RelabelRules(2 rules, legacy_names=True)"


# -- expand (Go Regexp.Expand)

EXPAND_CASES = [
    ("$1", "a"),
    ("${1}", "a"),
    ("$1x", ""),
    ("${1}x", "ax"),
    ("$$", "$"),
    ("$$1", "$1"),
    ("$$$1", "$a"),
    ("$", "$"),
    ("x$", "x$"),
    ("$-", "$-"),
    ("${", "${"),
    ("${1", "${1"),
    ("${}", "${}"),
    ("${1-}", "${1-}"),
    ("$0", "abc"),
    ("$2$3", "bc"),
    ("$4", ""),
    ("$10", ""),
    ("$01", ""),
    ("$name", "c"),
    ("${name}", "c"),
    ("${name}s", "cs"),
    ("$names", ""),
    ("$name-x", "c-x"),
    ("$é", ""),
    ("$1\u0663", ""),
    ("$999999999", ""),
    ("$1000000000", ""),
    ("plain", "plain"),
    ("", ""),
]


@pytest.mark.parametrize(
    ("template", "expected"), EXPAND_CASES, ids=[c[0] or "empty" for c in EXPAND_CASES]
)
def test_expand_like_go(template: str, expected: str) -> None:
    match = compile_re2("(a)(b)(?P<name>c)").fullmatch("abc")
    assert match is not None
    assert expand(template, match) == expected


def test_expand_non_participating_group_is_empty() -> None:
    match = compile_re2("(a)|(b)").fullmatch("b")
    assert match is not None
    assert expand("[$1][$2]", match) == "[][b]"


def test_expand_unicode_name() -> None:
    match = compile_re2("(?P<x1>a)").fullmatch("a")
    assert match is not None
    # "é" extends the name (Unicode letter), so "$x1é" refers to a missing group.
    assert expand("$x1é|${x1}é", match) == "|aé"


# -- case mapping


def test_go_case_mapping_is_per_code_point() -> None:
    assert go_lower("İSTANBUL") == "istanbul"
    assert go_upper("ﬁx ᾳ") == "ﬁX ᾼ"
    assert go_lower("ABC") == "abc"
    assert go_upper("abc") == "ABC"


# -- validation

# fmt: off
VALIDATION_ERRORS = [
    ("empty-action", {"action": ""}, "relabel action cannot be empty", "action"),
    ("unknown-action", {"action": "rename"},
     'unrecognized action type "rename"', "action"),
    ("hashmod-zero-modulus", {"action": "hashmod", "target_label": "h"},
     "relabel configuration for hashmod requires non-zero modulus", "modulus"),
    ("replace-needs-target", {"action": "replace"},
     "relabel configuration for replace action requires 'target_label' value",
     "target_label"),
    ("hashmod-needs-target", {"action": "hashmod", "modulus": 2},
     "relabel configuration for hashmod action requires 'target_label' value",
     "target_label"),
    ("lowercase-needs-target", {"action": "lowercase"},
     "relabel configuration for lowercase action requires 'target_label' value",
     "target_label"),
    ("uppercase-needs-target", {"action": "uppercase"},
     "relabel configuration for uppercase action requires 'target_label' value",
     "target_label"),
    ("keepequal-needs-target", {"action": "keepequal"},
     "relabel configuration for keepequal action requires 'target_label' value",
     "target_label"),
    ("dropequal-needs-target", {"action": "dropequal"},
     "relabel configuration for dropequal action requires 'target_label' value",
     "target_label"),
    ("replace-template-leading-digit", {"target_label": "0${3}"},
     "\"0${3}\" is invalid 'target_label' for replace action", "target_label"),
    ("replace-template-leading-dash", {"target_label": "-${3}"},
     "\"-${3}\" is invalid 'target_label' for replace action", "target_label"),
    ("replace-template-bare-dollar", {"target_label": "a$"},
     "\"a$\" is invalid 'target_label' for replace action", "target_label"),
    ("lowercase-replacement-set",
     {"action": "lowercase", "target_label": "x", "replacement": "y"},
     "'replacement' can not be set for lowercase action", "replacement"),
    ("uppercase-replacement-set",
     {"action": "uppercase", "target_label": "x", "replacement": "y"},
     "'replacement' can not be set for uppercase action", "replacement"),
    ("keepequal-replacement-set",
     {"action": "keepequal", "target_label": "x", "replacement": "y"},
     "'replacement' can not be set for keepequal action", "replacement"),
    ("labelmap-bad-replacement", {"action": "labelmap", "replacement": "-$1"},
     "\"-$1\" is invalid 'replacement' for labelmap action", "replacement"),
    ("labeldrop-with-source", {"action": "labeldrop", "source_labels": ["a"]},
     "labeldrop action requires only 'regex', and no other fields", "source_labels"),
    ("labeldrop-with-target", {"action": "labeldrop", "target_label": "a"},
     "labeldrop action requires only 'regex', and no other fields", "target_label"),
    ("labelkeep-with-separator", {"action": "labelkeep", "separator": ","},
     "labelkeep action requires only 'regex', and no other fields", "separator"),
    ("labelkeep-with-replacement", {"action": "labelkeep", "replacement": "x"},
     "labelkeep action requires only 'regex', and no other fields", "replacement"),
    ("labelkeep-with-modulus", {"action": "labelkeep", "modulus": 3},
     "labelkeep action requires only 'regex', and no other fields", "modulus"),
    ("keepequal-with-regex",
     {"action": "keepequal", "target_label": "x", "regex": "a"},
     "keepequal action requires only 'source_labels' and 'target_label', "
     "and no other fields", "regex"),
    ("dropequal-with-separator",
     {"action": "dropequal", "target_label": "x", "separator": ","},
     "dropequal action requires only 'source_labels' and 'target_label', "
     "and no other fields", "separator"),
    ("dropequal-with-modulus",
     {"action": "dropequal", "target_label": "x", "modulus": 2},
     "dropequal action requires only 'source_labels' and 'target_label', "
     "and no other fields", "modulus"),
    ("lowercase-target-not-utf8", {"action": "lowercase", "target_label": "\ud800"},
     # Go strings hold bytes: a lone surrogate shows as its (invalid) UTF-8 bytes
     "\"\\xed\\xa0\\x80\" is invalid 'target_label' for lowercase action",
     "target_label"),
    ("hashmod-target-not-utf8",
     {"action": "hashmod", "target_label": "\udfff", "modulus": 2},
     "\"\\xed\\xbf\\xbf\" is invalid 'target_label' for hashmod action",
     "target_label"),
    ("unknown-action-quoted-like-go", {"action": 'a"b\\\n\x01é\u200b\U000e0001'},
     'unrecognized action type "a\\"b\\\\\\n\\x01é\\u200b\\U000e0001"', "action"),
    ("negative-modulus", {"action": "hashmod", "target_label": "x", "modulus": -1},
     "modulus must be an unsigned 64-bit integer, got -1", "modulus"),
    ("modulus-over-uint64",
     {"action": "hashmod", "target_label": "x", "modulus": 2**64},
     f"modulus must be an unsigned 64-bit integer, got {2**64}", "modulus"),
]
# fmt: on


@pytest.mark.parametrize(
    ("kwargs", "message", "field"),
    [pytest.param(*c[1:], id=c[0]) for c in VALIDATION_ERRORS],
)
def test_validation_errors(kwargs: dict[str, Any], message: str, field: str) -> None:
    rule = Rule(**kwargs)
    with pytest.raises(RuleError) as info:
        rule.validate()
    assert str(info.value) == message
    assert info.value.field == field
    assert isinstance(info.value, ConfigError)


VALID_RULES = [
    pytest.param({"target_label": "x"}, id="replace-minimal"),
    pytest.param({"target_label": "foo-bar"}, id="replace-utf8-target"),
    pytest.param({"target_label": "${1}_x$2"}, id="replace-template-target"),
    pytest.param({"action": "keep", "regex": "a|b"}, id="keep"),
    pytest.param({"action": "drop"}, id="drop-defaults"),
    pytest.param(
        {"action": "hashmod", "target_label": "h", "modulus": 1}, id="hashmod"
    ),
    pytest.param({"action": "labelmap", "replacement": "p_${1}"}, id="labelmap"),
    pytest.param({"action": "labeldrop", "regex": "tmp_.*"}, id="labeldrop"),
    pytest.param({"action": "labelkeep", "regex": "job"}, id="labelkeep"),
    pytest.param(
        {"action": "keepequal", "source_labels": ["a"], "target_label": "b"},
        id="keepequal",
    ),
    pytest.param({"action": "dropequal", "target_label": "b"}, id="dropequal"),
    pytest.param({"action": "lowercase", "target_label": "b"}, id="lowercase"),
    # Alloy checks these targets against the UTF-8 scheme, where "${3}" is a valid name.
    pytest.param({"action": "lowercase", "target_label": "${3}"}, id="lowercase-utf8"),
    pytest.param(
        {"action": Action.UPPERCASE, "target_label": "b"}, id="uppercase-enum"
    ),
]


@pytest.mark.parametrize("kwargs", VALID_RULES)
def test_valid_rules_pass_validation(kwargs: dict[str, Any]) -> None:
    Rule(**kwargs).validate()
    compile_rules([Rule(**kwargs)])


def test_rule_defaults_are_alloys() -> None:
    rule = Rule()
    assert rule.source_labels == ()
    assert rule.separator == ";"
    assert rule.regex == "(.*)"
    assert rule.modulus == 0
    assert rule.target_label == ""
    assert rule.replacement == "$1"
    assert rule.action is Action.REPLACE


def test_rule_normalises_action_and_sources() -> None:
    rule = Rule(source_labels=["a", "b"], action="keep")  # type: ignore[arg-type]
    assert rule.action is Action.KEEP
    assert rule.source_labels == ("a", "b")
    assert hash(rule) == hash(Rule(source_labels=("a", "b"), action=Action.KEEP))


def test_all_eleven_actions() -> None:
    assert sorted(a.value for a in Action) == sorted(
        [
            "replace",
            "keep",
            "drop",
            "keepequal",
            "dropequal",
            "hashmod",
            "labelmap",
            "labeldrop",
            "labelkeep",
            "lowercase",
            "uppercase",
        ]
    )


def test_parse_action() -> None:
    assert parse_action("labelmap") is Action.LABELMAP
    with pytest.raises(RuleError, match='unrecognized action type ""'):
        parse_action("")
    with pytest.raises(RuleError, match='unrecognized action type "Keep"'):
        parse_action("Keep")


def test_invalid_regex_is_a_rule_error_with_offset() -> None:
    with pytest.raises(RuleError) as info:
        Rule(regex="ab(?=c)", action="keep")
    assert info.value.field == "regex"
    assert info.value.offset == 2
    assert "lookahead" in str(info.value)


def test_compile_rules_reports_the_failing_rule_index() -> None:
    with pytest.raises(RuleError) as info:
        compile_rules(
            [Rule(target_label="ok"), Rule(action="hashmod", target_label="h")]
        )
    assert info.value.index == 1
    assert info.value.field == "modulus"


# Prometheus' relabelTarget, verbatim, as the oracle for our linear-time rewrite.
RELABEL_TARGET = re.compile(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$", re.ASCII)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("-label", False),
        ("label", True),
        ("label${1}", True),
        ("${1}label", True),
        ("${1}", True),
        ("${", False),
        ("$", False),
        ("${}", False),
        ("foo${", False),
        ("$1", True),
        ("asd$2asd", True),
        ("-foo${1}bar-", False),
        ("_${1}_", True),
        ("foo${bar}foo", True),
    ],
)
def test_template_name_validity(text: str, valid: bool) -> None:
    assert is_template_name(text) is valid


@given(st.text(alphabet="a1_${}-", max_size=10))
def test_template_name_rewrite_matches_prometheus_regex(text: str) -> None:
    assert is_template_name(text) == (
        RELABEL_TARGET.match(text) is not None and not text.endswith("\n")
    )


def test_template_name_check_is_linear_time() -> None:
    # The original nested-quantifier regex backtracks exponentially on this input.
    assert not is_template_name("a" * 5000 + "-")
