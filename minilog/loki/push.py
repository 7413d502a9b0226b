"""One Loki endpoint's HTTP side: a POST of an encoded push body and a readiness
probe.

``LokiPusher`` owns the aiohttp session of one URL (headers, basic/bearer auth or the
URL's own userinfo, TLS, the per-request timeout) and is the only place that meets
aiohttp on the push path: it maps every outcome to ``minilog.errors``, with Loki's
whole error answer and its ``Retry-After``. ``PushTransport`` is what the writer needs
of it (the seam tests fake). Batching, encoding and the retry loop live in
``minilog.write``; what an error answer means, in ``refusals.py``.

A URL's userinfo (``http://user:pass@host/...``) is a credential: it is sent as basic
auth, as Go's HTTP client does, and never shown. :func:`url_without_userinfo` and
:func:`url_host` are what logs, metrics and errors use.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from minilog.errors import (
    ClientRequestError,
    ClosedError,
    ConfigError,
    PushConnectionError,
    PushError,
    RateLimitedError,
    ServerError,
)

__all__ = [
    "DEFAULT_REMOTE_TIMEOUT_S",
    "MAX_RESPONSE_TEXT",
    "ONE_CREDENTIAL",
    "BasicAuth",
    "LokiPusher",
    "PushTransport",
    "TLSConfig",
    "default_user_agent",
    "error_for_status",
    "parse_retry_after",
    "url_host",
    "url_without_userinfo",
]

_log = logging.getLogger(__name__)


def default_user_agent() -> str:
    """``minilog/<version>``, the ``User-Agent`` of every push."""
    # Read at call time: this module is imported while ``minilog/__init__`` still runs.
    version = getattr(sys.modules.get("minilog"), "__version__", None)
    if version is None:
        try:
            version = metadata.version("minilog")
        except metadata.PackageNotFoundError:
            version = "unknown"
    return f"minilog/{version}"


# Headers the client sets itself; configured headers never override them (as in Alloy).
_RESERVED = frozenset(
    {"user-agent", "content-type", "content-encoding", "x-scope-orgid"}
)
# Loki's clients keep the first line of an error body, at most this many bytes.
_MAX_ERROR_BODY = 1024
# An error body is read whole up to this size: Loki lists every refused entry in it (a
# batch of 10k too-old entries is a few MB of grouped messages). Past it the answer is
# cut and judged as not understood.
MAX_RESPONSE_TEXT = 4 << 20
# The push paths Loki serves; what precedes them is a gateway's prefix, under which
# ``/ready`` is looked for.
_PUSH_SUFFIXES = ("/loki/api/v1/push", "/api/v1/push", "/api/prom/push")
#: Seconds for one whole push request (Alloy's ``remote_timeout`` default).
DEFAULT_REMOTE_TIMEOUT_S = 10.0
#: Alloy's message for two credentials in one endpoint.
ONE_CREDENTIAL = (
    "at most one of basic_auth, bearer_token & bearer_token_file must be configured"
)


def url_without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` removed: what may be shown or logged (an
    unparsable ``url`` as it is)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def url_host(url: str) -> str:
    """``host[:port]`` of ``url`` without userinfo (Go's ``URL.Host``, Alloy's ``host``
    metric label)."""
    return urlsplit(url).netloc.rpartition("@")[2]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delay-seconds or an HTTP date),
    never negative; ``None`` when absent or unreadable. ``now``: Unix seconds."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # HTTP dates are GMT; one without a zone is not an HTTP date
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """Alloy's ``basic_auth`` block: ``password_file`` is read on every request when
    set. The password never appears in ``repr``."""

    username: str
    password: str = field(default="", repr=False)
    password_file: str = ""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Alloy's ``tls_config`` block (the subset the push client uses)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    insecure_skip_verify: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        """A client context verifying against ``ca_file`` (else the system store)."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def error_for_status(
    status: int, body: bytes, *, retry_after: float | None = None
) -> PushError:
    """The ``PushError`` for a non-2xx answer; the message holds the body's first
    line, ``response_text`` the whole body."""
    first = body[:_MAX_ERROR_BODY].split(b"\n", 1)[0].decode("utf-8", "replace")
    message = f"server returned HTTP status {status}: {first}"
    kind: type[PushError] = ClientRequestError
    if status == 429:
        kind = RateLimitedError
    elif 500 <= status < 600:
        kind = ServerError
    # Any other status, 3xx left after redirects included, is final (Alloy drops the
    # batch).
    return kind(
        message,
        status=status,
        body=first,
        response_text=body.decode("utf-8", "replace"),
        retry_after=retry_after,
    )


class PushTransport(Protocol):
    """What the writer needs of one endpoint's HTTP side (``LokiPusher`` is one)."""

    async def push(self, body: bytes, *, tenant: str = "") -> int:
        """POST one compressed push body; the 2xx status, else a ``PushError``."""
        ...

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109 - a per-request bound
        """Whether the endpoint answers again."""
        ...

    async def aclose(self) -> None: ...


class LokiPusher:
    """POSTs snappy-compressed protobuf push bodies to one Loki push URL.

    The session is created on first use (it needs a running loop) and reused, so
    requests share keep-alive connections. Configured ``headers`` never replace the ones
    the client sets (``User-Agent``, ``Content-Type``, ``Content-Encoding``,
    ``X-Scope-OrgID``).

    Credentials, as Alloy's Go client applies them: a configured ``Authorization``
    header wins, then the URL's userinfo (sent as basic auth), then ``basic_auth`` /
    ``bearer_token`` / ``bearer_token_file``. ``url`` and ``host`` never hold the
    userinfo.

    Args:
        url: the full push URL, e.g. ``http://loki:3100/loki/api/v1/push``.
        remote_timeout: seconds for one whole request.
        basic_auth / bearer_token / bearer_token_file: at most one of them.
        tls_config: used for ``https`` URLs.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        basic_auth: BasicAuth | None = None,
        bearer_token: str = "",
        bearer_token_file: str = "",
        tls_config: TLSConfig | None = None,
        remote_timeout: float = DEFAULT_REMOTE_TIMEOUT_S,
        user_agent: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"invalid push URL {url_without_userinfo(url)!r}: "
                "need http(s)://host[:port]/path"
            )
        if sum(map(bool, (basic_auth, bearer_token, bearer_token_file))) > 1:
            raise ConfigError(ONE_CREDENTIAL)
        self.url = url_without_userinfo(url)
        self.host = url_host(url)
        self.ready_url = _ready_url(self.url)
        self.remote_timeout = remote_timeout
        self._basic_auth = basic_auth
        self._bearer_token = bearer_token
        self._bearer_token_file = bearer_token_file
        self._url_auth: str | None = None
        if parts.username is not None:
            # Go's client decodes the userinfo and sends it as basic auth.
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._url_auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._headers: dict[str, str] = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "User-Agent": user_agent or default_user_agent(),
        }
        for name, value in (headers or {}).items():
            if name.lower() in _RESERVED:
                _log.warning(
                    "push header %s is set by the client and cannot be overridden", name
                )
                continue
            self._headers[name] = value
        self._header_auth = any(
            name.lower() == "authorization" for name in self._headers
        )
        self._tenant_headers: dict[str, dict[str, str]] = {"": self._headers}
        self._ssl: ssl.SSLContext | bool = True
        self._server_hostname: str | None = None
        if parts.scheme == "https" and tls_config is not None:
            try:
                self._ssl = tls_config.ssl_context()
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(f"tls_config: {exc}") from exc
            self._server_hostname = tls_config.server_name or None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Whether GET /ready was found not to be Loki's (a gateway's 404, 401, ...).
        self._ready_unavailable = False

    def _authorization(self) -> str | None:
        if self._header_auth:
            return None  # a configured Authorization header is sent as it is
        if self._url_auth is not None:
            return self._url_auth
        # Credential files are read per request (per batch): rotation needs no restart.
        if self._basic_auth is not None:
            auth = self._basic_auth
            password = auth.password
            if auth.password_file:
                password = Path(auth.password_file).read_text().strip()
            token = base64.b64encode(f"{auth.username}:{password}".encode())
            return "Basic " + token.decode("ascii")
        if self._bearer_token_file:
            return "Bearer " + Path(self._bearer_token_file).read_text().strip()
        if self._bearer_token:
            return "Bearer " + self._bearer_token
        return None

    def _headers_for(self, tenant: str) -> dict[str, str]:
        headers = self._tenant_headers.get(tenant)
        if headers is None:
            headers = {**self._headers, "X-Scope-OrgID": tenant}
            self._tenant_headers[tenant] = headers
        try:
            authorization = self._authorization()
        except OSError as exc:
            raise PushConnectionError(f"cannot read credentials: {exc}") from exc
        if authorization is not None:
            headers = {**headers, "Authorization": authorization}
        return headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClosedError("LokiPusher is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.remote_timeout),
                connector=aiohttp.TCPConnector(limit=4, ssl=self._ssl),
            )
        return self._session

    async def push(self, body: bytes, *, tenant: str = "") -> int:
        """POST one compressed push body; returns the 2xx status.

        Raises:
            RateLimitedError: 429. ServerError: 5xx. ClientRequestError: any other
                non-2xx. Each carries Loki's whole answer (``response_text``) and its
                ``Retry-After`` in seconds.
            PushConnectionError: the request did not complete (refused, reset,
                timeout, the host did not resolve).
            ClosedError: after :meth:`aclose`.
        """
        session = self._get_session()
        headers = self._headers_for(tenant)
        try:
            async with session.post(
                self.url,
                data=body,
                headers=headers,
                server_hostname=self._server_hostname,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    await response.read()
                    return status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                error_body = await _read_prefix(response.content, MAX_RESPONSE_TEXT)
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            raise self._connection_error(exc) from exc
        raise error_for_status(status, error_body, retry_after=retry_after)

    def _connection_error(self, exc: BaseException) -> PushConnectionError:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
            exc.os_error, socket.gaierror
        ):
            detail = f"cannot resolve host {self.host.rpartition(':')[0] or self.host}"
        return PushConnectionError(f"push to {self.host} failed: {detail}")

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109 - a per-request bound
        """Whether Loki answers again, as cheaply as it can be asked.

        ``GET /ready`` (under the push URL's prefix): 2xx is ready, 5xx or no answer is
        not. When that path is not Loki's (a gateway answers 404, 401, ...), an empty
        push request to the push URL instead: Loki's distributor refuses it at once
        (422) without storing anything, a gateway with Loki gone answers 5xx.
        """
        session = self._get_session()
        request_timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            headers = self._headers_for("")
            if not self._ready_unavailable:
                async with session.get(
                    self.ready_url,
                    headers={
                        k: v for k, v in headers.items() if k != "Content-Encoding"
                    },
                    timeout=request_timeout,
                    server_hostname=self._server_hostname,
                ) as response:
                    status = response.status
                    await response.read()
                if 200 <= status < 300:
                    return True
                if status >= 500:
                    return False
                self._ready_unavailable = True
                _log.debug(
                    "%s answers %d to /ready: probing with an empty push instead",
                    self.host,
                    status,
                )
            async with session.post(
                self.url,
                data=_EMPTY_PUSH,
                headers=headers,
                timeout=request_timeout,
                server_hostname=self._server_hostname,
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError, PushError):
            return False
        return status < 500

    async def aclose(self) -> None:
        """Close the session (idempotent); later pushes raise ``ClosedError``."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


# An encoded PushRequest without streams, snappy-compressed: the empty message is
# zero bytes, and its snappy block is the single varint 0.
_EMPTY_PUSH = b"\x00"


def _ready_url(push_url: str) -> str:
    """``/ready`` under the prefix that precedes the push path in ``push_url``."""
    parts = urlsplit(push_url)
    path = parts.path.rstrip("/")
    prefix = next(
        (path[: -len(suffix)] for suffix in _PUSH_SUFFIXES if path.endswith(suffix)),
        "",
    )
    return urlunsplit((parts.scheme, parts.netloc, prefix + "/ready", "", ""))


async def _read_prefix(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
