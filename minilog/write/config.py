"""``EndpointConfig``: one ``endpoint`` block of ``loki.write``, Alloy's names and
defaults.

The one home of those defaults: the ``loki.write`` component's schema, ``Shipper``,
``SyncShipper`` and ``LokiHandler`` take theirs from the class attributes here
(``EndpointConfig.batch_wait`` is 1.0). It also builds the endpoint's HTTP client
(:func:`pusher_for`); everything else about an endpoint is the sender's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any
from urllib.parse import urlsplit

from minilog.errors import ConfigError
from minilog.loki.push import (
    DEFAULT_REMOTE_TIMEOUT_S,
    ONE_CREDENTIAL,
    BasicAuth,
    LokiPusher,
    TLSConfig,
    url_host,
    url_without_userinfo,
)

__all__ = ["EndpointConfig", "pusher_for"]


# Not slotted: a frozen dataclass without slots keeps each field's default as a class
# attribute, which is how the facades' keyword defaults name this one source.
@dataclass(frozen=True, repr=False)
class EndpointConfig:
    """One ``endpoint`` block of ``loki.write``: Alloy's names, Alloy's defaults.

    Durations are seconds, sizes bytes. ``queue_capacity``, ``min_shards``,
    ``drain_timeout`` and ``block_on_overflow`` are Alloy's ``queue_config`` block:
    ``min_shards`` send loops, each with its own queue of ``queue_capacity`` (the
    endpoint holds up to ``queue_capacity * min_shards``) and one request in flight; a
    stream always goes to the same one, so its entries stay in order. Below 1 is 1, as
    in Alloy. ``block_on_overflow = false`` drops what a full queue cannot take
    (``queue_is_full``) where the sender would otherwise wait.
    ``name`` defaults to the first 6 hex digits of a SHA-256 of the configuration.

    ``max_backoff_retries``: once a shard has failed that many attempts in a row the
    endpoint is reported as failing (one error line,
    ``minilog_write_endpoint_failing``); its entries stay queued and are retried every
    ``max_backoff_period`` at most, sooner when a probe sees Loki answer. 0: never
    reported. (Alloy drops the batch then.)
    ``retry_on_http_429 = false`` drops what Loki refused with a 429, as Alloy does.

    minilog extensions (Alloy has neither): ``adaptive_batching`` lets a batch leave
    before ``batch_wait`` when that costs nothing: once it has been open
    ``batch_linger``, while no request of the endpoint is in flight and it is not
    backing off (see ``write.batch``); ``false`` is exact Alloy batching (a batch
    leaves when full or ``batch_wait`` old).

    ``repr`` shows no secret: the URL without userinfo, no token, no header value.
    """

    url: str
    name: str = ""
    batch_wait: float = 1.0
    batch_size: int = 1 << 20
    remote_timeout: float = DEFAULT_REMOTE_TIMEOUT_S
    tenant_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    basic_auth: BasicAuth | None = None
    bearer_token: str = ""
    bearer_token_file: str = ""
    tls_config: TLSConfig | None = None
    min_backoff_period: float = 0.5
    max_backoff_period: float = 300.0
    max_backoff_retries: int = 10
    retry_on_http_429: bool = True
    queue_capacity: int = 10 << 20
    min_shards: int = 1
    drain_timeout: float = 15.0
    block_on_overflow: bool = True
    adaptive_batching: bool = True
    # A line waits about half the linger, plus ~10 ms to be read, encoded and appended
    # by Loki: 100 ms keeps the median well under 100 ms (about where a response stops
    # feeling instantaneous) with the fewest requests that does, about one per linger
    # and tenant: at 10,000 lines/s 9 a second, against 16 with 50 ms and 260 with none,
    # each costing Loki fixed work (benchmarks/bench_latency.py; figures in the README).
    batch_linger: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            shown = url_without_userinfo(self.url)
            problems.append(f"endpoint url {shown!r} must be an http(s) URL")
        for name in (
            "batch_wait",
            "remote_timeout",
            "min_backoff_period",
            "max_backoff_period",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"endpoint {name} must be positive")  # noqa: PERF401
        for name in ("batch_size", "queue_capacity"):
            if getattr(self, name) <= 0:
                problems.append(f"endpoint {name} must be positive")  # noqa: PERF401
        if self.max_backoff_retries < 0:
            problems.append("endpoint max_backoff_retries must be >= 0")
        if self.drain_timeout < 0:
            problems.append("endpoint drain_timeout must be >= 0")
        if not self.batch_linger >= 0:
            problems.append("endpoint batch_linger must be >= 0")
        credentials = (self.basic_auth, self.bearer_token, self.bearer_token_file)
        if sum(map(bool, credentials)) > 1:
            problems.append(ONE_CREDENTIAL)
        if problems:
            raise ConfigError("; ".join(problems))
        if not self.name:
            # Every value counts, secrets too (only the digest is ever shown).
            text = repr(
                [
                    (f.name, _plain(getattr(self, f.name)))
                    for f in fields(self)
                    if f.name != "name"
                ]
            )
            object.__setattr__(
                self, "name", hashlib.sha256(text.encode()).hexdigest()[:6]
            )

    @property
    def shards(self) -> int:
        """How many send loops the endpoint runs (``min_shards``, at least 1)."""
        return max(self.min_shards, 1)

    @property
    def host(self) -> str:
        """The ``host`` metric label: the URL's host[:port], without userinfo."""
        return url_host(self.url)

    @property
    def display_url(self) -> str:
        """The URL as logs and debug pages show it: without userinfo."""
        return url_without_userinfo(self.url)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if f.name == "url":
                value = url_without_userinfo(value)
            elif f.name == "bearer_token" and value:
                value = "<secret>"
            elif f.name == "headers":
                value = dict.fromkeys(value, "<secret>")
            shown.append(f"{f.name}={value!r}")
        return f"EndpointConfig({', '.join(shown)})"


def _plain(value: object) -> object:
    return (
        asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
    )


def pusher_for(config: EndpointConfig) -> LokiPusher:
    """The HTTP client of one endpoint (the default transport of ``Writer``)."""
    return LokiPusher(
        config.url,
        headers=config.headers,
        basic_auth=config.basic_auth,
        bearer_token=config.bearer_token,
        bearer_token_file=config.bearer_token_file,
        tls_config=config.tls_config,
        remote_timeout=config.remote_timeout,
    )
