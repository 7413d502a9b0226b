"""Push-path benchmark: one Shipper -> a counting Loki stand-in in another process.

(a) sustained throughput: entries/s and the shipper process's CPU seconds per 1M
    entries, with ``send_batch`` (how the agent hands over lines) and per-line ``send``;
(b) outage: the receiver is down for ``--outage`` seconds while a producer keeps sending
    into a 64 MiB queue; peak RSS of the shipper process, then zero loss after recovery,
    and the seconds from the receiver listening again to the first push it took.
    ``--max-backoff-retries``/``--max-backoff-period`` set the retry budget: with a
    small one the retries run out inside the outage, and nothing may be lost.

Run: ``python benchmarks/bench_push.py [--entries 1000000] [--outage 30]
[--max-backoff-retries 0] [--max-backoff-period 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import random
import resource
import socket
import sys
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minilog.model import LogEntry
from minilog.shipper import Shipper


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _receiver_main(
    port: int, counter: Synchronized[int], ready: Any, times: Any = None
) -> None:
    """The receiver process: decompress, count entries, answer 204; ``GET /ready``
    answers 200 as Loki's does. ``times`` (two doubles) gets the wall time it started
    listening and of the first push with entries."""
    from aiohttp import web

    from minilog.loki import wire as encode

    if hasattr(encode, "scan_push_request"):

        def count(raw: bytes) -> int:
            return sum(n for _, n in encode.scan_push_request(raw))
    else:

        def count(raw: bytes) -> int:
            return sum(len(entries) for _, entries in encode.decode_push_request(raw))

    async def handle(request: web.Request) -> web.Response:
        raw = encode.decompress(await request.read())
        n = count(raw)
        if n and times is not None and not times[1]:
            times[1] = time.time()
        with counter.get_lock():
            counter.value += n
        return web.Response(status=204)

    async def ready_route(request: web.Request) -> web.Response:
        return web.Response(text="ready\n")

    async def main() -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/loki/api/v1/push", handle)
        app.router.add_get("/ready", ready_route)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        if times is not None:
            times[0] = time.time()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def start_receiver(
    port: int, counter: Synchronized[int], times: Any = None
) -> mp.Process:
    ready = mp.Event()
    proc = mp.Process(
        target=_receiver_main, args=(port, counter, ready, times), daemon=True
    )
    proc.start()
    if not ready.wait(20):
        raise RuntimeError("receiver did not start")
    return proc


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


_PATHS = ("/api/v1/items", "/api/v1/users", "/healthz", "/api/v2/orders/search")
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")


def make_chunk(base: int, chunk: int, rng: random.Random) -> list[LogEntry]:
    """Distinct logfmt lines of ~150 bytes that compress like real logs (~4x).

    Identical or synthetic lines would flatter both the RSS and the compression.
    """
    out = []
    for i in range(chunk):
        n = base + i
        line = (
            f"ts=2026-11-27T05:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}."
            f"{n % 1000:03d}{rng.randrange(1000):03d}Z "
            f"level={'info' if n % 7 else 'warn'} "
            f'msg="request handled" method={rng.choice(_METHODS)} '
            f"path={rng.choice(_PATHS)}/{rng.randrange(100000)} "
            f"status={200 if n % 13 else 503} duration_ms={rng.random() * 300:.1f} "
            f"trace_id={rng.getrandbits(64):016x}"
        )
        out.append(LogEntry(1_800_000_000_000_000_000 + n, line))
    return out


async def wait_count(counter: Synchronized[int], target: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while counter.value < target:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def throughput(args: argparse.Namespace) -> None:
    port = free_port()
    counter: Synchronized[int] = mp.Value("q", 0)  # type: ignore[assignment]
    proc = start_receiver(port, counter)
    rng = random.Random(1)
    url = f"http://127.0.0.1:{port}"
    try:
        # Chunks prepared up front: the producer's own cost is not the shipper's.
        chunks = [
            make_chunk(i * args.chunk, args.chunk, rng)
            for i in range(args.entries // args.chunk)
        ]
        total = len(chunks) * args.chunk
        line_bytes = sum(len(e.line) for chunk in chunks for e in chunk) / total
        async with Shipper(url, labels={"job": "bench"}) as shipper:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for i, chunk in enumerate(chunks):
                await shipper.send_batch({"stream": str(i % 8)}, chunk)
            await shipper.flush()
            ok = await wait_count(counter, total, 60)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        print(
            f"(a) send_batch x{args.chunk}: {total} entries of ~{line_bytes:.0f} B in "
            f"{wall:.2f} s = {total / wall:,.0f} entries/s; shipper CPU "
            f"{cpu / total * 1e6:.2f} s per 1M entries; received {counter.value} "
            f"({'ok' if ok else 'MISSING'})"
        )
        del chunks
        with counter.get_lock():
            counter.value = 0
        n = args.per_line
        lines = make_chunk(0, n, rng)
        async with Shipper(url, labels={"job": "bench"}) as shipper:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            labels = {"stream": "one"}
            for i, entry in enumerate(lines):
                await shipper.send(labels, entry.line, timestamp_ns=i + 1)
            await shipper.flush()
            ok = await wait_count(counter, n, 60)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        print(
            f"(a) per-line send: {n} entries in {wall:.2f} s = "
            f"{n / wall:,.0f} entries/s; shipper CPU {cpu / n * 1e6:.2f} s per 1M "
            f"entries; received {counter.value} ({'ok' if ok else 'MISSING'})"
        )
    finally:
        proc.kill()
        proc.join()


async def outage(args: argparse.Namespace) -> None:
    port = free_port()
    counter: Synchronized[int] = mp.Value("q", 0)  # type: ignore[assignment]
    rng = random.Random(2)
    url = f"http://127.0.0.1:{port}"
    base_rss = rss_mib()
    sent = 0
    raw = 0
    peak = base_rss
    shipper = Shipper(
        url,
        labels={"job": "outage"},
        queue_capacity=64 << 20,
        # Outages never drop: a small budget only reports the endpoint as failing.
        max_backoff_retries=args.max_backoff_retries,
        min_backoff_period=0.1,
        max_backoff_period=args.max_backoff_period,
        drain_timeout=120.0,
    )
    async with shipper:
        started = time.monotonic()
        blocked = 0.0  # seconds the producer spent waiting on a full queue
        while time.monotonic() - started < args.outage:
            chunk = make_chunk(sent, args.chunk, rng)
            try:
                async with asyncio.timeout(0.2):
                    await shipper.send_batch(
                        {"stream": str(sent // args.chunk % 4)}, chunk
                    )
            except TimeoutError:
                # Backpressure: the queue is full, the producer waits (nothing is lost).
                blocked += 0.2
                peak = max(peak, rss_mib())
                continue
            sent += args.chunk
            raw += sum(len(e.line) for e in chunk)
            peak = max(peak, rss_mib())
        queued = shipper.queued_bytes
        end_rss = rss_mib()
        failing = shipper.registry.get_sample_value(
            "minilog_write_endpoint_failing", {"host": f"127.0.0.1:{port}"}
        )
        times = mp.Array("d", 2)
        proc = start_receiver(port, counter, times)
        recover0 = time.monotonic()
        await shipper.flush()
        ok = await wait_count(counter, sent, 120)
        recovered = time.monotonic() - recover0
        dropped = sum(
            s.value
            for family in shipper.registry.collect()
            for s in family.samples
            if s.name == "loki_write_dropped_entries_total"
        )
    proc.kill()
    proc.join()
    verdict = "zero loss" if ok and counter.value == sent else "LOSS"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first_push = times[1] - times[0] if times[1] else float("nan")
    print(
        f"(b) outage {args.outage:.0f} s, queue_capacity 64 MiB, "
        f"max_backoff_retries {args.max_backoff_retries}, "
        f"max_backoff_period {args.max_backoff_period:g} s: "
        f"{sent} entries ({raw / 2**20:.0f} MiB of lines) accepted while Loki was "
        f"down, producer blocked {blocked:.1f} s, {queued / 2**20:.1f} MiB counted; "
        f"RSS {base_rss:.0f} MiB before, peak {peak:.0f} MiB "
        f"(ru_maxrss {maxrss:.0f} MiB), {end_rss:.0f} MiB at the end of the outage; "
        f"endpoint reported failing: {'yes' if failing else 'no'}; first push "
        f"{first_push:.2f} s after the receiver listened again; received "
        f"{counter.value} of {sent} sent in {recovered:.1f} s, {sent - counter.value} "
        f"lost, {dropped:.0f} counted dropped -> {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--per-line", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--max-backoff-retries", type=int, default=0)
    parser.add_argument("--max-backoff-period", type=float, default=1.0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-outage", action="store_true")
    args = parser.parse_args()
    # The outage makes every retry log a warning; the figures are what matters here.
    logging.getLogger("minilog").setLevel(logging.ERROR)
    if not args.skip_throughput:
        asyncio.run(throughput(args))
    if not args.skip_outage:
        asyncio.run(outage(args))


if __name__ == "__main__":
    main()
