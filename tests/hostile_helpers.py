"""Hostile clients for a push receiver: the attacks of issue 16, bounded in count and
time, shared by the fault tests and ``benchmarks/bench_hostile.py``.

Owns the bodies (gzip and snappy bombs, a huge JSON push) and the connection-level
attacks (slowloris headers, trickled bodies, idle connection floods, clients that drop
mid-body). Every function returns what the server answered, so callers can check it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

from minilog.loki.wire import compress, encode_push_request
from minilog.model import LogEntry

__all__ = [
    "AttackReport",
    "HostileBodies",
    "big_json_body",
    "drop_mid_body",
    "flood_connections",
    "gzip_json_bomb",
    "hostile_mix",
    "push_many",
    "slow_bodies",
    "slowloris",
    "snappy_bomb",
]

_NOW_NS = 1_700_000_000_000_000_000


def gzip_json_bomb(line_bytes: int) -> bytes:
    """A gzip'd JSON push of one valid line of ``line_bytes`` bytes (~1000:1)."""
    head = b'{"streams":[{"stream":{"job":"bomb"},"values":[["%d","' % _NOW_NS
    tail = b'"]]}]}'
    out = gzip.compress(head + b"x" * line_bytes + tail, compresslevel=9)
    return out


def snappy_bomb(line_bytes: int) -> bytes:
    """A snappy protobuf push of one line of ``line_bytes`` bytes (~21:1)."""
    return compress(
        encode_push_request([('{job="bomb"}', [LogEntry(_NOW_NS, "x" * line_bytes)])])
    )


def big_json_body(total_bytes: int) -> bytes:
    """A plain JSON push of about ``total_bytes``: many 1 KiB lines."""
    line = "y" * 1024
    n = max(1, total_bytes // (len(line) + 30))
    values = [[str(_NOW_NS + i), line] for i in range(n)]
    return orjson.dumps({"streams": [{"stream": {"job": "big"}, "values": values}]})


@dataclass
class AttackReport:
    """What the server did to each attack: statuses, closes, refusals."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    closed_by_server: int = 0
    still_open: int = 0

    def merge(self, other: AttackReport) -> None:
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.closed_by_server += other.closed_by_server
        self.still_open += other.still_open


async def push_many(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    count: int,
    concurrency: int,
    timeout_s: float = 60.0,
) -> AttackReport:
    """POST ``body`` ``count`` times, ``concurrency`` at once."""
    report = AttackReport()
    left = count
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                data = io.BytesIO(body)  # bytes this large make aiohttp warn
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    report.statuses[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                report.errors[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return report


async def _held(
    host: str, port: int, first: bytes, trickle: bytes, hold_s: float, every_s: float
) -> tuple[bool, bool]:
    """Open a connection, send ``first``, then one byte of ``trickle`` every
    ``every_s`` until ``hold_s`` passed. (opened, closed by the server)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False, True
    closed = False
    try:
        writer.write(first)
        deadline = time.monotonic() + hold_s
        i = 0
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(every_s):
                    data = await reader.read(4096)
                if not data:  # EOF: the server closed it
                    closed = True
                    break
                # A refusal (503) or a timeout answer: the close follows.
                continue
            except TimeoutError:
                pass
            writer.write(trickle[i % len(trickle) : i % len(trickle) + 1])
            i += 1
            with contextlib.suppress(OSError):
                await writer.drain()
    except OSError:
        closed = True
    finally:
        writer.transport.abort()
    return True, closed


async def slowloris(
    host: str, port: int, *, count: int, hold_s: float, every_s: float = 0.5
) -> AttackReport:
    """``count`` connections trickling request headers, a byte per ``every_s``."""
    first = b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\n"
    trickle = b"X-Slow: " + b"a" * 60 + b"\r\n"
    return await _many(host, port, count, first, trickle, hold_s, every_s)


async def slow_bodies(
    host: str, port: int, *, count: int, hold_s: float, every_s: float = 0.5
) -> AttackReport:
    """``count`` pushes whose headers are complete and whose body trickles."""
    first = (
        b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-protobuf\r\nContent-Length: 100000\r\n\r\n"
    )
    return await _many(host, port, count, first, b"z", hold_s, every_s)


async def flood_connections(
    host: str, port: int, *, count: int, hold_s: float
) -> AttackReport:
    """``count`` connections that send nothing at all."""
    return await _many(host, port, count, b"", b"", hold_s, hold_s)


async def _many(
    host: str,
    port: int,
    count: int,
    first: bytes,
    trickle: bytes,
    hold_s: float,
    every_s: float,
) -> AttackReport:
    report = AttackReport()
    trickle = trickle or b""
    results = await asyncio.gather(
        *(
            _held(host, port, first, trickle or b"\0", hold_s, every_s)
            if trickle
            else _idle(host, port, hold_s)
            for _ in range(count)
        )
    )
    for opened, closed in results:
        if not opened:
            report.errors["connect"] += 1
        elif closed:
            report.closed_by_server += 1
        else:
            report.still_open += 1
    return report


async def _idle(host: str, port: int, hold_s: float) -> tuple[bool, bool]:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False, True
    try:
        async with asyncio.timeout(hold_s):
            while await reader.read(4096):
                pass
        return True, True
    except TimeoutError:
        return True, False
    except OSError:
        return True, True
    finally:
        writer.transport.abort()


async def drop_mid_body(host: str, port: int, *, count: int) -> None:
    """``count`` pushes that announce 1 MB and hang up after 1 KB."""
    for _ in range(count):
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-protobuf\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b"x" * 1024
            )
            await writer.drain()
            await asyncio.sleep(0.01)  # the server starts reading the body
            writer.transport.abort()


@dataclass(frozen=True)
class HostileBodies:
    """The bodies of the mix, built once before the attack (seconds of CPU here)."""

    gzip_bomb: bytes
    snappy_bomb: bytes
    big_json: bytes

    @classmethod
    def build(cls) -> HostileBodies:
        """A 95 MB line gzip'd (~95 KB) and snappy'd (~4.5 MB), an 89 MB JSON push."""
        return cls(
            gzip_json_bomb(95_000_000),
            snappy_bomb(95_000_000),
            big_json_body(89_000_000),
        )


async def hostile_mix(
    host: str,
    port: int,
    bodies: HostileBodies,
    *,
    scale: int = 1,
    hold_s: float = 8.0,
) -> dict[str, AttackReport]:
    """Every attack of issue 16 at once against ``host:port`` (a loki.source.api):
    6 gzip bombs, 24 snappy bombs, the 89 MB JSON push, 300 slowloris connections,
    50 trickled bodies, an 800-connection idle flood and 20 clients that hang up
    mid-body, times ``scale``; each connection attack held ``hold_s`` at most."""
    url = f"http://{host}:{port}/loki/api/v1/push"
    json_gz = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    proto = {"Content-Type": "application/x-protobuf"}
    json_h = {"Content-Type": "application/json"}
    tasks = {
        "gzip_bombs": push_many(
            url, bodies.gzip_bomb, json_gz, count=6 * scale, concurrency=6
        ),
        "snappy_bombs": push_many(
            url, bodies.snappy_bomb, proto, count=24 * scale, concurrency=24
        ),
        "big_json": push_many(url, bodies.big_json, json_h, count=scale, concurrency=1),
        "slowloris": slowloris(host, port, count=300 * scale, hold_s=hold_s),
        "slow_bodies": slow_bodies(host, port, count=50 * scale, hold_s=hold_s),
        "flood": flood_connections(host, port, count=800 * scale, hold_s=hold_s),
    }
    names = list(tasks)
    results = await asyncio.gather(
        *tasks.values(), drop_mid_body(host, port, count=20 * scale)
    )
    return dict(zip(names, results[: len(names)], strict=True))
