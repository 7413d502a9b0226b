"""LokiPusher (headers, auth, status mapping, transport errors) and dskit Backoff."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_helpers import free_port
from aiohttp import web

import minilog
from minilog.errors import (
    ClientRequestError,
    ClosedError,
    ConfigError,
    PushConnectionError,
    RateLimitedError,
    ServerError,
)
from minilog.loki.push import (
    BasicAuth,
    LokiPusher,
    TLSConfig,
    default_user_agent,
    error_for_status,
)


class Stub:
    """A one-route server that records requests and answers what it is told."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.body = b""
        self.release = asyncio.Event()
        self.release.set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        await self.release.wait()
        return web.Response(status=self.status, body=self.body)


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    server = Stub()
    app = web.Application()
    app.router.add_post("/loki/api/v1/push", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/loki/api/v1/push"
    yield server
    server.release.set()
    await runner.cleanup()


async def test_push_sends_body_and_protocol_headers(stub: Stub) -> None:
    pusher = LokiPusher(
        stub.url, headers={"X-Extra": "1", "Content-Type": "text/plain"}
    )
    try:
        assert await pusher.push(b"\x00body", tenant="team-a") == 204
        assert await pusher.push(b"again") == 204
    finally:
        await pusher.aclose()
    (headers, body), (headers2, _) = stub.requests
    assert body == b"\x00body"
    assert headers["Content-Type"] == "application/x-protobuf"  # not overridden
    assert headers["Content-Encoding"] == "snappy"
    assert headers["User-Agent"] == default_user_agent()
    assert headers["User-Agent"] == f"minilog/{minilog.__version__}"
    assert headers["X-Extra"] == "1"
    assert headers["X-Scope-OrgID"] == "team-a"
    assert "X-Scope-OrgID" not in headers2
    assert "Authorization" not in headers


async def test_basic_auth_from_password_file(stub: Stub, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    pusher = LokiPusher(
        stub.url, basic_auth=BasicAuth("user", password_file=str(secret))
    )
    try:
        await pusher.push(b"x")
        secret.write_text("rotated")
        await pusher.push(b"x")
    finally:
        await pusher.aclose()
    assert (
        stub.requests[0][0]["Authorization"] == "Basic dXNlcjpzM2NyZXQ="
    )  # user:s3cret
    assert (
        stub.requests[1][0]["Authorization"] == "Basic dXNlcjpyb3RhdGVk"
    )  # user:rotated


async def test_bearer_token_and_token_file(stub: Stub, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    for pusher in (
        LokiPusher(stub.url, bearer_token="inline"),
        LokiPusher(stub.url, bearer_token_file=str(token_file)),
    ):
        try:
            await pusher.push(b"x")
        finally:
            await pusher.aclose()
    assert [h["Authorization"] for h, _ in stub.requests] == [
        "Bearer inline",
        "Bearer from-file",
    ]


def test_only_one_credential_kind_is_allowed() -> None:
    with pytest.raises(ConfigError, match="at most one"):
        LokiPusher(
            "http://127.0.0.1:1/x", bearer_token="a", basic_auth=BasicAuth("u", "p")
        )
    with pytest.raises(ConfigError):
        LokiPusher("ftp://loki/x")
    with pytest.raises(ConfigError, match="tls_config"):
        LokiPusher(
            "https://loki/x", tls_config=TLSConfig(ca_file="/nonexistent/ca.pem")
        )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, RateLimitedError),
        (500, ServerError),
        (503, ServerError),
        (400, ClientRequestError),
        (401, ClientRequestError),
        (413, ClientRequestError),
    ],
)
async def test_status_maps_to_error(
    stub: Stub, status: int, error: type[Exception]
) -> None:
    stub.status = status
    stub.body = b"first line of the reason\nsecond line\n"
    pusher = LokiPusher(stub.url)
    try:
        with pytest.raises(error) as info:
            await pusher.push(b"x")
    finally:
        await pusher.aclose()
    assert info.value.status == status  # type: ignore[attr-defined]
    assert info.value.body == "first line of the reason"  # type: ignore[attr-defined]
    assert str(status) in str(info.value)


async def test_any_2xx_is_success(stub: Stub) -> None:
    stub.status = (
        260  # Loki's "ingestion blocked" code is a 2xx clients treat as success
    )
    pusher = LokiPusher(stub.url)
    try:
        assert await pusher.push(b"x") == 260
    finally:
        await pusher.aclose()


def test_error_body_is_cut_to_1024_bytes() -> None:
    error = error_for_status(400, b"y" * 5000)
    assert isinstance(error, ClientRequestError)
    assert error.body == "y" * 1024
    assert not error.retriable
    assert error_for_status(502, b"").retriable
    assert error_for_status(302, b"moved").retriable is False


async def test_connection_refused_is_a_connection_error() -> None:
    pusher = LokiPusher(f"http://127.0.0.1:{free_port()}/loki/api/v1/push")
    try:
        with pytest.raises(PushConnectionError) as info:
            await pusher.push(b"x")
    finally:
        await pusher.aclose()
    assert info.value.retriable
    assert info.value.status is None


async def test_remote_timeout_is_a_connection_error(stub: Stub) -> None:
    stub.release.clear()  # the server never answers
    pusher = LokiPusher(stub.url, remote_timeout=0.2)
    try:
        with pytest.raises(PushConnectionError):
            await pusher.push(b"x")
    finally:
        await pusher.aclose()


async def test_push_after_close_raises_closed(stub: Stub) -> None:
    pusher = LokiPusher(stub.url)
    await pusher.aclose()
    await pusher.aclose()
    with pytest.raises(ClosedError):
        await pusher.push(b"x")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server cert for ``loki.test`` and a client cert (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    new_key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"]
    _openssl("req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem",
             "-subj", "/CN=minilog-test-ca", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=DNS:loki.test\n")
    for name in ("server", "client"):
        _openssl("req", *new_key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
                 "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem",
                 "-days", "2", "-extfile", "san.cnf", cwd=d)  # fmt: skip
    return d


@pytest.fixture
async def tls_stub(pki: Path) -> AsyncIterator[Stub]:
    server = Stub()
    app = web.Application()
    app.router.add_post("/loki/api/v1/push", server.handle)
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem")
    )
    context.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the client must show its cert
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    server.url = f"https://127.0.0.1:{runner.addresses[0][1]}/loki/api/v1/push"
    yield server
    await runner.cleanup()


async def test_tls_with_ca_server_name_and_client_cert(
    tls_stub: Stub, pki: Path
) -> None:
    tls = TLSConfig(
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "client.pem"),
        key_file=str(pki / "client.key"),
        server_name="loki.test",
    )
    pusher = LokiPusher(tls_stub.url, tls_config=tls)
    try:
        assert await pusher.push(b"secure") == 204
    finally:
        await pusher.aclose()
    assert tls_stub.requests[0][1] == b"secure"


async def test_tls_verification_failures_and_insecure_skip_verify(
    tls_stub: Stub, pki: Path
) -> None:
    client = {"cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key")}
    untrusted = LokiPusher(
        tls_stub.url, tls_config=TLSConfig(server_name="loki.test", **client)
    )
    wrong_name = LokiPusher(
        tls_stub.url,
        tls_config=TLSConfig(
            ca_file=str(pki / "ca.pem"), server_name="other.test", **client
        ),
    )
    insecure = LokiPusher(
        tls_stub.url, tls_config=TLSConfig(insecure_skip_verify=True, **client)
    )
    try:
        with pytest.raises(PushConnectionError):
            await untrusted.push(b"x")
        with pytest.raises(PushConnectionError):
            await wrong_name.push(b"x")
        assert await insecure.push(b"x") == 204
    finally:
        for pusher in (untrusted, wrong_name, insecure):
            await pusher.aclose()
    assert len(tls_stub.requests) == 1
