"""A small read-back client for tests against a real Loki: ``query_range`` and friends.

Owns the test side of Loki's query API (loki-protocol.md section 4): the base URL from
``LOKI_URL`` (``real_loki`` starts one when it is unset), the tenant header, waiting
for ``/ready``, log queries with ``categorize-labels`` (stream
labels and structured metadata apart) parsed into plain values, bounded polling, and
Loki's ``service_name`` rule to predict the labels a query returns.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from minilog.labels import SERVICE_NAME
from minilog.loki.validation import DISCOVER_SERVICE_NAME, UNKNOWN_SERVICE

__all__ = [
    "DETECTED_LEVEL",
    "PUSH_PATH",
    "QUERY_RANGE_PATH",
    "QueriedEntry",
    "QueriedStream",
    "expected_stream_labels",
    "loki_base_url",
    "parse_streams",
    "query_range",
    "tenant_headers",
    "total_entries",
    "wait_for_entries",
    "wait_ready",
]

PUSH_PATH = "/loki/api/v1/push"
QUERY_RANGE_PATH = "/loki/api/v1/query_range"

#: Structured metadata Loki adds to every stored entry (``discover_log_levels``).
DETECTED_LEVEL = "detected_level"

# Without this header Loki merges metadata into the stream labels and splits streams
# per distinct metadata set; with it each value carries its own metadata.
_CATEGORIZE = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}


def loki_base_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """``$LOKI_URL`` as a base URL (a trailing push path is cut off), or ``None``."""
    url = environ.get("LOKI_URL", "").strip().rstrip("/")
    if not url:
        return None
    if url.endswith(PUSH_PATH):
        url = url[: -len(PUSH_PATH)]
    return url


def tenant_headers(
    tenant: str | None = None, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """``X-Scope-OrgID`` for a Loki with ``auth_enabled``: ``tenant``, else
    ``$LOKI_TENANT`` (for a ``LOKI_URL`` Loki that needs one), else none.

    A single-tenant Loki (``auth_enabled: false``) ignores the header.
    """
    if tenant is None:
        tenant = environ.get("LOKI_TENANT", "")
    return {"X-Scope-OrgID": tenant} if tenant else {}


def expected_stream_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The stream labels Loki returns for pushed ``labels``.

    Empty values are dropped; ``service_name`` is added, unless present, from the first
    label of ``DISCOVER_SERVICE_NAME`` with a value, else ``unknown_service``.
    """
    out = {name: value for name, value in labels.items() if value}
    if SERVICE_NAME not in out:
        source = next((n for n in DISCOVER_SERVICE_NAME if out.get(n)), None)
        out[SERVICE_NAME] = out[source] if source else UNKNOWN_SERVICE
    return out


@dataclass(frozen=True)
class QueriedEntry:
    """One returned value; its metadata includes Loki's own ``detected_level``."""

    timestamp_ns: int
    line: str
    structured_metadata: dict[str, str] = field(default_factory=dict)
    parsed: dict[str, str] = field(default_factory=dict)

    def metadata_sent(self) -> dict[str, str]:
        """The structured metadata without the pair Loki adds on its own."""
        return {
            k: v for k, v in self.structured_metadata.items() if k != DETECTED_LEVEL
        }


@dataclass(frozen=True)
class QueriedStream:
    labels: dict[str, str]
    entries: list[QueriedEntry]


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise AssertionError(f"{what}: expected an object of strings, got {value!r}")
    return dict(value)


def parse_streams(payload: Any) -> list[QueriedStream]:
    """The streams of a ``query_range`` log-query answer (either label encoding).

    Raises:
        AssertionError: the answer is not a successful ``streams`` result.
    """
    if not isinstance(payload, dict) or payload.get("status") != "success":
        raise AssertionError(f"query failed: {payload!r}")
    data = payload.get("data") or {}
    if data.get("resultType") != "streams":
        raise AssertionError(f"not a log query result: {data.get('resultType')!r}")
    streams = []
    for item in data.get("result") or []:
        entries = []
        for value in item.get("values") or []:
            stamp = value[0]
            # Loki writes timestamps as decimal strings of Unix nanoseconds.
            if not (isinstance(stamp, str) and stamp.isdigit()):
                raise AssertionError(f"timestamp is not a ns string: {stamp!r}")
            extra = value[2] if len(value) > 2 else {}
            entries.append(
                QueriedEntry(
                    int(stamp),
                    value[1],
                    _string_map(extra.get("structuredMetadata", {}), "metadata"),
                    _string_map(extra.get("parsed", {}), "parsed"),
                )
            )
        streams.append(QueriedStream(_string_map(item["stream"], "stream"), entries))
    return streams


def total_entries(streams: list[QueriedStream]) -> int:
    return sum(len(stream.entries) for stream in streams)


async def wait_ready(
    session: aiohttp.ClientSession,
    base: str,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> None:
    """Poll ``/ready`` until 200: pushes fail (500 ``empty ring``) before it."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            async with session.get(base + "/ready") as response:
                if response.status == 200:
                    return
                last = f"{response.status} {(await response.text()).strip()}"
        except aiohttp.ClientError as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise AssertionError(f"Loki at {base} not ready after {timeout}s: {last}")
        await asyncio.sleep(0.5)  # Loki offers nothing to wait on: poll, bounded


async def query_range(
    session: aiohttp.ClientSession,
    base: str,
    query: str,
    *,
    start_ns: int,
    end_ns: int,
    limit: int = 1000,
    direction: str = "forward",
    categorize_labels: bool = True,
    tenant: str | None = None,
) -> list[QueriedStream]:
    """Run a log query over ``[start_ns, end_ns)`` (nanosecond integers), as
    ``tenant`` (see ``tenant_headers``).

    Raises:
        AssertionError: Loki answered with an error status (its body is in the message).
    """
    params = {
        "query": query,
        "start": str(start_ns),
        "end": str(end_ns),
        "limit": str(limit),
        "direction": direction,
    }
    headers = tenant_headers(tenant)
    if categorize_labels:
        headers.update(_CATEGORIZE)
    async with session.get(
        base + QUERY_RANGE_PATH, params=params, headers=headers
    ) as response:
        body = await response.read()
        if response.status != 200:
            raise AssertionError(
                f"query_range {query} answered {response.status}: "
                f"{body.decode('utf-8', 'replace').strip()}"
            )
        return parse_streams(await response.json())


async def wait_for_entries(
    session: aiohttp.ClientSession,
    base: str,
    query: str,
    count: int,
    *,
    start_ns: int,
    end_ns: int,
    limit: int = 1000,
    attempts: int = 20,
    interval: float = 0.25,
    categorize_labels: bool = True,
    tenant: str | None = None,
) -> list[QueriedStream]:
    """Query until at least ``count`` entries come back, at most ``attempts`` times.

    A single-binary Loki answers read-after-write, so the first query normally has it
    all; the bounded retry only absorbs a slow ingester. Returns the last answer either
    way, for the caller's assertions to show what is missing.
    """
    streams: list[QueriedStream] = []
    for attempt in range(attempts):
        streams = await query_range(
            session,
            base,
            query,
            start_ns=start_ns,
            end_ns=end_ns,
            limit=limit,
            categorize_labels=categorize_labels,
            tenant=tenant,
        )
        if total_entries(streams) >= count:
            break
        if attempt + 1 < attempts:
            await asyncio.sleep(interval)  # no event to await from Loki: poll, bounded
    return streams
