"""Docker benchmark of the real agent process: ``python -m minilog run config.alloy``.

Owns the end-to-end figures an operator sees when minilog replaces Alloy: the agent's
own CPU and memory (read from ``/proc/<agent pid>``, not this process), dockerd's CPU,
drain throughput with an exact count, first-line latency of a new container, and an
exactly-once check across an agent restart. The receiver runs in a process of its own.

Phases (every container: ``--network none``, label ``minilog.test=1`` and a per-run
``minilog.bench=<id>[-phase]`` label, removed at the end):

(i) idle: an agent whose filter matches no container yet -> startup CPU, idle RSS.
(b) latency: that agent (``batch_wait`` 1 s), then one with ``batch_wait = "100ms"``:
    ``containers.run`` a container printing one line; time until the line reaches the
    receiver (the receiver process timestamps arrivals).
(a) drain: ``--containers`` x ``--lines`` ~110-byte JSON lines written beforehand by
    exited containers; a fresh agent drains them -> CPU (total, and minus the idle
    startup CPU of (i)), peak RSS (``VmHWM``), dockerd CPU, lines/s, exact count.
(c) restart: a new agent on the same ``--storage.path`` must send nothing again.

Run: ``python benchmarks/bench_docker.py`` (4 x 250,000); quick: ``--lines 20000``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["main"]

IMAGE = "minilog-busybox:test"
TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_QUEUE_CAPACITY = 10 << 20
DOCKER_HOST = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")

# A ~110-byte JSON line per number (Docker's timestamp travels apart from it).
AWK_LINE = (
    '{printf "{\\"ts\\":\\"2026-11-27T05:00:00.000Z\\",'
    '\\"level\\":\\"info\\",\\"svc\\":\\"api\\",'
    '\\"msg\\":\\"request handled\\",\\"path\\":\\"/api/v1/items\\",'
    '\\"n\\":%08d}\\n", $1}'
)

# Targets from the issue, per 1M lines / MB / seconds.
TARGET_CPU_PER_1M = 8.0
TARGET_PEAK_RSS_MB = 60.0
TARGET_FIRST_LINE_S = 1.0


# ---------------------------------------------------------------- /proc readings


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` in seconds (fields 14, 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: split after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    return sum(cpu_split(pid))


def status_mb(pid: int, key: str) -> float:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM) in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(key)


def find_pid(comm: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == comm:
                    return int(entry)
        except OSError:
            continue
    return None


class DockerdCPU:
    """dockerd's CPU seconds, or NaN when its process is not visible from here."""

    def __init__(self) -> None:
        self.pid = find_pid("dockerd")

    def read(self) -> float:
        if self.pid is None:
            return float("nan")
        try:
            return cpu_s(self.pid)
        except OSError:
            return float("nan")


# ---------------------------------------------------------------- receiver process


@dataclass
class Shared:
    """State the receiver process shares with this one (all process-safe)."""

    count: Any = field(default_factory=lambda: mp.Value("q", 0))
    target: Any = field(default_factory=lambda: mp.Value("q", 0))
    done: Any = field(default_factory=mp.Event)
    first_at: Any = field(default_factory=lambda: mp.Value("d", 0.0))
    done_at: Any = field(default_factory=lambda: mp.Value("d", 0.0))
    marker: Any = field(default_factory=lambda: mp.Array("c", 128))
    marker_at: Any = field(default_factory=lambda: mp.Value("d", 0.0))
    marker_seen: Any = field(default_factory=mp.Event)
    port: Any = field(default_factory=lambda: mp.Value("i", 0))
    ready: Any = field(default_factory=mp.Event)

    def expect(self, total: int) -> None:
        """Set ``done`` once ``count`` reaches ``total`` (counting from now)."""
        self.done.clear()
        self.done_at.value = 0.0
        self.first_at.value = 0.0
        with self.count.get_lock():
            self.target.value = self.count.value + total

    def arm(self, marker: str) -> None:
        """Timestamp the first arriving line that contains ``marker``."""
        self.marker_seen.clear()
        self.marker_at.value = 0.0
        self.marker.value = marker.encode()


def _receiver_main(shared: Shared) -> None:
    import asyncio

    from minilog.loki.receiver import PushReceiver
    from minilog.model import StreamBatch

    async def handler(batches: list[StreamBatch]) -> None:
        # CLOCK_MONOTONIC is system-wide on Linux: comparable with the parent's clock.
        now = time.monotonic()
        n = 0
        for b in batches:
            n += len(b.entries)
        with shared.count.get_lock():
            before = shared.count.value
            shared.count.value = total = before + n
        target = shared.target.value
        if before < target and shared.first_at.value == 0.0:
            shared.first_at.value = now
        if 0 < target <= total and not shared.done.is_set():
            shared.done_at.value = now
            shared.done.set()
        # Lines are scanned only while a latency probe is armed, never in the drain.
        if shared.marker_seen.is_set() or not shared.marker.value:
            return
        text = shared.marker.value.decode()
        for b in batches:
            for entry in b.entries:
                if text in entry.line:
                    shared.marker_at.value = now
                    shared.marker_seen.set()
                    return

    async def serve() -> None:
        receiver = PushReceiver(handler)
        await receiver.start()
        shared.port.value = receiver.port
        shared.ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


def start_receiver(shared: Shared) -> mp.Process:
    proc = mp.Process(target=_receiver_main, args=(shared,), daemon=True)
    proc.start()
    if not shared.ready.wait(30):
        proc.kill()
        raise RuntimeError("the receiver process did not start")
    return proc


# ---------------------------------------------------------------- the agent process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alloy_config(
    label: str,
    push_url: str,
    *,
    batch_wait: str | None,
    queue_capacity: int,
    logs_from: str = "auto",
) -> str:
    """The agent's config: Docker discovery of ``label`` -> docker source -> Loki."""
    endpoint = [f'    url = "{push_url}"']
    if batch_wait is not None:
        endpoint.append(f'    batch_wait = "{batch_wait}"')
    if queue_capacity != DEFAULT_QUEUE_CAPACITY:
        endpoint.append(
            f"    queue_config {{\n      capacity = {queue_capacity}\n    }}"
        )
    body = "\n".join(endpoint)
    # The relabel step gives each container its own stream: without any label left,
    # the docker source sends nothing (Loki rejects label-less streams).
    return f"""\
discovery.docker "bench" {{
  host = "{DOCKER_HOST}"
  filter {{
    name   = "label"
    values = ["{label}"]
  }}
  filter {{
    name   = "status"
    values = ["running", "exited"]
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
  logs_from  = "{logs_from}"
}}

loki.write "bench" {{
  endpoint {{
{body}
  }}
}}
"""


class AgentProcess:
    """``python -m minilog run`` as a child process, with its /proc readings."""

    def __init__(
        self, workdir: Path, name: str, config: str, storage: Path, extra: list[str]
    ) -> None:
        config_path = workdir / f"{name}.alloy"
        config_path.write_text(config, encoding="utf-8")
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self.cmd = [
            sys.executable,
            "-m",
            "minilog",
            "run",
            f"--server.http.listen-addr=127.0.0.1:{self.port}",
            f"--storage.path={storage}",
            *extra,
            str(config_path),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the agent exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, limit_s: float = 60.0) -> float:
        """Poll ``/-/ready`` every 50 ms; the monotonic time it first answered 200."""
        url = f"http://127.0.0.1:{self.port}/-/ready"
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            self.check_alive()
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as resp,
            ):
                if resp.status == 200:
                    return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"the agent was not ready in {limit_s} s")

    def wait_event(self, event: Any, limit_s: float) -> bool:
        """Wait for ``event``, failing early if the agent dies meanwhile."""
        deadline = time.monotonic() + limit_s
        while not event.wait(0.25):
            self.check_alive()
            if time.monotonic() > deadline:
                return False
        return True

    def metric(self, name: str, values: tuple[str, ...] = ()) -> float:
        """Sum of the samples of ``name`` on ``/metrics`` (with one of ``values``)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line[len(name) : len(name) + 1] not in "{ ":
                continue
            if not values or any(v in line for v in values):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu(self) -> float:
        return cpu_s(self.pid)

    def rss_mb(self) -> float:
        return status_mb(self.pid, "VmRSS")

    def hwm_mb(self) -> float:
        return status_mb(self.pid, "VmHWM")

    def stop(self, limit_s: float = 30.0) -> int:
        """SIGTERM, then the exit code (killed and -9 if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(limit_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return int(self.proc.returncode)


@contextlib.contextmanager
def agent_process(
    workdir: Path, name: str, config: str, storage: Path, extra: list[str]
) -> Iterator[AgentProcess]:
    agent = AgentProcess(workdir, name, config, storage, extra)
    try:
        yield agent
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


# ---------------------------------------------------------------- phases


@dataclass
class Results:
    """Summary rows, failed correctness checks and missed targets."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def add(self, what: str, value: str, target: str = "") -> None:
        self.rows.append((what, value, target))

    def check(self, ok: bool, message: str) -> None:
        """A correctness check: a failure makes the benchmark exit 1."""
        if not ok:
            self.failures.append(message)

    def target(self, ok: bool, message: str) -> None:
        """A target from the issue: a miss is reported, not an error."""
        if not ok:
            self.misses.append(message)


class Bench:
    """The phases of one benchmark run, their containers and their results."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:8]
        self.client = docker.from_env()
        self.containers: list[Any] = []
        self.shared = Shared()
        self.results = Results()
        self.dockerd = DockerdCPU()
        self.push_url = ""
        self.extra: list[str] = []
        if args.queue_capacity != DEFAULT_QUEUE_CAPACITY:
            self.extra.append("--stability.level=experimental")
        self.idle_cpu = 0.0
        #: Agent name -> (command line, config text).
        self.commands: dict[str, tuple[str, str]] = {}

    def label(self, phase: str) -> str:
        return f"{self.run_id}-{phase}" if phase else self.run_id

    def run_container(self, phase: str, command: list[str]) -> Any:
        container = self.client.containers.run(
            IMAGE,
            command,
            detach=True,
            network_mode="none",
            labels={"minilog.test": "1", "minilog.bench": self.label(phase)},
        )
        self.containers.append(container)
        return container

    def config(self, phase: str, batch_wait: str | None = None) -> str:
        return alloy_config(
            f"minilog.bench={self.label(phase)}",
            self.push_url,
            batch_wait=batch_wait,
            queue_capacity=self.args.queue_capacity,
            logs_from=self.args.logs_from,
        )

    @contextlib.contextmanager
    def agent(
        self, name: str, config: str, storage: Path | None = None
    ) -> Iterator[AgentProcess]:
        storage = storage or self.workdir / f"{name}-data"
        with agent_process(self.workdir, name, config, storage, self.extra) as agent:
            self.commands[name] = (shlex.join(agent.cmd), config)
            yield agent

    def make_backlog(self) -> None:
        args = self.args
        t0 = time.monotonic()
        cmd = f"seq 1 {args.lines} | awk '{AWK_LINE}'"
        started = [
            self.run_container("", ["sh", "-c", cmd]) for _ in range(args.containers)
        ]
        for c in started:
            status = c.wait()
            if status.get("StatusCode") != 0:
                raise RuntimeError(f"backlog container exited with {status}")
        took = time.monotonic() - t0
        print(
            f"backlog: {args.containers} x {args.lines:,} lines written and exited "
            f"in {took:.1f} s"
        )

    def idle_and_latency(self, phase: str, batch_wait: str | None) -> None:
        wait_text = batch_wait or "1s (default)"
        with self.agent(f"latency-{phase}", self.config(phase, batch_wait)) as agent:
            ready_at = agent.wait_ready()
            cpu_ready, rss_ready = agent.cpu(), agent.rss_mb()
            # Let startup settle (the first discovery pass and its publish, after
            # which discovery throttles publishes to one a second).
            time.sleep(2.0)
            if phase == "1s":
                self.idle_cpu = agent.cpu()
                res = self.results
                res.add("agent start -> /-/ready", f"{ready_at - agent.started:.2f} s")
                res.add("agent CPU at ready (startup)", f"{cpu_ready:.2f} s")
                res.add(
                    "agent CPU 2 s after ready (idle baseline)",
                    f"{self.idle_cpu:.2f} s",
                )
                res.add("agent idle RSS at ready", f"{rss_ready:.1f} MB")
                res.add("agent idle RSS 2 s after ready", f"{agent.rss_mb():.1f} MB")
            latencies: list[float] = []
            returned: list[float] = []
            for k in range(self.args.latency_runs):
                marker = f"minilog-bench-{self.run_id}-{phase}-{k}"
                self.shared.arm(marker)
                t0 = time.monotonic()
                self.run_container(phase, ["echo", marker])
                returned.append(time.monotonic() - t0)
                if not agent.wait_event(self.shared.marker_seen, 30):
                    self.results.check(False, f"latency line {marker} never arrived")
                    continue
                latencies.append(self.shared.marker_at.value - t0)
                # Discovery publishes at most once a second: keep the probes apart so
                # each one measures an isolated new container.
                time.sleep(1.5)
            rc = agent.stop()
            self.results.check(rc == 0, f"latency agent ({phase}) exited with {rc}")
        if latencies:
            self.results.add(
                f"first line: containers.run -> receiver, batch_wait {wait_text} "
                f"(median of {len(latencies)})",
                f"{median(latencies):.3f} s  ["
                + ", ".join(f"{x:.3f}" for x in latencies)
                + "]",
                f"<= {TARGET_FIRST_LINE_S:g} s",
            )
            self.results.add(
                "  of which containers.run() itself (median)",
                f"{median(returned):.3f} s",
            )
            self.results.target(
                median(latencies) <= TARGET_FIRST_LINE_S,
                f"first-line latency with batch_wait {wait_text} above target",
            )

    def drain(self) -> Path:
        args, shared, res = self.args, self.shared, self.results
        total = args.lines * args.containers
        storage = self.workdir / "drain-data"
        shared.expect(total)
        base = shared.count.value
        d0 = self.dockerd.read()
        with self.agent("drain", self.config(""), storage) as agent:
            ok = agent.wait_event(shared.done, args.limit_s)
            (user, system), hwm = cpu_split(agent.pid), agent.hwm_mb()
            d1 = self.dockerd.read()
            cpu = user + system
            if not ok:
                raise RuntimeError(
                    f"drain timed out: {shared.count.value - base:,} of {total:,}"
                )
            # Any duplicate would arrive within a batch_wait (1 s) or two.
            time.sleep(2.5)
            got = shared.count.value - base
            hwm = max(hwm, agent.hwm_mb())
            rc = agent.stop()
        done_at, first_at = shared.done_at.value, shared.first_at.value
        wall = done_at - agent.started
        net = cpu - self.idle_cpu
        per_m = 1e6 / total
        res.add("lines drained", f"{got:,} of {total:,}", "exactly")
        res.check(got == total, f"drain received {got:,}, expected {total:,}")
        res.add(
            "drain wall (agent start -> last line)",
            f"{wall:.2f} s = {total / wall:,.0f} lines/s",
        )
        res.add(
            "drain rate (first line -> last line at receiver)",
            f"{total / (done_at - first_at):,.0f} lines/s",
        )
        res.add(
            "agent CPU, total (start -> last line)",
            f"{cpu:.2f} s = {cpu * per_m:.2f} s per 1M lines "
            f"(user {user:.2f}, sys {system:.2f})",
        )
        res.add(
            "agent CPU, minus idle baseline",
            f"{net:.2f} s = {net * per_m:.2f} s per 1M lines",
            f"<= {TARGET_CPU_PER_1M:g} s per 1M",
        )
        res.add(
            "agent peak RSS (VmHWM)",
            f"{hwm:.1f} MB = {hwm * 1e6 / 2**20:.1f} MiB",
            f"<= {TARGET_PEAK_RSS_MB:g} MB",
        )
        ddocker = d1 - d0
        res.add(
            "dockerd CPU over the same window",
            f"{ddocker:.2f} s = {ddocker * per_m:.2f} s per 1M lines",
        )
        res.add("agent exit code after SIGTERM", str(rc), "0")
        res.check(rc == 0, f"drain agent exited with {rc}")
        res.target(net * per_m <= TARGET_CPU_PER_1M, "CPU per 1M lines above target")
        res.target(hwm <= TARGET_PEAK_RSS_MB, "peak RSS above target")
        return storage

    def restart(self, storage: Path) -> None:
        """A second agent on the same storage resumes every container, sends nothing."""
        res = self.results
        base = self.shared.count.value
        d0 = self.dockerd.read()
        with self.agent("restart", self.config(""), storage) as agent:
            agent.wait_ready()
            deadline = time.monotonic() + 20
            # Wait until every backlog container resumed from its stored position;
            # anything it re-sent would then arrive within the 2.5 s below.
            while time.monotonic() < deadline:
                agent.check_alive()
                with contextlib.suppress(OSError):
                    resumed = agent.metric(
                        "minilog_source_docker_resumes_total", ('"since"', '"window"')
                    )
                    if resumed >= self.args.containers:
                        break
                time.sleep(0.2)
            else:
                res.check(False, "restart: resumes not seen on /metrics in 20 s")
            time.sleep(2.5)
            d1 = self.dockerd.read()
            cpu = agent.cpu()
            rc = agent.stop()
        again = self.shared.count.value - base
        res.add(
            "restart on same storage: lines sent again",
            f"{again:,}",
            "0 (exactly once)",
        )
        res.add("restart: agent CPU / dockerd CPU", f"{cpu:.2f} s / {d1 - d0:.2f} s")
        res.check(again == 0, f"restart re-sent {again:,} lines")
        res.check(rc == 0, f"restart agent exited with {rc}")

    def cleanup(self) -> None:
        for c in self.containers:
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        self.client.close()


def print_summary(bench: Bench, argv: list[str]) -> None:
    res = bench.results
    print()
    print("command:  " + shlex.join([sys.executable, *argv]))
    if "drain" in bench.commands:
        cmd, config = bench.commands["drain"]
        print("agent:    " + cmd)
        print("          (latency and restart agents: same shape; 100ms run adds")
        print('          batch_wait = "100ms" to the endpoint block)')
        print("config:")
        for line in config.splitlines():
            print(f"    {line}" if line else "")
    print(f"receiver: PushReceiver (counting handler) in process, {bench.push_url}")
    print(f"cpus:     {os.cpu_count()} (agent, receiver and dockerd share them)")
    width = max(len(r[0]) for r in res.rows) if res.rows else 10
    vwidth = max(len(r[1]) for r in res.rows) if res.rows else 10
    print()
    print(f"{'measure':<{width}}  {'value':<{vwidth}}  target")
    print(f"{'-' * width}  {'-' * vwidth}  ------")
    for what, value, target in res.rows:
        print(f"{what:<{width}}  {value:<{vwidth}}  {target}")
    print()
    for miss in res.misses:
        print(f"TARGET MISSED: {miss}")
    for failure in res.failures:
        print(f"FAILED: {failure}")
    if not res.misses and not res.failures:
        print("all checks passed, all targets met")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=250_000, help="per container")
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument(
        "--latency-runs", type=int, default=3, help="per batch_wait (0: skip)"
    )
    parser.add_argument("--limit-s", type=float, default=600.0, help="drain time limit")
    parser.add_argument(
        "--queue-capacity",
        type=int,
        default=DEFAULT_QUEUE_CAPACITY,
        help="loki.write queue_config capacity in bytes (default: Alloy's 10 MiB; "
        "another value runs the agent with --stability.level=experimental)",
    )
    parser.add_argument(
        "--no-restart", action="store_true", help="skip the restart check (c)"
    )
    parser.add_argument(
        "--logs-from",
        choices=("auto", "api", "file"),
        default="auto",
        help="loki.source.docker's logs_from: the json-file on disk (auto, file) "
        "or the Engine API (api)",
    )
    args = parser.parse_args(argv[1:])
    if not os.path.exists("/var/run/docker.sock") and "DOCKER_HOST" not in os.environ:
        print("bench_docker: no Docker (/var/run/docker.sock, DOCKER_HOST)")
        return 2
    with tempfile.TemporaryDirectory(prefix="minilog-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        receiver = start_receiver(bench.shared)
        bench.push_url = f"http://127.0.0.1:{bench.shared.port.value}/loki/api/v1/push"
        try:
            bench.make_backlog()
            bench.idle_and_latency("1s", None)
            if args.latency_runs:
                bench.idle_and_latency("100ms", "100ms")
            storage = bench.drain()
            if not args.no_restart:
                bench.restart(storage)
            bench.results.add(
                "receiver process CPU (all phases)",
                f"{cpu_s(receiver.pid or 0):.2f} s",
            )
        finally:
            bench.cleanup()
            receiver.kill()
            receiver.join()
        print_summary(bench, argv)
    return 1 if bench.results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
