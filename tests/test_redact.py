"""minilog.redact: which configured values are secrets, and how outputs hide them."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import orjson
import pytest

from minilog.agent.logsetup import JsonFormatter, LogfmtFormatter
from minilog.agent.runtime import Agent
from minilog.components import COMPONENT_TYPES
from minilog.config import Block, Scope, Secret, parse
from minilog.errors import ConfigError
from minilog.redact import (
    SECRET_TEXT,
    RedactingFilter,
    Redactor,
    is_secret_name,
    strip_userinfo,
)
from minilog.testing import FakeLoki


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://u:p@h:3100/x", "http://(secret)@h:3100/x"),
        (
            "push to HTTPS://user@host/a failed",
            "push to HTTPS://(secret)@host/a failed",
        ),
        (
            "tcp://a:b@1.2.3.4:2375 and http://c:d@e/f",
            "tcp://(secret)@1.2.3.4:2375 and http://(secret)@e/f",
        ),
        ("http://host/path@v1?x=a@b", "http://host/path@v1?x=a@b"),
        ("mail me: a@b.c", "mail me: a@b.c"),
        ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
    ],
)
def test_strip_userinfo(text: str, expected: str) -> None:
    assert strip_userinfo(text) == expected


def test_credential_names() -> None:
    for name in ("password", "bearer_token", "client_secret", "api_key", "key_pem"):
        assert is_secret_name(name), name
    for name in ("password_file", "bearer_token_file", "key_file", "username", "url"):
        assert not is_secret_name(name), name


ARGS = {
    "endpoint": [
        {
            "url": "http://url%2Duser:url%40pass@127.0.0.1:3100/loki/api/v1/push",
            "headers": {"X-Api-Key": "header-value-1", "X-Other": "plain-2"},
            "bearer_token": Secret("bearer-value-3"),
            "basic_auth": [{"username": "bob", "password": Secret("basic-value-4")}],
            "tenant_id": "tenant-a",
        }
    ],
    "something_token": "named-value-5",
    "nested": {"deep": [Secret("marked-value-6")]},
}
SECRETS = [
    "url-user",
    "url@pass",
    "url%40pass",
    "header-value-1",
    "plain-2",
    "bearer-value-3",
    "basic-value-4",
    "named-value-5",
    "marked-value-6",
    base64.b64encode(b"bob:basic-value-4").decode(),
    base64.b64encode(b"url-user:url@pass").decode(),
]


def test_value_hides_every_kind_of_secret_and_keeps_the_rest() -> None:
    redactor = Redactor()
    shown = redactor.value(ARGS)
    text = orjson.dumps(shown).decode()
    for secret in SECRETS:
        assert secret not in text, secret
    endpoint = shown["endpoint"][0]
    assert endpoint["url"] == "http://(secret)@127.0.0.1:3100/loki/api/v1/push"
    assert endpoint["headers"] == {"X-Api-Key": SECRET_TEXT, "X-Other": SECRET_TEXT}
    assert endpoint["bearer_token"] == SECRET_TEXT
    assert endpoint["basic_auth"] == [{"username": "bob", "password": SECRET_TEXT}]
    assert endpoint["tenant_id"] == "tenant-a"
    assert shown["something_token"] == SECRET_TEXT
    assert shown["nested"] == {"deep": [SECRET_TEXT]}


def test_learned_secrets_are_hidden_inside_any_text() -> None:
    redactor = Redactor()
    redactor.learn(ARGS)
    # A component copied the secrets into plain strings (an endpoint config, an error).
    leaked = {"debug": [f"token {s} and more" for s in SECRETS]}
    text = orjson.dumps(redactor.value(leaked)).decode()
    for secret in SECRETS:
        assert secret not in text, secret
    assert text.count(SECRET_TEXT) >= len(SECRETS)
    assert redactor.text("tenant-a bob") == "tenant-a bob"


def test_short_secrets_are_hidden_as_whole_values_only() -> None:
    redactor = Redactor()
    redactor.learn({"password": Secret("ab")})
    assert redactor.text("ab") == SECRET_TEXT
    assert redactor.text("tab stop") == "tab stop"


def test_capsules_show_their_repr() -> None:
    class Receiver:
        def __repr__(self) -> str:
            return "<receiver of loki.write.x>"

    assert Redactor().value({"forward_to": [Receiver()]}) == {
        "forward_to": ["<receiver of loki.write.x>"]
    }


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
def test_log_records_hide_secrets_in_message_extra_and_exception(
    formatter: logging.Formatter,
) -> None:
    redactor = Redactor()
    redactor.learn(ARGS)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("minilog.test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("push to %s failed", "http://u:p4ssword@h/x")
        logger.warning("token is %s", "bearer-value-3", extra={"err": "basic-value-4"})
        try:
            raise RuntimeError("header header-value-1 refused")
        except RuntimeError:
            logger.exception("request failed")
        logger.info("nothing secret here", extra={"n": 5})
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    for secret in [*SECRETS, "p4ssword"]:
        assert secret not in out, out
    assert out.count(SECRET_TEXT) == 4
    assert "nothing secret here" in out and "5" in out


async def test_agent_components_info_shows_no_configured_secret(tmp_path: Path) -> None:
    async with FakeLoki() as loki:
        url = loki.push_url.replace("http://", "http://agentuser:agent-url-pass@")
        config = tmp_path / "c.alloy"
        config.write_text(
            f"""
loki.write "a" {{
  endpoint {{
    url     = "{url}"
    headers = {{ "X-Scope-Key" = "agent-header-value" }}
  }}
  endpoint {{
    name = "b"
    url  = "{loki.push_url}"
    basic_auth {{
      username = "bob"
      password = "agent-basic-pass"
    }}
  }}
}}
"""
        )
        agent = Agent(config, storage_path=tmp_path / "data")
        await agent.start()
        try:
            info = agent.components_info()
        finally:
            await agent.aclose()
    text = orjson.dumps(info).decode()
    for secret in (
        "agentuser",
        "agent-url-pass",
        "agent-header-value",
        "agent-basic-pass",
    ):
        assert secret not in text, secret
    (write,) = info
    endpoints = write["arguments"]["endpoint"]
    assert endpoints[0]["url"].startswith("http://(secret)@127.0.0.1:")
    assert endpoints[0]["headers"] == {"X-Scope-Key": SECRET_TEXT}
    assert endpoints[1]["basic_auth"] == {
        "username": "bob",
        "password": SECRET_TEXT,
        "password_file": "",
    }
    assert write["exports"] == {"receiver": "<receiver of loki.write.a>"}
    # The writer's own debug view copied the URL: no userinfo there either.
    shown_url = write["debug_info"]["endpoints"][0]["url"]
    assert "127.0.0.1:" in shown_url and "agent" not in shown_url


def test_a_bad_docker_host_diagnostic_shows_no_userinfo() -> None:
    # Diagnostics are printed, not logged: the message itself must be clean.
    block = parse('discovery.docker "x" {\n  host = "ftp://u:pw-Hx91@h:1"\n}\n').body[0]
    assert isinstance(block, Block)
    cls = COMPONENT_TYPES["discovery.docker"]
    with pytest.raises(ConfigError) as caught:
        cls.parse_args(cls.decode(block, Scope()), block)
    assert "unsupported Docker host 'ftp://(secret)@h:1'" in str(caught.value)
    assert "pw-Hx91" not in str(caught.value)
