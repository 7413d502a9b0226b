"""Latency benchmark: Docker's timestamp of each line -> Loki acknowledged it.

Owns the figures of issue 15: at a steady input rate, how long a line takes from
dockerd's timestamp to Loki's 2xx answer to the push that holds it (Loki answers only
after its ingester appended the entries, so the next query returns them: the line is
queryable), and what that costs: requests per second, bytes and lines per request, and
the CPU the agent and Loki spend per million lines.

Everything runs on this machine: a real Loki 3.6 (``tests/real_loki.py``: ``LOKI_BIN``,
``loki`` on PATH, or the image) on free ports; a recording proxy in this process in
front of it, which forwards every request and keeps each acknowledged push with the
wall time Loki's answer came back; per variant, one agent ``python -m minilog run``
from that variant's source tree (``PYTHONPATH`` = the tree) whose ``loki.write`` pushes
to the proxy; generator containers (``minilog-busybox:test``, ``--network none``, label
``minilog.test=1``) that write numbered ~150-byte logfmt lines at a steady rate, paced
on ``/proc/uptime`` (10 ms steps).

Per variant and rate, ``--containers`` generators share the rate for ``--warmup-s`` +
``--seconds``; only the last ``--seconds`` count (the window): lines whose Docker
timestamp falls in it give the percentiles, pushes acknowledged in it the request
figures, and the agent's and Loki's CPU time (``/proc/<pid>/stat``) over it the CPU
per million lines. ``--repeat`` runs the variants in turn that many times (A B A B),
so a before/after comparison sees the same noise.

Run: ``python benchmarks/bench_latency.py --variant before=/tmp/old-tree
--variant after=.`` (each ``NAME=TREE``, optionally followed by ``;``-separated lines
for the ``endpoint`` block, e.g. ``'off=.;adaptive_batching = false'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from real_loki import launcher_or_reason, running_loki  # noqa: E402

from minilog.loki.wire import decode_push_request, decompress  # noqa: E402

__all__ = ["main"]

IMAGE = "minilog-busybox:test"
TICKS = os.sysconf("SC_CLK_TCK")
DOCKER_HOST = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
PUSH_PATH = "/loki/api/v1/push"
NS = 1_000_000_000
#: The issue's targets, milliseconds.
TARGET_P50_MS = 100.0
TARGET_P99_MS = 300.0

# One awk program: COUNT lines at RATE per second, paced on /proc/uptime (10 ms
# resolution), each naming its generator and sequence number; fields vary with the
# number so that batches compress as real logs do.
_AWK = r"""
BEGIN {
  n = COUNT + 0; rate = RATE + 0
  getline u < "/proc/uptime"; close("/proc/uptime"); split(u, a, " "); t0 = a[1]
  s = 1
  while (s <= n) {
    getline u < "/proc/uptime"; close("/proc/uptime"); split(u, a, " ")
    due = int((a[1] - t0) * rate) + 1
    if (due > n) due = n
    if (s > due) { system("usleep 5000"); continue }
    for (; s <= due; s++) {
      printf "level=%s gen=%s seq=%d caller=orders.go:%d", \
        (s % 7 ? "info" : "warn"), GEN, s, 100 + s % 400
      printf " msg=\"order state changed\" order_id=%d customer=c-%d", \
        500000 + s, s % 9973
      printf " duration_ms=%d trace_id=%08x%08x\n", \
        (s * 37) % 900 + 3, (s * 7919) % 2147483647, (s * 104729) % 2147483647
    }
    fflush()
  }
}
"""
_LINE = re.compile(r"gen=(\S+) seq=(\d+)")


def generator_command(gen: str, count: int, rate: float) -> list[str]:
    return [
        "sh",
        "-c",
        f"awk -v GEN={gen} -v COUNT={count} -v RATE={rate:g} '{_AWK}'",
    ]


# ---------------------------------------------------------------- /proc readings


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pid_with_arg(text: str) -> int | None:
    """The process whose command line holds ``text`` (Loki, by its config path)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    return int(entry)
        except OSError:
            continue
    return None


# ---------------------------------------------------------------- the proxy


@dataclass
class Push:
    ack_ns: int
    status: int
    size: int
    body: bytes


class RecordingProxy:
    """Forwards everything to Loki; keeps every push with when Loki answered it.

    Runs its own event loop in a thread, so the benchmark's sleeps and Docker calls
    never delay an answer.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.pushes: list[Push] = []
        self.lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.push_url = f"http://127.0.0.1:{self.port}{PUSH_PATH}"
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False
        )
        app = web.Application(client_max_size=64 << 20)

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length", "transfer-encoding")
            }
            async with session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                data=body,
                headers=headers,
            ) as answer:
                text = await answer.read()
                status = answer.status
                if request.method == "POST" and request.path == PUSH_PATH:
                    push = Push(time.time_ns(), status, len(body), body)
                    with self.lock:
                        self.pushes.append(push)
                return web.Response(status=status, body=text)

        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await session.close()

    def taken(self, start: int) -> list[Push]:
        with self.lock:
            return self.pushes[start:]


class Acks:
    """Per (generator, seq): Docker's timestamp and the first acknowledgement."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], tuple[int, int]] = {}
        self.read = 0
        self.per_gen: dict[str, int] = {}

    def update(self, proxy: RecordingProxy) -> None:
        new = proxy.taken(self.read)
        self.read += len(new)
        for push in new:
            if not 200 <= push.status < 300:
                continue
            for _, entries in decode_push_request(decompress(push.body)):
                for entry in entries:
                    found = _LINE.search(entry.line)
                    if found is None:
                        continue
                    key = (found.group(1), int(found.group(2)))
                    if key not in self.seen:
                        self.seen[key] = (entry.timestamp_ns, push.ack_ns)
                        self.per_gen[key[0]] = self.per_gen.get(key[0], 0) + 1


# ---------------------------------------------------------------- the agent


def alloy_config(label: str, push_url: str, endpoint_lines: list[str]) -> str:
    endpoint = "\n".join(
        [f'    url = "{push_url}"', *(f"    {line}" for line in endpoint_lines)]
    )
    return f"""\
discovery.docker "bench" {{
  host = "{DOCKER_HOST}"
  filter {{
    name   = "label"
    values = ["{label}"]
  }}
}}

discovery.relabel "bench" {{
  targets = discovery.docker.bench.targets
  rule {{
    source_labels = ["__meta_docker_container_name"]
    regex         = "/(.*)"
    target_label  = "container"
  }}
}}

loki.source.docker "bench" {{
  host       = "{DOCKER_HOST}"
  targets    = discovery.relabel.bench.output
  forward_to = [loki.write.bench.receiver]
}}

loki.write "bench" {{
  endpoint {{
{endpoint}
  }}
}}
"""


@dataclass
class Variant:
    name: str
    tree: Path
    endpoint: list[str]

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, sep, rest = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"NAME=TREE[;line...], got {text!r}")
        tree, *lines = rest.split(";")
        path = Path(tree).resolve()
        if not (path / "minilog" / "__main__.py").exists():
            raise argparse.ArgumentTypeError(f"{path} holds no minilog package")
        return cls(name, path, [line.strip() for line in lines if line.strip()])


class Agent:
    def __init__(self, variant: Variant, workdir: Path, config: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "config.alloy"
        path.write_text(config)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.cmd = [
            sys.executable,
            "-m",
            "minilog",
            "run",
            f"--server.http.listen-addr=127.0.0.1:{self.port}",
            f"--storage.path={workdir / 'data'}",
            str(path),
        ]
        self.log_path = workdir / "agent.log"
        env = {**os.environ, "PYTHONPATH": str(variant.tree)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=variant.tree,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, limit_s: float = 60.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited:\n{self.log_path.read_text()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("agent not ready")

    def cpu(self) -> float:
        return cpu_s(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


# ---------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return float("nan")
    index = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[index]


@dataclass
class Result:
    variant: str
    repeat: int
    rate: int
    lines: int = 0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    requests_per_s: float = 0.0
    kb_per_request: float = 0.0
    lines_per_request: float = 0.0
    agent_cpu_per_m: float = float("nan")
    loki_cpu_per_m: float = float("nan")
    lost: int = 0
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:8]
        self.client = docker.from_env()
        self.containers: list[Any] = []
        self.results: list[Result] = []

    def measure(
        self,
        variant: Variant,
        repeat: int,
        proxy: RecordingProxy,
        loki_pid: int | None,
    ) -> None:
        args = self.args
        label = f"{self.run_id}-{variant.name}-{repeat}"
        config = alloy_config(
            f"minilog.bench={label}", proxy.push_url, variant.endpoint
        )
        agent = Agent(variant, self.workdir / label, config)
        acks = Acks()
        acks.read = len(proxy.taken(0))
        try:
            agent.wait_ready()
            time.sleep(1.0)
            for rate in args.rates:
                self.results.append(
                    self.one_rate(
                        variant, repeat, rate, label, agent, proxy, acks, loki_pid
                    )
                )
        finally:
            rc = agent.stop()
            if rc != 0:
                print(f"{variant.name}: agent exited with {rc}", file=sys.stderr)

    def one_rate(
        self,
        variant: Variant,
        repeat: int,
        rate: int,
        label: str,
        agent: Agent,
        proxy: RecordingProxy,
        acks: Acks,
        loki_pid: int | None,
    ) -> Result:
        args = self.args
        res = Result(variant.name, repeat, rate)
        per = rate / args.containers
        count = int(per * (args.warmup_s + args.seconds))
        gens = [f"{label}-{rate}-{i}" for i in range(args.containers)]
        first_push = len(proxy.taken(0))
        started = time.time_ns()
        for gen in gens:
            self.containers.append(
                self.client.containers.run(
                    IMAGE,
                    generator_command(gen, count, per),
                    detach=True,
                    network_mode="none",
                    labels={"minilog.test": "1", "minilog.bench": label},
                )
            )
        window0 = started + int(args.warmup_s * NS)
        window1 = window0 + int(args.seconds * NS)
        time.sleep(max(0.0, (window0 - time.time_ns()) / NS))
        cpu0 = agent.cpu()
        loki0 = cpu_s(loki_pid) if loki_pid else float("nan")
        time.sleep(max(0.0, (window1 - time.time_ns()) / NS))
        cpu1 = agent.cpu()
        loki1 = cpu_s(loki_pid) if loki_pid else float("nan")
        deadline = time.monotonic() + args.settle_s
        while True:
            acks.update(proxy)
            if all(acks.per_gen.get(g, 0) >= count for g in gens):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        got = sum(acks.per_gen.get(g, 0) for g in gens)
        res.lost = count * len(gens) - got
        if res.lost:
            res.notes.append(f"{res.lost} lines not acknowledged in {args.settle_s} s")
        latencies = sorted(
            (ack - ts) / 1e6
            for (gen, _), (ts, ack) in acks.seen.items()
            if gen in gens and window0 <= ts < window1
        )
        res.lines = len(latencies)
        if latencies:
            res.p50_ms = percentile(latencies, 50)
            res.p90_ms = percentile(latencies, 90)
            res.p99_ms = percentile(latencies, 99)
            res.max_ms = latencies[-1]
        pushes = [
            p
            for p in proxy.taken(first_push)
            if window0 <= p.ack_ns < window1 and 200 <= p.status < 300
        ]
        if pushes:
            span = (window1 - window0) / NS
            res.requests_per_s = len(pushes) / span
            res.kb_per_request = sum(p.size for p in pushes) / len(pushes) / 1024
            res.lines_per_request = res.lines / len(pushes)
        if res.lines:
            res.agent_cpu_per_m = (cpu1 - cpu0) / res.lines * 1e6
            res.loki_cpu_per_m = (loki1 - loki0) / res.lines * 1e6
        for c in list(self.containers):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
            self.containers.remove(c)
        print(describe(res), flush=True)
        time.sleep(2.0)
        return res

    def cleanup(self) -> None:
        for c in self.containers:
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        self.client.close()


def describe(r: Result) -> str:
    return (
        f"{r.variant:<12} #{r.repeat} {r.rate:>6,}/s  lines {r.lines:>7,}  "
        f"p50 {r.p50_ms:7.1f}  p90 {r.p90_ms:7.1f}  p99 {r.p99_ms:7.1f}  "
        f"max {r.max_ms:7.1f} ms  {r.requests_per_s:6.2f} req/s  "
        f"{r.kb_per_request:7.1f} KiB/req  {r.lines_per_request:7.1f} lines/req  "
        f"agent {r.agent_cpu_per_m:6.2f}  loki {r.loki_cpu_per_m:6.2f} CPU s/1M"
        + (f"  [{'; '.join(r.notes)}]" if r.notes else "")
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary(results: list[Result]) -> Iterator[str]:
    """Medians over the repeats, per variant and rate, and the targets."""
    keys = sorted({(r.variant, r.rate) for r in results}, key=lambda k: (k[1], k[0]))
    for variant, rate in keys:
        rs = [r for r in results if r.variant == variant and r.rate == rate]
        m = Result(variant, len(rs), rate)
        for name in (
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "requests_per_s",
            "kb_per_request",
            "lines_per_request",
            "agent_cpu_per_m",
            "loki_cpu_per_m",
        ):
            setattr(m, name, median([getattr(r, name) for r in rs]))
        m.lines = sum(r.lines for r in rs)
        m.lost = sum(r.lost for r in rs)
        missed = []
        if not m.p50_ms <= TARGET_P50_MS:
            missed.append(f"p50 > {TARGET_P50_MS:g} ms")
        if not m.p99_ms <= TARGET_P99_MS:
            missed.append(f"p99 > {TARGET_P99_MS:g} ms")
        if m.lost:
            missed.append(f"{m.lost} lines lost")
        m.notes = missed
        yield describe(m).replace(f"#{len(rs)}", f"x{len(rs)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        type=Variant.parse,
        help="NAME=TREE[;endpoint line...] (repeatable; default: this tree)",
    )
    parser.add_argument(
        "--rates",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1000, 10000],
        help="total lines/s, comma-separated (1000,10000)",
    )
    parser.add_argument("--containers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="window per rate")
    parser.add_argument("--warmup-s", type=float, default=4.0)
    parser.add_argument("--settle-s", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args(argv[1:])
    variants: list[Variant] = args.variants or [Variant("this", ROOT, [])]
    launcher = launcher_or_reason()
    if isinstance(launcher, str):
        print(f"bench_latency: {launcher}")
        return 2
    with tempfile.TemporaryDirectory(prefix="minilog-latency-") as tmp:
        work = Path(tmp)
        bench = Bench(args, work)
        with running_loki(launcher, work / "loki") as loki:
            loki_pid = pid_with_arg(str(loki.workdir / "loki.yaml"))
            proxy = RecordingProxy(loki.base_url)
            proxy.start()
            try:
                for repeat in range(1, args.repeat + 1):
                    for variant in variants:
                        bench.measure(variant, repeat, proxy, loki_pid)
            finally:
                bench.cleanup()
                proxy.stop()
    print()
    print("command: " + shlex.join([sys.executable, *argv]))
    for v in variants:
        extra = "; ".join(v.endpoint) or "defaults"
        print(f"variant {v.name}: PYTHONPATH={v.tree} (endpoint: {extra})")
    print(
        f"{args.containers} containers share each rate; {args.warmup_s:g} s warm-up, "
        f"{args.seconds:g} s window; medians over {args.repeat} run(s); latency = "
        "Docker timestamp -> Loki's 2xx for the push; CPU s per 1M lines"
    )
    for line in summary(bench.results):
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps([r.__dict__ for r in bench.results], indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
