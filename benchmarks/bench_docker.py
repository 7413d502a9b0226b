"""Docker source benchmark: backlog drain through ``loki.source.docker`` and start latency.

(a) drain: ``--containers`` containers each print ``--lines`` ~110-byte JSON lines
    (``seq | awk`` in the busybox test image) and exit; then a ``DockerSource`` fed by
    ``DockerDiscovery`` reads them all into a real ``Writer`` pushing to a ``PushReceiver``
    in another process (a counting receiver if those modules are missing). Reported: this
    process's CPU seconds per 1M lines, its peak RSS (``ru_maxrss``), dockerd's CPU seconds
    during the drain (``/proc/<dockerd>/stat``), lines/s, and an exact count check.
(b) latency: with the source running, ``docker run`` a new container and time until its
    first line reaches the source's output (and, after ``batch_wait``, the receiver).

Run: ``python benchmarks/bench_docker.py [--lines 250000] [--containers 4]``
(``--lines 20000`` for a quick run). Containers use ``--network none`` and carry the label
``minilog.test=1``; they are removed at the end.
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

# ~110 bytes per line once Docker adds nothing (the timestamp travels separately).
AWK_LINE = (
    '{printf "{\\"ts\\":\\"2026-11-27T05:00:00.000Z\\",\\"level\\":\\"info\\",'
    '\\"svc\\":\\"api\\",\\"msg\\":\\"request handled\\",\\"path\\":\\"/api/v1/items\\",'
    '\\"n\\":%08d}\\n", $1}'
)


class Labels:
    """relabel_rules stand-in: ``container`` and ``stream`` labels from the meta labels."""

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


async def run(args: argparse.Namespace) -> None:
    run_id = uuid.uuid4().hex[:8]
    label = f"minilog.bench={run_id}"
    total = args.lines * args.containers
    ids: list[str] = []
    counter: Synchronized[int] = mp.Value("q", 0)  # type: ignore[assignment]
    proc: mp.Process | None = None
    try:
        # Backlog: write every line first, so the drain measures reading only.
        t0 = time.perf_counter()
        for i in range(args.containers):
            cmd = f"seq 1 {args.lines} | awk '{AWK_LINE}'"
            ids.append(
                docker(
                    "run", "-d", "--network", "none", "--label", "minilog.test=1",
                    "--label", label, "--name", f"bench-{run_id}-{i}", IMAGE, "sh", "-c", cmd,
                )
            )  # fmt: skip
        docker("wait", *ids)
        print(f"backlog: {args.containers} x {args.lines} lines written in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

        from minilog.discovery import DockerDiscovery

        sinks: list[Any]
        writer: Any = None
        if have_push_path() and not args.count_only:
            from minilog.write import EndpointConfig, Writer

            port: Synchronized[int] = mp.Value("i", 0)  # type: ignore[assignment]
            ready = mp.Event()
            proc = mp.Process(target=_receiver_main, args=(counter, port, ready), daemon=True)
            proc.start()
            if not ready.wait(20):
                raise RuntimeError("receiver did not start")
            url = f"http://127.0.0.1:{port.value}/loki/api/v1/push"
            writer = Writer([EndpointConfig(url, queue_capacity=args.queue_capacity)])
            await writer.start()
            sinks = [writer]
            sink_name = (
                "Writer (queue_capacity "
                f"{args.queue_capacity / 2**20:g} MiB) -> PushReceiver (other process)"
            )
        else:
            sinks = [Counter(counter)]
            sink_name = "counting receiver (in process)"
        tap = Tap()
        client = DockerClient()
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

            def publish(targets: list[dict[str, str]]) -> None:
                source.update_targets(targets)
                for t in targets:
                    source.poke(t["__meta_docker_container_id"])

            cpu0, dcpu0, wall0 = self_cpu_s(), dockerd_cpu_s(), time.perf_counter()
            src_task = asyncio.create_task(source.run())
            disc_task = asyncio.create_task(discovery.run(publish))
            ok = await wait_until(lambda: counter.value >= total, args.limit_s)
            wall = time.perf_counter() - wall0
            cpu, dcpu = self_cpu_s() - cpu0, dockerd_cpu_s() - dcpu0
            await asyncio.sleep(0.5)  # any duplicate would arrive now
            got = counter.value
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"(a) drain of {total:,} lines into {sink_name}:")
            print(f"    {wall:.2f} s wall = {total / wall:,.0f} lines/s; "
                  f"this process {cpu:.2f} CPU s = {cpu / total * 1e6:.2f} s per 1M lines; "
                  f"dockerd {dcpu:.2f} CPU s = {dcpu / total * 1e6:.2f} s per 1M lines")  # fmt: skip
            print(f"    peak RSS (ru_maxrss) {rss:.1f} MiB; received {got:,} of {total:,} "
                  f"({'exact' if ok and got == total else 'MISMATCH'})")  # fmt: skip

            # (b) latency of a new container's first line.
            lat: list[float] = []
            recv_lat: list[float] = []
            for k in range(args.latency_runs):
                marker = f"hello-{run_id}-{k}"
                tap.marker, tap.seen = marker, asyncio.Event()
                before = counter.value
                start = time.perf_counter()
                ids.append(
                    await asyncio.to_thread(
                        docker,
                        "run", "-d", "--network", "none", "--label", "minilog.test=1",
                        "--label", label, IMAGE, "sh", "-c", f"echo {marker}; sleep 30",
                    )
                )  # fmt: skip
                async with asyncio.timeout(30):
                    await tap.seen.wait()
                lat.append(tap.at - start)
                await wait_until(lambda before=before: counter.value > before, 10)
                recv_lat.append(time.perf_counter() - start)
            print(f"(b) docker run -> first line at the source output: "
                  f"{', '.join(f'{x:.3f}' for x in lat)} s (includes `docker run` itself); "
                  f"at the receiver (after batch_wait 1 s): "
                  f"{', '.join(f'{x:.2f}' for x in recv_lat)} s")  # fmt: skip

            disc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await disc_task
            await source.aclose()  # cancels and awaits run()
            with contextlib.suppress(asyncio.CancelledError):
                await src_task
            if writer is not None:
                await writer.aclose()
            await client.aclose()
    finally:
        if proc is not None:
            proc.kill()
            proc.join()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=250_000, help="lines per container")
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
        "--count-only", action="store_true", help="counting receiver instead of a Writer"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
