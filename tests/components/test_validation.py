"""Argument validation of the supported components, as Alloy v1.18 validates them:
the same problems refused, in Alloy's words, positioned in the config."""

from __future__ import annotations

import pytest

from minilog.agent.graph import build_graph
from minilog.config import parse
from minilog.errors import ConfigError

WRITE = 'loki.write "w" {{\n\tendpoint {{\n\t\turl = "http://127.0.0.1:3100/loki/api/v1/push"\n{}\t}}\n}}\n'


def errors(text: str, *, stability_level: str = "generally-available") -> list[str]:
    try:
        build_graph(parse(text, "c.alloy"), stability_level=stability_level)
    except ConfigError as exc:
        return [f"{d.line}:{d.column}: {d.message}" for d in exc.diagnostics]
    return []


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (
            '\t\tbearer_token = "t"\n\t\tbasic_auth {\n\t\t\tusername = "u"\n\t\t}\n',
            "at most one of basic_auth, authorization, oauth2, bearer_token & "
            "bearer_token_file must be configured",
        ),
        (
            '\t\tbearer_token = "t"\n\t\tbearer_token_file = "/f"\n',
            "at most one of basic_auth, authorization, oauth2, bearer_token & "
            "bearer_token_file must be configured",
        ),
        (
            '\t\tbasic_auth {\n\t\t\tpassword = "p"\n'
            '\t\t\tpassword_file = "/f"\n\t\t}\n',
            "at most one of basic_auth password & password_file must be configured",
        ),
        (
            '\t\ttls_config {\n\t\t\tcert_file = "/c"\n\t\t}\n',
            "exactly one of key_pem or key_file must be configured when a client "
            "certificate is configured",
        ),
        (
            '\t\ttls_config {\n\t\t\tkey_file = "/k"\n\t\t}\n',
            "exactly one of cert_pem or cert_file must be configured when a client "
            "key is configured",
        ),
        (
            '\t\tqueue_config {\n\t\t\tcapacity = "1MiB"\n\t\t}\n',
            "changing queue_config requires stability.level flag to be experimental",
        ),
    ],
)
def test_loki_write_endpoint_checks(endpoint: str, message: str) -> None:
    assert errors(WRITE.format(endpoint)) == [f"2:2: {message}"]


def test_loki_write_duplicate_endpoint_names() -> None:
    text = (
        'loki.write "w" {\n'
        '\tendpoint {\n\t\tname = "a"\n\t\turl = "http://127.0.0.1:1/p"\n\t}\n'
        '\tendpoint {\n\t\tname = "a"\n\t\turl = "http://127.0.0.1:2/p"\n\t}\n'
        "}\n"
    )
    assert errors(text) == [
        "1:1: duplicate endpoint configs are not allowed, found duplicate for name: a"
    ]


def test_loki_source_docker_refresh_interval_in_its_words() -> None:
    text = (
        'loki.source.docker "d" {\n\thost = "unix:///var/run/docker.sock"\n'
        '\ttargets = []\n\tforward_to = []\n\trefresh_interval = "0s"\n}\n'
    )
    assert errors(text) == ['1:1: refresh_interval must be positive, got "0s"']
    discovery = (
        'discovery.docker "d" {\n\thost = "unix:///x"\n'
        '\trefresh_interval = "-1m30s"\n}\n'
    )
    assert errors(discovery) == ["1:1: refresh_interval must be greater than 0"]


@pytest.mark.parametrize("size", ["0", "-1"])
def test_loki_relabel_cache_size_must_be_positive(size: str) -> None:
    text = f'loki.relabel "r" {{\n\tforward_to = []\n\tmax_cache_size = {size}\n}}\n'
    assert errors(text) == ["1:1: must provide a positive size"]


def test_type_errors_point_at_the_element_inside_the_attribute() -> None:
    text = (
        'discovery.relabel "r" {\n'
        '\ttargets = [{a = "1"},\n\t\t"x"]\n'
        "}\n"
        'loki.write "w" {\n'
        '\tendpoint {\n\t\turl = "http://127.0.0.1:1/p"\n\t}\n'
        '\texternal_labels = {a = "1", b = ["2"]}\n'
        "}\n"
    )
    assert errors(text) == [
        '3:3: "x" should be object, got string',
        '9:34: ["2"] should be string, got array',
    ]


def test_a_reference_is_shown_with_the_path_to_the_bad_element() -> None:
    text = (
        'discovery.relabel "a" {\n\ttargets = []\n}\n'
        'discovery.relabel "b" {\n'
        "\ttargets = discovery.relabel.a.rules\n"
        "}\n"
    )
    assert errors(text) == [
        "5:12: discovery.relabel.a.rules should be array, got capsule"
    ]


def test_experimental_stdlib_needs_the_stability_level() -> None:
    text = (
        'discovery.relabel "r" {\n'
        '\ttargets = array.group_by([{a = "1"}], "a", true)[0]["items"]\n'
        "}\n"
    )
    assert errors(text) == [
        "2:12: array.group_by is at stability level experimental, which is below the "
        "minimum allowed stability level generally-available. Use --stability.level "
        "command-line flag to enable experimental features"
    ]
    assert errors(text, stability_level="experimental") == []
