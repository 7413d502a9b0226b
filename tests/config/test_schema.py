"""Schema decoding: defaults, conversions, Go durations, byte sizes, all errors."""

from __future__ import annotations

from typing import Any

import pytest

from minilog.config import (
    MISSING,
    Attr,
    BlockSpec,
    ConfigError,
    Schema,
    Scope,
    Secret,
    decode_block,
    parse,
)
from minilog.config import ast as A

RULE = Schema(
    [
        Attr("source_labels", "list(string)", default=[]),
        Attr("regex", "string", default="(.*)"),
        Attr("action", "string", default="replace"),
        Attr("modulus", "uint"),
    ]
)
BASIC_AUTH = Schema(
    [Attr("username", "string", required=True), Attr("password", "secret")]
)
ENDPOINT = Schema(
    [
        Attr("url", "string", required=True),
        Attr("batch_wait", "duration", default=1.0),
        Attr("batch_size", "bytes", default=1 << 20),
        Attr("headers", "map(string)", default={}),
    ],
    [BlockSpec("basic_auth", BASIC_AUTH)],
)
WRITE = Schema(
    [
        Attr("external_labels", "map(string)", default={}),
        Attr("forward_to", "list(capsule)"),
        Attr("targets", "list(map(string))"),
        Attr("enabled", "bool", default=True),
        Attr("ratio", "number"),
        Attr("anything", "any"),
    ],
    [
        BlockSpec("endpoint", ENDPOINT, repeated=True, required=True),
        BlockSpec("rule", RULE),
    ],
)


def block(src: str) -> A.Block:
    stmt = parse(src, "s.alloy").body[0]
    assert isinstance(stmt, A.Block)
    return stmt


def decode(
    src: str, schema: Schema = WRITE, scope: Scope | None = None
) -> dict[str, Any]:
    return decode_block(block(src), schema, scope or Scope())


def errors(src: str, schema: Schema = WRITE, scope: Scope | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        decode(src, schema, scope)
    return [f"{d.line}:{d.column}: {d.message}" for d in info.value.diagnostics]


def test_decodes_attributes_blocks_and_defaults() -> None:
    receiver = object()
    got = decode(
        'loki.write "w" {\n'
        '\texternal_labels = { cluster = "dev", n = 1 }\n'
        "\tforward_to = [r]\n"
        "\tendpoint {\n"
        '\t\turl = "http://a"\n'
        '\t\tbatch_wait = "1m30s"\n'
        '\t\tbatch_size = "2MiB"\n'
        '\t\tbasic_auth {\n\t\t\tusername = "u"\n\t\t\tpassword = "p"\n\t\t}\n'
        "\t}\n"
        '\tendpoint {\n\t\turl = "http://b"\n\t}\n'
        "}\n",
        scope=Scope({"r": receiver}),
    )
    assert got["external_labels"] == {"cluster": "dev", "n": "1"}
    assert got["forward_to"][0] is receiver
    assert got["enabled"] is True
    assert got["ratio"] is None and got["rule"] is None and got["targets"] is None
    first, second = got["endpoint"]
    assert first["batch_wait"] == 90.0 and first["batch_size"] == 2 << 20
    assert first["basic_auth"]["password"] == "p"
    assert isinstance(first["basic_auth"]["password"], Secret)
    assert second == {
        "url": "http://b",
        "batch_wait": 1.0,
        "batch_size": 1 << 20,
        "headers": {},
        "basic_auth": None,
    }


def test_defaults_are_copied_not_shared() -> None:
    a = decode_block([], RULE, Scope(), pos=A.Pos(1, 1, 0))
    a["source_labels"].append("x")
    assert decode_block([], RULE, Scope(), pos=A.Pos(1, 1, 0))["source_labels"] == []


def test_null_means_unset() -> None:
    got = decode_block(block("rule {\n\tregex = null\n}\n"), RULE, Scope())
    assert got["regex"] == "(.*)"


@pytest.mark.parametrize(
    ("typ", "value", "expected"),
    [
        ("string", "1", "1"),
        ("string", "2.5", "2.5"),
        ("number", '"42"', 42),
        ("number", '"1.5"', 1.5),
        ("int", "3.0", 3),
        ("uint", '"7"', 7),
        ("bool", "false", False),
        ("duration", '"250ms"', 0.25),
        ("bytes", "1024", 1024),
        ("bytes", '"1MB"', 1 << 20),
        ("list(string)", '["a", 1]', ["a", "1"]),
        ("map(string)", '{ a = "b" }', {"a": "b"}),
        ("list(map(string))", '[{ a = "b" }]', [{"a": "b"}]),
        ("any", "[1, { a = null }]", [1, {"a": None}]),
    ],
)
def test_type_conversions(typ: str, value: str, expected: Any) -> None:
    got = decode_block(
        block(f"b {{\n\tv = {value}\n}}\n"), Schema([Attr("v", typ)]), Scope()
    )
    assert got["v"] == expected
    assert type(got["v"]) is type(expected)


@pytest.mark.parametrize(
    ("typ", "value", "where", "message"),
    [
        # Alloy's wording: the value's text, then what it should be.
        ("string", "true", "2:6", "true should be string, got bool"),
        ("string", "s", "2:6", "s secrets may not be converted into strings"),
        ("number", '"abc"', "2:6", '"abc" should be number, got string'),
        ("number", '" 1"', "2:6", '" 1" should be number, got string'),
        ("int", "1.5", "2:6", "1.5 should be an integer, got fractional number 1.5"),
        (
            "uint",
            "-1",
            "2:6",
            "-1 should be an unsigned integer, got negative number -1",
        ),
        ("bool", '"true"', "2:6", '"true" should be bool, got string'),
        ("duration", "5", "2:6", "5 should be string, got number"),
        ("duration", '"1d"', "2:6", '"1d" unknown unit "d" in duration "1d"'),
        ("bytes", '"1XB"', "2:6", '"1XB" unknown unit "XB" in byte size "1XB"'),
        # Inside a literal list or object, at the element itself.
        ("list(string)", '["a", [1]]', "2:12", "[1] should be string, got array"),
        ("list(string)", '["a",\n\t\ttrue]', "3:3", "true should be string, got bool"),
        ("map(string)", "[1]", "2:6", "[1] should be object, got array"),
        ("map(string)", "{ k = {} }", "2:12", "{} should be string, got object"),
        (
            "list(map(string))",
            "[{a = 1}, {b = [2]}]",
            "2:21",
            "[2] should be string, got array",
        ),
        # Through a reference, at the reference, with the path inside it.
        ("list(map(string))", "objs", "2:6", "objs[1].b should be string, got array"),
        ("capsule", '"x"', "2:6", '"x" should be capsule, got string'),
        ("secret", "1", "2:6", "1 should be capsule, got number"),
    ],
)
def test_type_errors_say_what_was_expected(
    typ: str, value: str, where: str, message: str
) -> None:
    scope = Scope({"s": Secret("x"), "objs": [{"a": "1"}, {"b": [2]}]})
    src = f"b {{\n\tv = {value}\n}}\n"
    assert errors(src, Schema([Attr("v", typ)]), scope) == [f"{where}: {message}"]


def test_all_problems_are_collected_and_positioned() -> None:
    src = (
        'loki.write "w" {\n'
        "\tbogus = 1\n"
        "\tenabled = 1\n"
        "\tenabled = true\n"
        "\tendpoint = {}\n"
        "\tforward_to {\n\t}\n"
        "\trule {\n\t}\n"
        "\trule {\n\t}\n"
        '\tendpoint "lbl" {\n\t\tbatch_wait = "soon"\n\t}\n'
        "\tratio = nothing.here\n"
        "}\n"
    )
    assert errors(src) == [
        '2:2: unrecognized attribute name "bogus"; supported attributes: '
        "external_labels, forward_to, targets, enabled, ratio, anything",
        "3:12: 1 should be bool, got number",
        '4:2: attribute "enabled" may only be provided once (first at 3:2)',
        '5:2: "endpoint" must be a block, but is used as an attribute',
        '6:2: "forward_to" must be an attribute, but is used as a block',
        '10:2: block "rule" may only be specified once (first at 8:2)',
        '12:2: block "endpoint" does not support specifying labels',
        '12:2: missing required attribute "url"',
        '13:16: "soon" invalid duration "soon"',
        '15:10: component "nothing.here" does not exist or is out of scope',
    ]


def test_missing_required_block_and_unknown_nested_block() -> None:
    assert errors('loki.write "w" {\n\tqueue {\n\t}\n}\n') == [
        '1:1: missing required block "endpoint"',
        '2:2: unrecognized block name "queue"; supported blocks: endpoint, rule',
    ]
    assert errors("b {\n\tx {\n\t}\n}\n", Schema([])) == [
        '2:2: unrecognized block name "x"; this block takes no blocks'
    ]


def test_grouped_blocks_keep_source_order_across_names() -> None:
    stage = Schema([Attr("source", "string")])
    process = Schema(
        [Attr("forward_to", "list(capsule)")],
        [
            BlockSpec("stage.json", stage, group="stages"),
            BlockSpec("stage.labels", stage, group="stages"),
            BlockSpec("stage.drop", stage, group="stages"),
        ],
    )
    src = (
        'loki.process "p" {\n'
        '\tstage.labels {\n\t\tsource = "a"\n\t}\n'
        '\tstage.json {\n\t\tsource = "b"\n\t}\n'
        '\tstage.labels {\n\t\tsource = "c"\n\t}\n'
        "}\n"
    )
    got = decode(src, process)
    assert got["stages"] == [
        ("stage.labels", {"source": "a"}),
        ("stage.json", {"source": "b"}),
        ("stage.labels", {"source": "c"}),
    ]
    assert decode('loki.process "p" {\n}\n', process)["stages"] == []


def test_schema_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown attribute type"):
        Attr("x", "list(strin)")
    with pytest.raises(ValueError, match="both required and defaulted"):
        Attr("x", "string", default="a", required=True)
    assert Attr("x", "string").default is MISSING


def test_decode_a_whole_file_body() -> None:
    file = parse('regex = "a"\n', "f.alloy")
    assert decode_block(file, RULE, Scope())["regex"] == "a"


def test_seed_config_end_to_end() -> None:
    """Parse the seed config, order its components by references, decode each one."""
    from pathlib import Path

    from minilog.config import STDLIB_NAMES, load, references, toposort

    rule = Schema(
        [
            Attr("source_labels", "list(string)", default=[]),
            Attr("regex", "string", default="(.*)"),
            Attr("target_label", "string"),
            Attr("action", "string", default="replace"),
        ]
    )
    schemas = {
        "discovery.docker": Schema(
            [
                Attr("host", "string", required=True),
                Attr("refresh_interval", "duration", default=60.0),
            ]
        ),
        "discovery.relabel": Schema(
            [Attr("targets", "list(map(string))", required=True)],
            [BlockSpec("rule", rule, repeated=True)],
        ),
        "loki.source.docker": Schema(
            [
                Attr("host", "string", required=True),
                Attr("targets", "list(map(string))", required=True),
                Attr("forward_to", "list(capsule)", required=True),
            ]
        ),
        "loki.write": Schema(
            [], [BlockSpec("endpoint", Schema([Attr("url", "string")]), repeated=True)]
        ),
    }
    file = load(Path(__file__).parent / "data" / "valid" / "seed-config.alloy")
    blocks = {b.id: b for b in file.body if isinstance(b, A.Block)}
    graph = {
        cid: [r for r in references(b) if r.path[0] not in STDLIB_NAMES]
        for cid, b in blocks.items()
    }
    order = toposort(graph)
    assert order == [
        "discovery.docker.containers",
        "discovery.relabel.logs",
        "loki.write.endpoint",
        "loki.source.docker.app_logs",
    ]

    class Receiver:
        pass

    fake_exports = {
        "discovery.docker.containers": {
            "targets": [{"__meta_docker_container_name": "/web-gateway"}]
        },
        "discovery.relabel.logs": {"output": [{"service": "web-gateway"}]},
        "loki.write.endpoint": {"receiver": Receiver()},
    }
    scope = Scope()
    decoded = {}
    for cid in order:
        block = blocks[cid]
        decoded[cid] = decode_block(block, schemas[block.full_name], scope)
        if cid in fake_exports:
            scope.set_component(cid, fake_exports[cid])
    assert decoded["discovery.relabel.logs"]["rule"][1] == {
        "source_labels": ["service"],
        "regex": "(web-gateway|order-api|fulfillment-worker)",
        "target_label": None,
        "action": "keep",
    }
    source = decoded["loki.source.docker.app_logs"]
    assert source["targets"] == [{"service": "web-gateway"}]
    assert source["forward_to"] == [fake_exports["loki.write.endpoint"]["receiver"]]
    assert decoded["loki.write.endpoint"]["endpoint"] == [
        {"url": "http://loki:3100/loki/api/v1/push"}
    ]
