"""One measured run: an agent, its generators, the proxy, and the readings.

Owns the orchestration shared by every profile (``profiles`` says what each profile
does with it): start the fault proxy and the agent, start generator containers, sample
the agent's memory and CPU every half second, wait for delivery, inject faults (Loki
stopped, the proxy down, 429s, slow answers, the agent killed), and at the end count
exactly: per generator from what Loki holds (``query_range``, paged) and from the push
bodies Loki acknowledged (which also give lines sent twice, latency and throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from minilog.bench.agents import AgentRunner, Resolved, WriteSettings
from minilog.bench.analysis import Acks
from minilog.bench.counting import Tally
from minilog.bench.dockerapi import DockerAPI
from minilog.bench.lines import generator_command, parse_line
from minilog.bench.lokiapi import LokiAPI
from minilog.bench.lokiproc import LokiProcess
from minilog.bench.procstats import CpuSource, find_pids
from minilog.bench.progress import Progress
from minilog.bench.proxy import FaultProxy, recorded
from minilog.bench.wire import decode_push
from minilog.errors import BenchError

__all__ = ["GENERATOR_IMAGES", "Bench", "Options", "Run", "Sample"]

#: Generator images, first found wins: the test image, then busybox.
GENERATOR_IMAGES = ("minilog-busybox:test", "busybox:1.35", "busybox:latest")
Sink = Literal["loki", "null"]
SAMPLE_EVERY_S = 0.5


@dataclass
class Options:
    """What a bench invocation runs; profiles read the fields that concern them."""

    out: Path
    sink: Sink = "loki"
    # Fault profiles (outage, throttle, slow, kill).
    containers: int = 2
    rate: float = 1000.0  # lines/s per container
    fault_s: float = 60.0
    pre_s: float = 10.0
    post_s: float = 10.0
    kill_at: float = 0.5  # fraction of the outage at which the agent is killed
    retry_after_s: int = 2
    slow_delay_s: float = 2.0
    write: WriteSettings = field(default_factory=WriteSettings)
    # drain
    drain_containers: int = 4
    drain_lines: int = 200_000
    # steady: total lines/s over steady_containers, each step steady_step_s long
    steady_rates: tuple[int, ...] = (1000, 5000, 20000, 50000, 100000)
    steady_containers: int = 4
    steady_step_s: float = 15.0
    steady_grace_s: float = 10.0
    # latency
    latency_rates: tuple[int, ...] = (1000, 10000)
    latency_s: float = 10.0
    latency_probes: int = 3
    # Time allowed for delivery to finish after the input stopped.
    settle_limit_s: float = 300.0


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    hwm_mb: float
    cpu_s: float
    delivered: int  # live count (duplicates included)


class Bench:
    """What every run of one invocation shares: Docker, Loki, dockerd's CPU."""

    def __init__(self, options: Options, progress: Progress) -> None:
        self.options = options
        self.progress = progress
        self.docker = DockerAPI()
        self.loki: LokiProcess | None = None
        self.loki_url: str | None = None
        self.loki_api: LokiAPI | None = None
        self.run_id = uuid.uuid4().hex[:6]
        self.image = ""
        dockerd = find_pids("dockerd")
        self.dockerd = CpuSource(pids=dockerd, children=False)
        self.dockerd_visible = bool(dockerd)

    async def setup(
        self, loki: LokiProcess | None, loki_url: str | None = None
    ) -> None:
        await self.docker.ping()
        for image in GENERATOR_IMAGES:
            if await self.docker.image_exists(image):
                self.image = image
                break
        else:
            raise BenchError(
                "no generator image: build minilog-busybox:test "
                "(scripts/build-test-image) or `docker pull busybox:1.35`"
            )
        self.loki = loki
        self.loki_url = loki.base_url if loki is not None else loki_url
        if self.loki_url is not None:
            self.loki_api = LokiAPI(self.loki_url, os.environ.get("LOKI_TENANT", ""))

    async def aclose(self) -> None:
        # Whatever a crashed run left: every container of this invocation.
        with contextlib.suppress(BenchError):
            for cid in await self.docker.list_ids(
                f"minilog.bench.invocation={self.run_id}"
            ):
                await self.docker.remove(cid)
        if self.loki_api is not None:
            await self.loki_api.aclose()
        await self.docker.aclose()


def _label_safe(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40] or "agent"


class Run:
    """One agent x one profile. ``async with``; everything started is stopped."""

    def __init__(self, bench: Bench, resolved: Resolved, profile: str) -> None:
        self.bench = bench
        self.resolved = resolved
        self.profile = profile
        name = _label_safe(resolved.spec.name)
        self.run = f"{bench.run_id}-{name}-{profile}"
        self.workdir = bench.options.out / "work" / name / profile
        self.workdir.mkdir(parents=True, exist_ok=True)
        upstream = bench.loki_url if bench.options.sink == "loki" else None
        self.proxy = FaultProxy(upstream, self.workdir / "acks.bin")
        self.proxy.delay_s = bench.options.slow_delay_s
        self.proxy.retry_after_s = bench.options.retry_after_s
        self.agent = AgentRunner(
            resolved,
            self.workdir,
            self.run,
            self.proxy.push_url,
            bench.options.write,
            bench.docker,
        )
        self.gens: dict[str, tuple[str, int]] = {}  # gen -> (container id, count)
        self.samples: list[Sample] = []
        self.windows: list[tuple[float, float, str]] = []  # fault windows, s from t0
        self.events: list[tuple[float, str]] = []
        self.expected = 0
        self.t0_ns = 0
        self._sampler: asyncio.Task[None] | None = None
        self.agent_running = False

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Run:
        await self.proxy.start()
        self.t0_ns = time.time_ns()
        self.bench.progress.begin(self.resolved.spec.name, self.profile)
        self._sampler = asyncio.create_task(self._sample_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.agent_running:
            await self.stop_agent()
        await self.remove_generators()
        await self.proxy.aclose()

    def now_s(self) -> float:
        return (time.time_ns() - self.t0_ns) / 1e9

    def event(self, what: str) -> None:
        self.events.append((self.now_s(), what))

    def phase(self, phase: str) -> None:
        self.event(phase)
        self.bench.progress.set_phase(phase, self.proxy.acked_lines, self.expected)

    async def _sample_loop(self) -> None:
        while True:
            cpu = self.agent.cpu.read() if self.agent_running else math.nan
            self.samples.append(
                Sample(
                    self.now_s(),
                    self.agent.rss_mb(),
                    self.agent.hwm_mb(),
                    cpu,
                    self.proxy.acked_lines,
                )
            )
            self.bench.progress.update(self.proxy.acked_lines, self.expected)
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def start_agent(self) -> float:
        seconds = await self.agent.start()
        self.agent_running = True
        self.event("agent ready")
        return seconds

    async def stop_agent(self) -> int | None:
        self.agent_running = False
        code = await self.agent.stop()
        self.event("agent stopped")
        return code

    async def kill_agent(self) -> None:
        self.agent_running = False
        await self.agent.kill9()
        self.event("agent killed (SIGKILL)")

    # -- generators ------------------------------------------------------------------

    async def add_generators(self, names: list[str], count: int, rate: float) -> None:
        """Start one container per name writing ``count`` lines at ``rate``/s each."""
        docker = self.bench.docker
        for gen in names:
            cid = await docker.create(
                self.bench.image,
                generator_command(gen, count, rate),
                labels={
                    "minilog.test": "1",
                    "minilog.bench": "generator",
                    "minilog.bench.run": self.run,
                    "minilog.bench.invocation": self.bench.run_id,
                },
                name=f"mb-{self.run}-{gen}",
                network_mode="none",
            )
            self.gens[gen] = (cid, count)
            self.expected += count
        for gen in names:
            await docker.start(self.gens[gen][0])

    async def wait_written(self, names: list[str], limit_s: float) -> None:
        """Until each generator's last line is its last number.

        Raises:
            BenchError: one did not finish within ``limit_s``.
        """
        deadline = time.monotonic() + limit_s
        pending = list(names)
        while pending:
            gen = pending[0]
            cid, count = self.gens[gen]
            last = await self.bench.docker.last_lines(cid, 1)
            parsed = parse_line(last[-1]) if last else None
            if count == 0 or (parsed is not None and parsed[1] >= count):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise BenchError(
                    f"generator {gen} did not write its {count} lines in "
                    f"{limit_s:.0f} s"
                )
            await asyncio.sleep(0.2)

    async def remove_generators(self) -> None:
        for cid, _ in self.gens.values():
            with contextlib.suppress(BenchError):
                await self.bench.docker.remove(cid)

    # -- waiting ---------------------------------------------------------------------

    async def wait_delivered(
        self, expected: int, quiet_s: float, limit_s: float
    ) -> bool:
        """Until Loki acknowledged ``expected`` lines (live count) and nothing came
        for 1 s, or nothing came for ``quiet_s``, or ``limit_s`` passed. True when the
        live count got there."""
        t0 = time.monotonic()
        last_count = -1
        last_change = t0
        while True:
            count = self.proxy.acked_lines
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            if count >= expected and now - last_change >= 1.0:
                return True
            if now - last_change >= quiet_s or now - t0 >= limit_s:
                return count >= expected
            await asyncio.sleep(0.1)

    async def wait_count(self, expected: int, limit_s: float) -> float:
        """Until the live count reaches ``expected``; the wall ns it did (0: never)."""
        deadline = time.monotonic() + limit_s
        while self.proxy.acked_lines < expected:
            if time.monotonic() > deadline:
                return 0.0
            await asyncio.sleep(0.05)
        return time.time_ns()

    # -- faults ----------------------------------------------------------------------

    async def outage(
        self, seconds: float, kill_at: float | None
    ) -> tuple[float, float]:
        """The proxy refuses connections and Loki is stopped for ``seconds``; with
        ``kill_at``, the agent is killed that far into it and restarted at once. Loki
        restarts on the same ports and data; the proxy listens again once Loki is
        ready. Returns the window (s since t0): proxy down, proxy back."""
        loki = self.bench.loki
        start = self.now_s()
        await self.proxy.go_down()
        if loki is not None and self.bench.options.sink == "loki":
            await loki.stop()
        self.event("Loki stopped")
        self.phase("outage (Loki stopped)")
        stopped_at = time.monotonic()
        if kill_at is not None:
            await asyncio.sleep(seconds * kill_at)
            await self.kill_agent()
            self.phase("outage: agent killed, restarting")
            self.agent.restarts += 1
            await self.start_agent()
            self.phase("outage (agent restarted)")
        remaining = seconds - (time.monotonic() - stopped_at)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if loki is not None and self.bench.options.sink == "loki":
            self.phase("Loki starting")
            await loki.start()
        await self.proxy.come_back()
        end = self.now_s()
        self.windows.append((start, end, "Loki away"))
        self.phase("after the outage")
        return start, end

    async def proxy_fault(
        self, mode: Literal["throttle", "slow"], seconds: float
    ) -> tuple[float, float]:
        start = self.now_s()
        self.proxy.mode = mode
        label = (
            "429 + Retry-After"
            if mode == "throttle"
            else f"answers +{self.proxy.delay_s:g} s"
        )
        self.phase(f"{mode} ({label})")
        await asyncio.sleep(seconds)
        self.proxy.mode = "pass"
        end = self.now_s()
        self.windows.append((start, end, label))
        self.phase(f"after {mode}")
        return start, end

    # -- counting --------------------------------------------------------------------

    def written(self, gens: list[str] | None = None) -> dict[str, int]:
        return {g: c for g, (_, c) in self.gens.items() if gens is None or g in gens}

    def acks(self) -> Acks:
        """Every line of every push Loki acknowledged (read from the proxy's record)."""
        self.proxy.flush()
        acks = Acks(self.written())
        for ack_ns, body, ct, ce in recorded(self.proxy.record_path):
            for _, ts, line in decode_push(body, ct, ce):
                parsed = parse_line(line)
                if parsed is None:
                    acks.foreign += 1
                    continue
                acks.add(parsed[0], parsed[1], ts, ack_ns)
        return acks

    async def loki_tally(self) -> Tally | None:
        """What Loki holds for this run, per generator; ``None`` with the null sink."""
        api = self.bench.loki_api
        if api is None or self.bench.options.sink != "loki":
            return None
        tally = Tally(self.written())
        query = f'{{bench_run="{self.run}"}}'
        start = self.t0_ns - 120 * 10**9
        end = time.time_ns() + 60 * 10**9
        async for _, line in api.entries(query, start, end):
            parsed = parse_line(line)
            if parsed is None:
                tally.foreign += 1
            else:
                tally.add(*parsed)
        return tally

    def series(self) -> dict[str, Any]:
        return {
            "t_s": [round(s.t_s, 2) for s in self.samples],
            "rss_mb": [
                None if math.isnan(s.rss_mb) else round(s.rss_mb, 2)
                for s in self.samples
            ],
            "agent_cpu_s": [
                None if math.isnan(s.cpu_s) else round(s.cpu_s, 3) for s in self.samples
            ],
            "windows": [
                [round(a, 2), round(b, 2), label] for a, b, label in self.windows
            ],
            "events": [[round(t, 2), what] for t, what in self.events],
        }
