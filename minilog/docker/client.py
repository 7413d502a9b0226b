"""The async Docker Engine API client: the only module that talks to dockerd.

Owns host parsing (``unix://``, ``tcp://``, ``http(s)://`` + TLS), API version
negotiation, JSON calls through aiohttp, the log stream as a raw HTTP/1.0 request over a
socket (the per-line hot path), and the mapping of transport failures to our errors.
It does not interpret log frames (``frames``) or build targets (``discovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import pwd
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson

from minilog.errors import ClosedError, ConfigError, DockerError, DockerUnavailableError

__all__ = [
    "DEFAULT_HOST",
    "MAX_API_VERSION",
    "DockerClient",
    "DockerEndpoint",
    "DockerTLS",
    "encode_filters",
    "parse_host",
    "since_arg",
    "unavailable_error",
]

DEFAULT_HOST: Final = "unix:///var/run/docker.sock"
#: The newest API version minilog speaks; a newer daemon is addressed at this version.
MAX_API_VERSION: Final = "1.45"

#: One read from the log socket. Large reads amortise the per-read cost over many lines
#: (performance-notes.md: 115-131k lines/s against 89k with aiohttp's chunked iterator).
_LOG_READ_SIZE: Final = 256 * 1024
_MAX_HEADER_BYTES: Final = 64 * 1024
_USER_AGENT: Final = "minilog"

JSONDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DockerTLS:
    """TLS material for an ``https://`` (or ``tcp://`` with TLS) Docker host.

    Args:
        ca_file: CA bundle that signed the daemon's certificate (default: system CAs).
        cert_file, key_file: client certificate and key (daemons with ``--tlsverify``).
        verify: check the daemon's certificate and host name.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DockerTLS | None:
        """The docker CLI's convention: a non-empty ``DOCKER_TLS_VERIFY`` turns TLS on,
        with ``ca.pem``, ``cert.pem``, ``key.pem`` from ``DOCKER_CERT_PATH``
        (default ``~/.docker``)."""
        env = os.environ if env is None else env
        if not env.get("DOCKER_TLS_VERIFY"):
            return None
        cert_path = env.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")

        def existing(name: str) -> str | None:
            path = os.path.join(cert_path, name)
            return path if os.path.exists(path) else None

        return cls(
            ca_file=existing("ca.pem"),
            cert_file=existing("cert.pem"),
            key_file=existing("key.pem"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass(frozen=True, slots=True)
class DockerEndpoint:
    """Where the daemon is: a unix socket path, or host:port (+ TLS) and a base URL."""

    url: str  # as given, for messages
    unix_path: str | None
    host: str
    port: int
    base_url: str  # scheme://authority[/path prefix], no trailing slash
    ssl: ssl.SSLContext | None


def parse_host(host: str, tls: DockerTLS | None) -> DockerEndpoint:
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        if not path:
            raise ConfigError(f"Docker host {host!r} has no socket path")
        return DockerEndpoint(host, path, "docker", 0, "http://docker", None)
    parts = urlsplit(host)
    scheme = parts.scheme
    if scheme == "tcp":
        # Like the docker CLI: tcp:// means plain HTTP unless TLS is configured.
        scheme = "https" if tls is not None else "http"
        default_port = 2376 if tls is not None else 2375
    elif scheme in ("http", "https"):
        default_port = 443 if scheme == "https" else 80
    else:
        raise ConfigError(
            f"unsupported Docker host {host!r}: use unix://, tcp://, http:// or https://"
        )
    if not parts.hostname:
        raise ConfigError(f"Docker host {host!r} has no host name")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(f"Docker host {host!r}: {exc}") from exc
    hostname = parts.hostname
    authority = f"[{hostname}]:{port}" if ":" in hostname else f"{hostname}:{port}"
    base_url = f"{scheme}://{authority}{parts.path.rstrip('/')}"
    ssl_ctx = None
    if scheme == "https":
        ssl_ctx = (tls or DockerTLS()).ssl_context()
    return DockerEndpoint(host, None, hostname, port, base_url, ssl_ctx)


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def encode_filters(filters: Mapping[str, Sequence[str]]) -> str:
    """Docker's ``filters`` query value: ``{"name": {"value": true}}``.

    That is moby's own wire form, accepted by every API version. Docker ORs the values
    of one name, except ``label`` (every ``key`` / ``key=value`` must match), and ANDs
    the names."""
    return orjson.dumps(
        {name: dict.fromkeys(values, True) for name, values in filters.items()}
    ).decode()


def since_arg(ts_ns: int) -> str | None:
    """A Unix-nanosecond time as the ``since`` argument of ``/logs`` and ``/events``;
    ``None`` for none (0 or less).

    Docker parses ``seconds.nanoseconds`` (moby ``timetypes.ParseTimestamps``) and its
    filter keeps records whose timestamp is not before it: inclusive at nanosecond
    precision.
    """
    if ts_ns <= 0:
        return None
    return f"{ts_ns // 1_000_000_000}.{ts_ns % 1_000_000_000:09d}"


def _error_message(body: bytes, status: int) -> str:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"])
    text = body.decode("utf-8", "replace").strip()
    return text or f"Docker Engine API answered HTTP {status}"


def _user_description() -> str:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"user {name} (uid {uid})"


def _socket_group(path: str) -> str:
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return "docker"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def unavailable_error(
    endpoint: DockerEndpoint, exc: BaseException
) -> DockerUnavailableError:
    """One actionable message per cause: which address, which user, what to do."""
    code = exc.errno if isinstance(exc, OSError) else None
    if endpoint.unix_path is not None:
        path = endpoint.unix_path
        if code == errno.ENOENT:
            msg = (
                f"Docker socket {path} does not exist: is dockerd running? If minilog "
                f"runs in a container, mount /var/run/docker.sock into the container "
                f"(-v /var/run/docker.sock:/var/run/docker.sock:ro), or set DOCKER_HOST"
            )
        elif code in (errno.EACCES, errno.EPERM):
            msg = (
                f"permission denied on Docker socket {path} for {_user_description()}: "
                f"add the user to the socket's group ({_socket_group(path)}), "
                f"or run as root"
            )
        elif code == errno.ECONNREFUSED:
            msg = f"connection refused on Docker socket {path}: is dockerd running?"
        else:
            msg = (
                f"cannot reach Docker at {endpoint.url}: {_describe(exc)}: "
                f"is dockerd running?"
            )
    else:
        where = f"{endpoint.host}:{endpoint.port}"
        msg = (
            f"cannot reach Docker at {endpoint.url} ({where}): {_describe(exc)}: "
            f"is dockerd running and listening there? (check DOCKER_HOST or the host "
            f"argument)"
        )
    return DockerUnavailableError(msg)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class DockerClient:
    """Async client for the Docker Engine API.

    Args:
        host: daemon address; default ``DOCKER_HOST``, else ``unix:///var/run/docker.sock``.
        tls: TLS material for ``https://`` hosts (and ``tcp://`` hosts, which it turns
            into HTTPS). When both ``host`` and ``tls`` are ``None``,
            ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` apply as in the docker CLI.
        api_version: skip negotiation and use this version (e.g. ``"1.41"``).
        timeout_s: total timeout of one non-streaming request.
        connect_timeout_s: connect timeout of every request, streams included
            (streams have no total timeout: a followed log stream lives as long as its
            container).

    Errors: an HTTP error status raises ``DockerError(message, status=...)`` with
    Docker's own message (404 for a missing container); a daemon that cannot be reached
    raises ``DockerUnavailableError``; use after :meth:`aclose` raises ``ClosedError``.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        tls: DockerTLS | None = None,
        api_version: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if host is None:
            host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
            if tls is None:
                tls = DockerTLS.from_env()
        self._endpoint = parse_host(host, tls)
        self._api_version = api_version
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=connect_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=None
        )
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._negotiate_lock: asyncio.Lock | None = None
        self._closed = False

    @property
    def host(self) -> str:
        """The daemon address as configured."""
        return self._endpoint.url

    @property
    def api_version(self) -> str | None:
        """The API version in use, once negotiated (or as given)."""
        return self._api_version

    # -- plumbing ------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClosedError("DockerClient is closed")
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self._endpoint.unix_path is not None:
                connector = aiohttp.UnixConnector(path=self._endpoint.unix_path)
            else:
                connector = aiohttp.TCPConnector(ssl=self._endpoint.ssl or False)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": _USER_AGENT}
            )
        return self._session

    async def _prefix(self) -> str:
        if self._api_version is None:
            if self._negotiate_lock is None:
                self._negotiate_lock = asyncio.Lock()
            async with self._negotiate_lock:
                if self._api_version is None:
                    info = await self.version()
                    server = str(info.get("ApiVersion") or MAX_API_VERSION)
                    if _version_tuple(server) > _version_tuple(MAX_API_VERSION):
                        server = MAX_API_VERSION
                    self._api_version = server
        return f"/v{self._api_version}"

    @contextlib.asynccontextmanager
    async def _response(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        versioned: bool = True,
        stream: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        session = self._get_session()
        prefix = await self._prefix() if versioned else ""
        url = f"{self._endpoint.base_url}{prefix}{path}"
        timeout = self._stream_timeout if stream else self._timeout
        try:
            async with session.get(url, params=params, timeout=timeout) as resp:
                if resp.status >= 400:
                    body = await resp.read()
                    raise DockerError(
                        _error_message(body, resp.status), status=resp.status
                    )
                yield resp
        except aiohttp.ClientConnectorError as exc:
            raise unavailable_error(self._endpoint, exc.os_error) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DockerUnavailableError(
                f"request to Docker at {self._endpoint.url} failed: {_describe(exc)}"
            ) from exc

    async def _get_json(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        versioned: bool = True,
    ) -> Any:
        async with self._response(path, params, versioned=versioned) as resp:
            body = await resp.read()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DockerError(
                f"Docker answered {path} with invalid JSON: {exc}"
            ) from exc

    # -- API ------------------------------------------------------------

    async def version(self) -> JSONDict:
        """``GET /version`` (unversioned): engine and API versions."""
        result = await self._get_json("/version", versioned=False)
        if not isinstance(result, dict):
            raise DockerError("Docker answered /version with a non-object")
        return result

    async def ping(self) -> bool:
        """``GET /_ping``: true when the daemon answers ``OK``."""
        async with self._response("/_ping", versioned=False) as resp:
            body = await resp.read()
        return body.strip() == b"OK"

    async def containers(
        self, *, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[JSONDict]:
        """``GET /containers/json``: running containers, or all of them with ``all``.

        The daemon lists every container whenever a ``status`` filter is given.
        """
        params = {"all": "1" if all else "0"}
        if filters:
            params["filters"] = encode_filters(filters)
        result = await self._get_json("/containers/json", params)
        return list(result) if isinstance(result, list) else []

    async def inspect(self, container_id: str) -> JSONDict:
        """``GET /containers/{id}/json``; ``DockerError(status=404)`` if it is gone."""
        result = await self._get_json(
            f"/containers/{quote(container_id, safe='')}/json"
        )
        if not isinstance(result, dict):
            raise DockerError("Docker answered an inspect with a non-object")
        return result

    async def networks(self) -> list[JSONDict]:
        """``GET /networks``."""
        result = await self._get_json("/networks")
        return list(result) if isinstance(result, list) else []

    async def events(
        self,
        *,
        filters: Mapping[str, Sequence[str]] | None = None,
        since: str | None = None,
    ) -> AsyncGenerator[JSONDict, None]:
        """``GET /events``: yields events as dicts until the daemon ends the stream.

        ``since`` is Docker's: a Unix timestamp (``"1700000000.123456789"``) replays the
        events from then on before following live ones.
        """
        params: dict[str, str] = {}
        if filters:
            params["filters"] = encode_filters(filters)
        if since is not None:
            params["since"] = since
        async with self._response("/events", params, stream=True) as resp:
            pending = b""
            try:
                async for chunk in resp.content.iter_any():
                    pending += chunk
                    if b"\n" not in pending:
                        continue
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = orjson.loads(line)
                            if isinstance(event, dict):
                                yield event
            except orjson.JSONDecodeError as exc:
                raise DockerError(f"Docker sent an undecodable event: {exc}") from exc

    async def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        stdout: bool = True,
        stderr: bool = True,
        timestamps: bool = True,
        since: str | None = None,
        tail: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """``GET /containers/{id}/logs``: yields the raw body in chunks as they arrive.

        The bytes are Docker's: 8-byte multiplexed frames for a non-TTY container, the
        raw stream for a TTY one. With ``follow`` the stream ends when the container
        stops. Close the generator (``aclose()``, ``contextlib.aclosing``) to drop the
        connection early. A missing container raises ``DockerError(status=404)`` on the
        first iteration.
        """
        params = {
            "follow": "1" if follow else "0",
            "stdout": "1" if stdout else "0",
            "stderr": "1" if stderr else "0",
            "timestamps": "1" if timestamps else "0",
        }
        if since is not None:
            params["since"] = since
        if tail is not None:
            params["tail"] = tail
        path = f"/containers/{quote(container_id, safe='')}/logs"
        if self._endpoint.ssl is not None:
            # TLS cannot use the raw-socket path; aiohttp's stream is the fallback.
            async with self._response(path, params, stream=True) as resp:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                except aiohttp.ClientError as exc:
                    raise DockerUnavailableError(
                        f"log stream from Docker at {self._endpoint.url} failed: "
                        f"{_describe(exc)}"
                    ) from exc
            return
        if self._closed:
            raise ClosedError("DockerClient is closed")
        target = f"{await self._prefix()}{path}?{urlencode(params)}"
        async for chunk in self._raw_stream(target):
            yield chunk

    async def _raw_stream(self, target: str) -> AsyncGenerator[bytes, None]:
        """GET ``target`` as HTTP/1.0 over a plain socket; yield big reads of the body.

        HTTP/1.0 makes dockerd send the body unchunked and close the connection at the
        end, so the body is exactly the bytes up to EOF: no per-chunk parsing per line.
        """
        loop = asyncio.get_running_loop()
        sock = await self._connect_socket()
        try:
            host_header = (
                self._endpoint.host if self._endpoint.unix_path is None else "docker"
            )
            request = (
                f"GET {self._base_path()}{target} HTTP/1.0\r\nHost: {host_header}\r\n"
                f"User-Agent: {_USER_AGENT}\r\nAccept-Encoding: identity\r\n\r\n"
            ).encode("ascii")
            try:
                await loop.sock_sendall(sock, request)
                head, body = await self._read_head(sock)
            except OSError as exc:
                raise unavailable_error(self._endpoint, exc) from exc
            status, headers = _parse_head(head)
            length = headers.get("content-length")
            remaining = int(length) if length is not None and length.isdigit() else -1
            if status >= 400:
                while remaining < 0 or len(body) < remaining:
                    data = await loop.sock_recv(sock, _LOG_READ_SIZE)
                    if not data:
                        break
                    body += data
                raise DockerError(_error_message(body, status), status=status)
            if "chunked" in headers.get("transfer-encoding", ""):
                # An HTTP/1.0 request never gets a chunked reply from dockerd; a proxy
                # in between might do it anyway, and then the bytes would be corrupt.
                raise DockerError("Docker answered the log request with a chunked body")
            while True:
                if body:
                    if remaining >= 0:
                        body = body[:remaining]
                        remaining -= len(body)
                    yield body
                if remaining == 0:
                    return
                try:
                    body = await loop.sock_recv(sock, _LOG_READ_SIZE)
                except OSError as exc:
                    raise DockerUnavailableError(
                        f"log stream from Docker at {self._endpoint.url} failed: "
                        f"{_describe(exc)}"
                    ) from exc
                if not body:
                    return
        finally:
            sock.close()

    def _base_path(self) -> str:
        return urlsplit(self._endpoint.base_url).path

    async def _connect_socket(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        endpoint = self._endpoint
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if endpoint.unix_path is not None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    try:
                        await loop.sock_connect(sock, endpoint.unix_path)
                    except BaseException:
                        sock.close()
                        raise
                    return sock
                infos = await loop.getaddrinfo(
                    endpoint.host, endpoint.port, type=socket.SOCK_STREAM
                )
                last: OSError = OSError(errno.EHOSTUNREACH, "no address")
                for family, type_, proto, _, address in infos:
                    sock = socket.socket(family, type_, proto)
                    sock.setblocking(False)
                    try:
                        await loop.sock_connect(sock, address)
                    except OSError as exc:
                        sock.close()
                        last = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return sock
                raise last
        except (OSError, TimeoutError) as exc:
            raise unavailable_error(endpoint, exc) from exc

    @staticmethod
    async def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        buf = b""
        while True:
            data = await loop.sock_recv(sock, _LOG_READ_SIZE)
            if not data:
                raise ConnectionResetError(
                    errno.ECONNRESET, "connection closed before a response"
                )
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return buf[:end], buf[end + 4 :]
            if len(buf) > _MAX_HEADER_BYTES:
                raise DockerError("Docker sent an oversized response header")

    async def aclose(self) -> None:
        """Close the HTTP session ; idempotent. Log streams end with their generator."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> DockerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise DockerError(f"Docker sent a malformed status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers
