"""Docker source benchmark: backlog drain through ``loki.source.docker``, start latency.

(a) drain: ``--containers`` containers each print ``--lines`` ~110-byte JSON lines
    (``seq | awk`` in the busybox test image) and exit; then a ``DockerSource`` fed by
    ``DockerDiscovery`` reads them all into a real ``Writer`` pushing to a
    ``PushReceiver`` in another process (``--count-only``: a counting receiver in this
    process). Reported: this process's CPU seconds per 1M lines, its peak RSS
    (``ru_maxrss``), dockerd's CPU seconds during the drain (``/proc/<dockerd>/stat``),
    lines/s, and an exact count check.
(b) latency: with the source running, ``docker run`` a new container and time until
    its first line reaches the source's output (and, after ``batch_wait``, the
    receiver).

Run: ``python benchmarks/bench_docker.py [--lines 250000] [--containers 4]``
(``--lines 20000`` for a quick run). Containers use ``--network none`` and carry the
label ``minilog.test=1``; they are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minilog._docker import DockerClient
from minilog.model import StreamBatch
from minilog.positions import Positions
from minilog.tail import LABEL_LOG_STREAM, DockerSource

IMAGE = "minilog-busybox:test"
TICKS = os.sysconf("SC_CLK_TCK")

# A ~110-byte JSON line per number (Docker's timestamp travels apart from it).
AWK_LINE = (
    '{printf "{\\"ts\\":\\"2026-11-27T05:00:00.000Z\\",'
    '\\"level\\":\\"info\\",\\"svc\\":\\"api\\",'
    '\\"msg\\":\\"request handled\\",\\"path\\":\\"/api/v1/items\\",'
    '\\"n\\":%08d}\\n", $1}'
)


class Labels:
    """relabel_rules stand-in: ``container`` and ``stream`` from the meta labels."""

    def process(self, labels: dict[str, str]) -> dict[str, str] | None:
        name = labels.get("__meta_docker_container_name", "").lstrip("/")
        return {**labels, "container": name, "stream": labels[LABEL_LOG_STREAM]}


class Tap:
    """A LogsReceiver that notes when a line containing ``marker`` first passes."""

    def __init__(self) -> None:
        self.marker = "\x00"
        self.seen = asyncio.Event()
        self.at = 0.0

    async def send(self, batch: StreamBatch) -> None:
        if not self.seen.is_set() and any(self.marker in e.line for e in batch.entries):
            self.at = time.perf_counter()
            self.seen.set()
        batch.settle()


class Counter:
    """Fallback sink when write.py/receiver.py are absent: counts, settles."""

    def __init__(self, counter: Synchronized[int]) -> None:
        self.counter = counter

    async def send(self, batch: StreamBatch) -> None:
        self.counter.value += len(batch.entries)
        batch.settle()


def docker(*args: str) -> str:
    out = subprocess.run(["docker", *args], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def dockerd_cpu_s() -> float:
    """User+system CPU seconds of dockerd so far (0 when not visible from here)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "dockerd":
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / TICKS
    return 0.0


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _receiver_main(counter: Synchronized[int], port: Any, ready: Any) -> None:
    from minilog.receiver import PushReceiver

    async def handler(batches: list[StreamBatch]) -> None:
        n = sum(len(b.entries) for b in batches)
        with counter.get_lock():
            counter.value += n

    async def main() -> None:
        receiver = PushReceiver(handler)
        await receiver.start()
        port.value = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def have_push_path() -> bool:
    root = Path(__file__).resolve().parents[1] / "minilog"
    return (root / "write.py").exists() and (root / "receiver.py").exists()


async def wait_until(cond: Any, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def make_backlog(args: argparse.Namespace, label: str) -> list[str]:
    """Start the containers and wait until they wrote every line (blocking)."""
    t0 = time.perf_counter()
    cmd = f"seq 1 {args.lines} | awk '{AWK_LINE}'"
    ids = [
        docker(*RUN, "--label", label, IMAGE, "sh", "-c", cmd)
        for _ in range(args.containers)
    ]
    docker("wait", *ids)
    took = time.perf_counter() - t0
    print(f"backlog: {args.containers} x {args.lines} lines written in {took:.1f} s")
    return ids


RUN = ("run", "-d", "--network", "none", "--label", "minilog.test=1")


def start_receiver(counter: Synchronized[int]) -> tuple[mp.Process, str]:
    port: Synchronized[int] = mp.Value("i", 0)
    ready = mp.Event()
    proc = mp.Process(target=_receiver_main, args=(counter, port, ready), daemon=True)
    proc.start()
    if not ready.wait(20):
        raise RuntimeError("receiver did not start")
    return proc, f"http://127.0.0.1:{port.value}/loki/api/v1/push"


async def drain_and_latency(
    args: argparse.Namespace, label: str, ids: list[str], counter: Synchronized[int]
) -> None:
    from minilog.discovery import DockerDiscovery

    total = args.lines * args.containers
    sinks: list[Any]
    writer: Any = None
    proc: mp.Process | None = None
    if have_push_path() and not args.count_only:
        from minilog.write import EndpointConfig, Writer

        proc, url = start_receiver(counter)
        writer = Writer([EndpointConfig(url, queue_capacity=args.queue_capacity)])
        await writer.start()
        sinks = [writer]
        capacity = args.queue_capacity / 2**20
        sink_name = f"Writer (queue_capacity {capacity:g} MiB) -> PushReceiver process"
    else:
        sinks = [Counter(counter)]
        sink_name = "counting receiver (in process)"
    tap = Tap()
    client = DockerClient()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = DockerSource(
                client,
                [tap, *sinks],
                relabel_rules=Labels(),
                positions=Positions(Path(tmp) / "positions.json"),
            )
            discovery = DockerDiscovery(
                client,
                filters=[("label", [label]), ("status", ["running", "exited"])],
                refresh_interval=60,
            )
            cpu0, dcpu0, wall0 = self_cpu_s(), dockerd_cpu_s(), time.perf_counter()
            src_task = asyncio.create_task(source.run())
            disc_task = asyncio.create_task(discovery.run(source.update_targets))
            ok = await wait_until(lambda: counter.value >= total, args.limit_s)
            wall = time.perf_counter() - wall0
            cpu, dcpu = self_cpu_s() - cpu0, dockerd_cpu_s() - dcpu0
            await asyncio.sleep(0.5)  # a duplicate would have arrived by now
            got = counter.value
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            verdict = "exact" if ok and got == total else "MISMATCH"
            print(f"(a) drain of {total:,} lines into {sink_name}:")
            print(
                f"    {wall:.2f} s wall = {total / wall:,.0f} lines/s; this process "
                f"{cpu:.2f} CPU s = {cpu / total * 1e6:.2f} s per 1M lines; dockerd "
                f"{dcpu:.2f} CPU s = {dcpu / total * 1e6:.2f} s per 1M lines"
            )
            print(
                f"    peak RSS (ru_maxrss) {rss:.1f} MiB; "
                f"received {got:,} of {total:,} ({verdict})"
            )
            await measure_latency(args, label, ids, tap, counter)
            disc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await disc_task
            await source.aclose()  # cancels and awaits run()
            with contextlib.suppress(asyncio.CancelledError):
                await src_task
            backlog = ids[: args.containers]
            for window in (0, 1000):
                await measure_resume(
                    client, Path(tmp) / "positions.json", backlog, window
                )
    finally:
        if writer is not None:
            await writer.aclose()
        await client.aclose()
        if proc is not None:
            proc.kill()
            proc.join()


async def measure_resume(
    client: DockerClient, positions_path: Path, ids: list[str], window: int
) -> None:
    """(c) dockerd's cost of resuming the drained (exited) containers from positions."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    rec = Tap()
    source = DockerSource(
        client,
        [rec],
        relabel_rules=Labels(),
        positions=Positions(positions_path),
        registry=registry,
        tail_window=window,
    )
    source.update_targets(
        [{"__meta_docker_container_id": cid, "job": "bench"} for cid in ids]
    )

    def resumed() -> float:
        return sum(
            registry.get_sample_value(
                "minilog_source_docker_resumes_total", {"mode": mode}
            )
            or 0.0
            for mode in ("since", "window")
        )

    dcpu0, wall0 = dockerd_cpu_s(), time.perf_counter()
    task = asyncio.create_task(source.run())
    ok = await wait_until(
        lambda: (
            resumed() >= len(ids)
            and not any(t.is_running for t in source.targets_info())
        ),
        120,
    )
    wall, dcpu = time.perf_counter() - wall0, dockerd_cpu_s() - dcpu0
    await source.aclose()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    how = f"since + tail={window}" if window else "since alone"
    print(
        f"(c) resume of {len(ids)} drained containers ({how}): dockerd "
        f"{dcpu:.2f} CPU s, {wall:.2f} s wall{'' if ok else ' (TIMED OUT)'}"
    )


async def measure_latency(
    args: argparse.Namespace,
    label: str,
    ids: list[str],
    tap: Tap,
    counter: Synchronized[int],
) -> None:
    at_source: list[float] = []
    at_receiver: list[float] = []
    for k in range(args.latency_runs):
        marker = f"hello-{label}-{k}"
        tap.marker, tap.seen = marker, asyncio.Event()
        before = counter.value
        start = time.perf_counter()
        cmd = f"echo {marker}; sleep 30"
        ids.append(
            await asyncio.to_thread(
                docker, *RUN, "--label", label, IMAGE, "sh", "-c", cmd
            )
        )
        async with asyncio.timeout(30):
            await tap.seen.wait()
        at_source.append(tap.at - start)
        await wait_until(lambda before=before: counter.value > before, 10)
        at_receiver.append(time.perf_counter() - start)
    if at_source:
        print(
            "(b) docker run -> first line at the source output: "
            + ", ".join(f"{x:.3f}" for x in at_source)
            + " s (including the docker CLI); at the receiver (after batch_wait 1 s): "
            + ", ".join(f"{x:.2f}" for x in at_receiver)
            + " s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=250_000, help="per container")
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--limit-s", type=float, default=600.0, help="drain time limit")
    parser.add_argument(
        "--queue-capacity",
        type=int,
        default=10 << 20,
        help="the Writer's queue_capacity in bytes (Alloy's default: 10 MiB)",
    )
    parser.add_argument(
        "--count-only", action="store_true", help="count in process, no Writer"
    )
    args = parser.parse_args()
    label = f"minilog.bench={uuid.uuid4().hex[:8]}"
    counter: Synchronized[int] = mp.Value("q", 0)
    ids: list[str] = []
    try:
        ids.extend(make_backlog(args, label))
        asyncio.run(drain_and_latency(args, label, ids, counter))
    finally:
        if ids:
            subprocess.run(
                ["docker", "rm", "-f", *ids], capture_output=True, check=False
            )


if __name__ == "__main__":
    main()
