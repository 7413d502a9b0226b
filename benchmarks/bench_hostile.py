"""The agent under a hostile push mix while a Docker container keeps logging.

Runs ``python -m minilog run`` (file limit ``--nofile``, soft and hard, as
``ulimit -n``) with ``loki.source.docker`` and ``loki.source.api`` both forwarding to
one ``loki.write``, whose endpoint is a ``FakeLoki`` in this process. A container prints
``--lines`` numbered lines at a steady pace while ``tests/hostile_helpers.hostile_mix``
runs against the push receiver: gzip and snappy bombs, an 89 MB JSON push, slowloris
headers, trickled bodies, an idle-connection flood and clients that hang up mid-body.

Reported: the agent's peak RSS (``VmHWM`` from ``/proc/<pid>/status``), how many of the
container's lines reached the fake Loki (and whether exactly Docker's lines, in order),
``/-/healthy`` answers during the attack, what each attack got back, and how many lines
the agent logged. Every container it started is removed at the end.

Run: ``python benchmarks/bench_hostile.py`` (``--scale 2`` doubles every attack).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent_helpers import (  # noqa: E402
    docker_config,
    docker_lines,
    free_port,
    paced_script,
    start_agent_process,
)
from hostile_helpers import HostileBodies, hostile_mix  # noqa: E402

from minilog.testing import FakeLoki  # noqa: E402

__all__ = ["main"]

IMAGE = "minilog-busybox:test"
TARGET_PEAK_RSS_MB = 256.0


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def agent_config(name: str, push_url: str, api_port: int) -> str:
    return docker_config(name, push_url) + (
        f'\nloki.source.api "in" {{\n'
        f'  http {{\n    listen_address = "127.0.0.1"\n'
        f"    listen_port = {api_port}\n  }}\n"
        f"  forward_to = [loki.write.out.receiver]\n"
        f'  labels = {{source = "api"}}\n}}\n'
    )


async def sample_rss(
    pid: int, stop: asyncio.Event, out: list[tuple[float, int]]
) -> None:
    """The agent's RSS (kB) every 0.2 s until ``stop``."""
    start = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - start, status_kb(pid, "VmRSS")))
        try:
            async with asyncio.timeout(0.2):
                await stop.wait()
        except TimeoutError:
            pass


async def probe_health(
    url: str, stop: asyncio.Event, out: list[tuple[int, float]]
) -> None:
    """``/-/healthy`` every 0.5 s: (status or 0 for no answer, seconds)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            start = time.monotonic()
            try:
                async with session.get(url + "/-/healthy") as resp:
                    await resp.read()
                    out.append((resp.status, time.monotonic() - start))
            except (aiohttp.ClientError, TimeoutError):
                out.append((0, time.monotonic() - start))
            try:
                async with asyncio.timeout(0.5):
                    await stop.wait()
            except TimeoutError:
                pass


async def run(args: argparse.Namespace) -> int:
    name = f"minilog-hostile-{uuid.uuid4().hex[:8]}"
    client = docker.from_env()
    api_port = free_port()
    nofile = args.nofile

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    # The container prints for about as long as the attack lasts.
    pause = f"{args.hold / max(1, args.lines // 500):.3f}"
    container = None
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeLoki() as loki:
            config = Path(tmp) / "agent.alloy"
            config.write_text(agent_config(name, loki.push_url, api_port))
            agent = await start_agent_process(
                config, Path(tmp) / "data", preexec_fn=limit_files
            )
            pid = agent.proc.pid
            idle_kb = status_kb(pid, "VmRSS")
            try:
                container = client.containers.run(
                    IMAGE,
                    ["sh", "-c", paced_script("n", args.lines, every=500, pause=pause)],
                    name=name,
                    labels={"minilog.test": "1"},
                    network_mode="none",
                    detach=True,
                )
                bodies = HostileBodies.build()
                await loki.wait_for_entries(100, timeout=30)
                before_attack = loki.entry_count
                stop = asyncio.Event()
                health: list[tuple[int, float]] = []
                rss: list[tuple[float, int]] = []
                prober = asyncio.create_task(probe_health(agent.url, stop, health))
                sampler = asyncio.create_task(sample_rss(pid, stop, rss))
                started = time.monotonic()
                reports = await hostile_mix(
                    "127.0.0.1", api_port, bodies, scale=args.scale, hold_s=args.hold
                )
                attack_s = time.monotonic() - started
                during = loki.entry_count - before_attack
                stop.set()
                await prober
                await sampler
                await loki.wait_for_entries(args.lines, timeout=120)
                await asyncio.sleep(2.0)  # and no more than that
                hwm_mb = status_kb(pid, "VmHWM") / 1000
                got = [
                    (e.timestamp_ns, e.line)
                    for labels, e in loki.entries
                    if labels.get("container") == name
                ]
                pushed = sum(
                    labels.get("source") == "api" for labels, _ in loki.entries
                )
                want = docker_lines(container)
                status, metrics = await agent.get("/metrics")
            finally:
                rc = await agent.stop()
                if container is not None:
                    container.remove(force=True)
                client.close()

    exact = got == want
    verdict = "exactly Docker's lines, in order" if exact else "MISMATCH"
    print(
        f"config: docker source + loki.source.api on 127.0.0.1:{api_port}, "
        f"agent nofile {nofile}:{nofile}, attack scale {args.scale}, hold {args.hold} s"
    )
    print(
        f"agent idle RSS {idle_kb / 1000:.1f} MB; peak RSS (VmHWM) {hwm_mb:.1f} MB "
        f"(target <= {TARGET_PEAK_RSS_MB:.0f} MB)"
    )
    print(
        f"container lines at the fake Loki: {len(got)} of {len(want)} "
        f"({verdict}); "
        f"{during} arrived during the {attack_s:.1f} s attack"
    )
    top = sorted(rss, key=lambda x: -x[1])[:3]
    print(
        "highest RSS samples (s into the attack, MB): "
        + ", ".join(f"{t:.1f} s {kb / 1000:.0f}" for t, kb in top)
    )
    answered = [s for s, _ in health]
    print(
        f"/-/healthy during the attack: {len(health)} probes, statuses "
        f"{sorted(set(answered))}, slowest {max(t for _, t in health):.2f} s"
    )
    for attack, report in reports.items():
        print(
            f"  {attack}: statuses {dict(report.statuses)} "
            f"errors {dict(report.errors)} closed by server {report.closed_by_server} "
            f"still open {report.still_open}"
        )
    print(f"pushed entries that reached the fake Loki: {pushed}")
    print(f"agent log lines: {len(agent.lines)}; exit code {rc}")
    for line in agent.lines[: args.show_log]:
        print("  | " + line.rstrip()[:300])
    for line in metrics.splitlines():
        if line.startswith("minilog_source_api_") and not line.startswith("#"):
            print("  " + line)
    if hwm_mb > TARGET_PEAK_RSS_MB:
        print("TARGET MISSED: peak RSS")
    return 0 if exact and rc == 0 and status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=40_000)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument(
        "--hold",
        type=float,
        default=40.0,
        help="seconds each connection attack lasts (Alloy's read timeout is 30 s)",
    )
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument(
        "--show-log", type=int, default=0, help="agent log lines to print"
    )
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
