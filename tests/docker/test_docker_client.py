"""DockerClient: negotiation, JSON calls, events, raw log streams, error mapping.

A recorded-data fake Engine (aiohttp on 127.0.0.1 or a unix socket) pins the wire
behaviour; the real daemon checks it against the docker SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from minilog.docker.client import DockerClient, DockerTLS, parse_host, unavailable_error
from minilog.errors import ClosedError, ConfigError, DockerError, DockerUnavailableError

DATA = Path(__file__).resolve().parents[1] / "data" / "docker"
MIXED_ID = "2f7ff8409f41189702ee498e0a299b896c9b8c32c30e5c95df86aca18df5364f"


class FakeEngine:
    """Serves the recorded files the way dockerd does, recording each request."""

    def __init__(self, api_version: str = "1.41") -> None:
        self.api_version = api_version
        self.requests: list[web.Request] = []
        app = web.Application()
        app.router.add_get("/version", self.version)
        app.router.add_get("/_ping", self.ping)
        app.router.add_get("/{v}/containers/json", self.containers)
        app.router.add_get("/{v}/containers/{id}/json", self.inspect)
        app.router.add_get("/{v}/containers/{id}/logs", self.logs)
        app.router.add_get("/{v}/networks", self.networks)
        app.router.add_get("/{v}/events", self.events)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def start_tcp(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"tcp://127.0.0.1:{port}"
        return self.url

    async def start_unix(self, path: Path) -> str:
        await self.runner.setup()
        await web.UnixSite(self.runner, str(path)).start()
        self.url = f"unix://{path}"
        return self.url

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def version(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        body = json.loads((DATA / "version.json").read_text())
        body["ApiVersion"] = self.api_version
        return web.json_response(body)

    async def ping(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        return web.Response(text="OK")

    async def containers(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        return web.Response(
            body=(DATA / "containers-list.json").read_bytes(),
            content_type="application/json",
        )

    async def networks(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        return web.Response(
            body=(DATA / "networks.json").read_bytes(), content_type="application/json"
        )

    async def inspect(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        cid = request.match_info["id"]
        if cid == "broken":
            return web.Response(status=500, text="plain text failure")
        if cid != MIXED_ID:
            return web.json_response(
                {"message": f"No such container: {cid}"}, status=404
            )
        return web.Response(
            body=(DATA / "inspect-mixed.json").read_bytes(),
            content_type="application/json",
        )

    async def logs(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        if request.match_info["id"] != MIXED_ID:
            return web.json_response({"message": "No such container: x"}, status=404)
        data = (DATA / "mixed-logs-timestamps.bin").read_bytes()
        resp = web.StreamResponse()
        resp.content_type = "application/vnd.docker.raw-stream"
        await resp.prepare(request)
        # Odd-sized pieces, so frame and line boundaries fall inside writes.
        for i in range(0, len(data), 4093):
            await resp.write(data[i : i + 4093])
        return resp

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        data = (DATA / "events.jsonl").read_bytes()
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for i in range(0, len(data), 777):
            await resp.write(data[i : i + 777])
        return resp

    async def aclose(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start_tcp()
    try:
        yield fake
    finally:
        await fake.aclose()


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[DockerClient]:
    c = DockerClient(engine.url)
    try:
        yield c
    finally:
        await c.aclose()


def recorded_events() -> list[dict[str, Any]]:
    lines = (DATA / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# -- against the fake Engine -----------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "expected"),
    [("1.41", "1.41"), ("1.45", "1.45"), ("1.47", "1.45"), ("1.100", "1.45")],
)
async def test_negotiates_the_lower_of_server_and_own_max(
    server: str, expected: str
) -> None:
    fake = FakeEngine(api_version=server)
    await fake.start_tcp()
    try:
        async with DockerClient(fake.url) as c:
            await c.containers()
            await c.networks()
            assert c.api_version == expected
    finally:
        await fake.aclose()
    assert fake.paths() == [
        "/version",
        f"/v{expected}/containers/json",
        f"/v{expected}/networks",
    ]


async def test_explicit_api_version_skips_negotiation(engine: FakeEngine) -> None:
    async with DockerClient(engine.url, api_version="1.40") as c:
        await c.networks()
    assert engine.paths() == ["/v1.40/networks"]


async def test_concurrent_first_calls_negotiate_once(client: DockerClient) -> None:
    engine_paths = await asyncio.gather(client.networks(), client.containers())
    assert len(engine_paths) == 2
    assert client.api_version == "1.41"


async def test_containers_sends_all_and_filters_as_docker_json(
    client: DockerClient, engine: FakeEngine
) -> None:
    listed = await client.containers(
        all=True, filters={"label": ["a=1", "b"], "status": ["exited"]}
    )
    assert [c["Names"][0] for c in listed][:2] == ["/fx-labels", "/fx-tty"]
    query = engine.requests[-1].query
    assert query["all"] == "1"
    assert json.loads(query["filters"]) == {
        "label": {"a=1": True, "b": True},
        "status": {"exited": True},
    }
    await client.containers()
    assert engine.requests[-1].query["all"] == "0"
    assert "filters" not in engine.requests[-1].query


async def test_inspect_returns_the_object(client: DockerClient) -> None:
    info = await client.inspect(MIXED_ID)
    assert info["Id"] == MIXED_ID
    assert info["Config"]["Tty"] is False


async def test_http_errors_carry_dockers_message_and_status(
    client: DockerClient,
) -> None:
    with pytest.raises(DockerError) as missing:
        await client.inspect("nope")
    assert missing.value.status == 404
    assert str(missing.value) == "No such container: nope"
    assert not isinstance(missing.value, DockerUnavailableError)
    with pytest.raises(DockerError) as broken:
        await client.inspect("broken")
    assert broken.value.status == 500
    assert str(broken.value) == "plain text failure"


async def test_ping_and_version(client: DockerClient) -> None:
    assert await client.ping() is True
    assert (await client.version())["Version"] == "20.10.24+dfsg1"


async def test_events_yield_every_recorded_event_across_chunk_boundaries(
    client: DockerClient, engine: FakeEngine
) -> None:
    got = [
        e
        async for e in client.events(
            filters={"type": ["container"]}, since="1795753221.000000000"
        )
    ]
    assert got == recorded_events()
    query = engine.requests[-1].query
    assert json.loads(query["filters"]) == {"type": {"container": True}}
    assert query["since"] == "1795753221.000000000"


async def test_logs_over_tcp_are_the_exact_bytes_via_http_1_0(
    client: DockerClient, engine: FakeEngine
) -> None:
    chunks = [
        c
        async for c in client.logs(
            MIXED_ID, follow=True, since="1795753221", tail="100"
        )
    ]
    assert b"".join(chunks) == (DATA / "mixed-logs-timestamps.bin").read_bytes()
    request = engine.requests[-1]
    assert request.version == (1, 0)  # no chunked encoding to undo per line
    assert request.path == f"/v1.41/containers/{MIXED_ID}/logs"
    assert dict(request.query) == {
        "follow": "1",
        "stdout": "1",
        "stderr": "1",
        "timestamps": "1",
        "since": "1795753221",
        "tail": "100",
    }


async def test_logs_over_a_unix_socket(tmp_path: Path) -> None:
    fake = FakeEngine()
    await fake.start_unix(tmp_path / "docker.sock")
    try:
        async with DockerClient(fake.url) as c:
            chunks = [
                x
                async for x in c.logs(
                    MIXED_ID, follow=False, stderr=False, timestamps=False
                )
            ]
    finally:
        await fake.aclose()
    assert b"".join(chunks) == (DATA / "mixed-logs-timestamps.bin").read_bytes()
    query = fake.requests[-1].query
    assert (query["follow"], query["stderr"], query["timestamps"]) == ("0", "0", "0")


async def test_logs_of_a_missing_container_raise_404(client: DockerClient) -> None:
    with pytest.raises(DockerError) as info:
        async for _ in client.logs("nope", follow=True):
            pass
    assert info.value.status == 404
    assert "No such container" in str(info.value)


async def test_closing_a_log_stream_early_closes_the_connection(
    client: DockerClient,
) -> None:
    stream = client.logs(MIXED_ID, follow=True)
    first = await anext(stream)
    assert first
    await stream.aclose()


async def test_docker_host_environment_variable_is_the_default(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    async with DockerClient() as c:
        assert c.host == engine.url
        assert await c.ping()


async def test_use_after_aclose_raises_closed_error(client: DockerClient) -> None:
    await client.networks()
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(ClosedError):
        await client.networks()
    with pytest.raises(ClosedError):
        async for _ in client.logs(MIXED_ID, follow=False):
            pass


# -- unreachable daemons ---------------------------------------------------------------


async def test_missing_socket_is_unavailable_with_the_path_and_what_to_do(
    tmp_path: Path,
) -> None:
    path = tmp_path / "absent.sock"
    async with DockerClient(f"unix://{path}") as c:
        with pytest.raises(DockerUnavailableError) as info:
            await c.containers()
        with pytest.raises(DockerUnavailableError) as from_logs:
            async for _ in c.logs("x", follow=True):
                pass
    for message in (str(info.value), str(from_logs.value)):
        assert str(path) in message
        assert "mount /var/run/docker.sock into the container" in message
        assert "is dockerd running?" in message


async def test_client_recovers_when_the_daemon_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    first = FakeEngine()
    async with DockerClient(await first.start_unix(path)) as c:
        assert len(await c.networks()) == 3
        await first.aclose()
        path.unlink(missing_ok=True)
        with pytest.raises(DockerUnavailableError, match=str(path)):
            await c.networks()
        second = FakeEngine()
        await second.start_unix(path)
        try:
            assert len(await c.networks()) == 3
            chunks = [x async for x in c.logs(MIXED_ID, follow=False)]
            assert b"".join(chunks) == (DATA / "mixed-logs-timestamps.bin").read_bytes()
        finally:
            await second.aclose()


async def test_refused_socket_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))  # bound but never listening: connect() is refused
    try:
        async with DockerClient(f"unix://{path}") as c:
            with pytest.raises(DockerUnavailableError) as info:
                await c.ping()
    finally:
        listener.close()
    assert f"connection refused on Docker socket {path}" in str(info.value)


async def test_refused_tcp_port_is_unavailable() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    async with DockerClient(f"tcp://127.0.0.1:{port}") as c:
        with pytest.raises(DockerUnavailableError) as info:
            await c.version()
        with pytest.raises(DockerUnavailableError) as from_logs:
            async for _ in c.logs("x", follow=True):
                pass
    assert f"127.0.0.1:{port}" in str(info.value)
    assert f"127.0.0.1:{port}" in str(from_logs.value)


def test_permission_denied_names_the_user_and_the_group(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"
    sock.touch()
    endpoint = parse_host(f"unix://{sock}", None)
    message = str(
        unavailable_error(endpoint, PermissionError(errno.EACCES, "Permission denied"))
    )
    assert f"permission denied on Docker socket {sock}" in message
    assert f"uid {os.geteuid()}" in message
    assert "add the user to the socket's group" in message


# -- host parsing and TLS --------------------------------------------------------------


def test_host_schemes_map_to_urls(tmp_path: Path) -> None:
    assert (
        parse_host("unix:///var/run/docker.sock", None).unix_path
        == "/var/run/docker.sock"
    )
    assert parse_host("tcp://10.0.0.1", None).base_url == "http://10.0.0.1:2375"
    assert parse_host("http://h:8080/prefix/", None).base_url == "http://h:8080/prefix"
    tls = parse_host("tcp://h", DockerTLS(verify=False))
    assert tls.base_url == "https://h:2376"
    assert tls.ssl is not None
    assert parse_host("https://[::1]:9999", None).base_url == "https://[::1]:9999"
    for bad in ("npipe:////./pipe/docker_engine", "unix://", "tcp://", "ftp://x"):
        with pytest.raises(ConfigError):
            parse_host(bad, None)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    args = [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
    ]
    args += [
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    subprocess.run(
        ["openssl", *args],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_host_with_tls_for_json_and_logs(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    fake = FakeEngine()
    await fake.runner.setup()
    site = web.TCPSite(fake.runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    url = f"https://127.0.0.1:{fake.runner.addresses[0][1]}"
    try:
        async with DockerClient(url, tls=DockerTLS(ca_file=str(cert))) as c:
            assert len(await c.networks()) == 3
            chunks = [x async for x in c.logs(MIXED_ID, follow=True)]
            assert b"".join(chunks) == (DATA / "mixed-logs-timestamps.bin").read_bytes()
        async with DockerClient(url) as untrusted:  # system CAs do not know this cert
            with pytest.raises(DockerUnavailableError, match="certificate"):
                await untrusted.networks()
    finally:
        await fake.aclose()


def test_tls_from_env_follows_the_docker_cli(tmp_path: Path) -> None:
    assert DockerTLS.from_env({}) is None
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "cert.pem").write_text("x")
    tls = DockerTLS.from_env(
        {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    )
    assert tls == DockerTLS(
        ca_file=str(tmp_path / "ca.pem"),
        cert_file=str(tmp_path / "cert.pem"),
        key_file=None,
    )


# -- against the real daemon -----------------------------------------------------------


def demux(raw: bytes) -> bytes:
    """The payloads of Docker's 8-byte-header frames, concatenated."""
    out, i = [], 0
    while i < len(raw):
        _, size = struct.unpack_from(">BxxxL", raw, i)
        out.append(raw[i + 8 : i + 8 + size])
        i += 8 + size
    assert i == len(raw)
    return b"".join(out)


@pytest.fixture
async def real() -> AsyncIterator[DockerClient]:
    c = DockerClient()
    try:
        yield c
    finally:
        await c.aclose()


@pytest.mark.docker
async def test_real_daemon_negotiates_its_version(
    docker_client: Any, real: DockerClient
) -> None:
    server = docker_client.version()["ApiVersion"]
    await real.networks()
    expected = min(server, "1.45", key=lambda v: tuple(int(p) for p in v.split(".")))
    assert real.api_version == expected


@pytest.mark.docker
async def test_real_daemon_list_inspect_and_404(
    docker_containers: Any, real: DockerClient
) -> None:
    box = await asyncio.to_thread(docker_containers, "sleep 30", labels={"k.x": "v"})
    listed = await real.containers(filters={"id": [box.id]})
    assert [c["Id"] for c in listed] == [box.id]
    assert listed[0]["Labels"]["k.x"] == "v"
    info = await real.inspect(box.id)
    assert info["Name"] == f"/{box.name}"
    assert info["State"]["Running"] is True
    with pytest.raises(DockerError) as missing:
        await real.inspect("0" * 64)
    assert missing.value.status == 404
    assert "0" * 64 in str(missing.value)


@pytest.mark.docker
async def test_real_daemon_logs_equal_what_the_sdk_reads(
    docker_containers: Any, real: DockerClient
) -> None:
    script = "seq 1 20000; echo oops >&2; printf 'no newline'"
    box = await asyncio.to_thread(docker_containers, script)
    await asyncio.to_thread(box.wait, timeout=30)
    raw = b"".join([c async for c in real.logs(box.id, follow=True)])
    expected = await asyncio.to_thread(
        box.logs, stdout=True, stderr=True, timestamps=True
    )
    assert demux(raw) == expected
    assert b" oops\n" in raw and raw.endswith(b" no newline")


@pytest.mark.docker
async def test_real_daemon_tty_logs_are_the_raw_stream(
    docker_containers: Any, real: DockerClient
) -> None:
    box = await asyncio.to_thread(docker_containers, "echo one; echo two >&2", tty=True)
    await asyncio.to_thread(box.wait, timeout=30)
    raw = b"".join([c async for c in real.logs(box.id, follow=False, timestamps=False)])
    expected = await asyncio.to_thread(box.logs, stdout=True, stderr=True)
    assert raw == expected == b"one\r\ntwo\r\n"


@pytest.mark.docker
async def test_real_daemon_follow_streams_lines_as_they_are_written(
    docker_containers: Any, real: DockerClient
) -> None:
    box = await asyncio.to_thread(docker_containers, "echo first; sleep 30")
    async with contextlib.aclosing(real.logs(box.id, follow=True)) as stream:
        async with asyncio.timeout(10):
            first = await anext(stream)
    assert first.endswith(b" first\n")
    assert (await real.inspect(box.id))["State"]["Running"] is True


@pytest.mark.docker
async def test_real_daemon_events_report_a_container_start(
    docker_containers: Any, real: DockerClient
) -> None:
    marker = f"m{os.getpid()}-{time.time_ns()}"
    since = f"{time.time() - 1:.9f}"  # replayed, so starting the stream first is moot
    box = await asyncio.to_thread(
        docker_containers, "sleep 30", labels={"minilog.ev": marker}
    )
    filters = {"type": ["container"], "label": [f"minilog.ev={marker}"]}
    async with contextlib.aclosing(real.events(filters=filters, since=since)) as stream:
        async with asyncio.timeout(10):
            event = await anext(stream)
            while event["Action"] != "start":
                event = await anext(stream)
    assert event["Type"] == "container"
    assert event["Actor"]["ID"] == box.id
    assert event["Actor"]["Attributes"]["minilog.ev"] == marker


@pytest.mark.docker
async def test_real_daemon_filter_semantics(
    docker_containers: Any, real: DockerClient
) -> None:
    tag = f"t{time.time_ns()}"
    one = await asyncio.to_thread(docker_containers, "sleep 30", labels={"mf": tag})
    two = await asyncio.to_thread(
        docker_containers, "sleep 30", labels={"mf": tag, "extra": "1"}
    )
    done = await asyncio.to_thread(docker_containers, "true", labels={"mf": tag})
    await asyncio.to_thread(done.wait, timeout=10)
    # Values of one name are ORed (name, id, status, ...)...
    names = await real.containers(filters={"name": [one.name, two.name, done.name]})
    assert {c["Id"] for c in names} == {one.id, two.id}  # running only
    # ...except label values, which Docker ANDs (every key=value must be present).
    labelled = await real.containers(filters={"label": [f"mf={tag}", "extra"]})
    assert [c["Id"] for c in labelled] == [two.id]
    # Different names are ANDed.
    both = await real.containers(filters={"label": [f"mf={tag}"], "name": [one.name]})
    assert [c["Id"] for c in both] == [one.id]
    # A status filter lists stopped containers without all=1.
    exited = await real.containers(
        filters={"label": [f"mf={tag}"], "status": ["exited"]}
    )
    assert [c["Id"] for c in exited] == [done.id]
