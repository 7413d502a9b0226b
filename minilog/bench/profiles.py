"""The profiles: what each one runs and which figures it records.

Each profile takes one agent through one :class:`~minilog.bench.run.Run` and returns one
record (a dict; ``report.FIELDS`` lists the common fields). ``idle`` runs first for
every agent and gives the idle RSS and start-up CPU the others are compared with.

- ``drain``: K containers x N lines written before the agent starts; wall time, lines/s,
  CPU per million lines for the agent (its start-up CPU taken off), dockerd and Loki.
- ``steady``: rising total input rates over several containers, each held for a step;
  the highest rate delivered with zero loss and within ``steady_grace_s`` of the input
  stopping; agent CPU and RSS at each rate.
- ``latency``: Docker's timestamp of each line to Loki's acknowledgement of its push
  (at which point Loki's ingester answers queries with it), at each rate: p50/p99/max;
  and ``docker create`` + ``start`` of a one-line container (and Docker's timestamp of
  its line) to that line acknowledged.
- ``outage``, ``kill``, ``throttle``, ``slow``: generators write at ``rate`` per
  container throughout; a fault of ``fault_s`` seconds after ``pre_s``; lines lost, sent
  twice, agent RSS over time, first acknowledged push after the fault and catch-up.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from minilog.bench.agents import Resolved
from minilog.bench.analysis import Acks, percentile
from minilog.bench.run import Bench, Run

__all__ = ["FAULTS", "PROFILES", "Idle", "measure_idle", "new_record", "run_profile"]

FAULTS = ("outage", "kill", "throttle", "slow")
PROFILES = ("drain", "steady", "latency", *FAULTS)
IDLE_S = 5.0
# How long delivery may stall before the bench stops waiting after the input ended: past
# the longest wait an Alloy-style backoff (doubling from 500 ms to max_backoff_period)
# reaches in these profiles' outages (64 s, then 128 s), so that a late retry is not
# counted as a loss.
FAULT_QUIET_S = 150.0
NS = 1_000_000_000


@dataclass(frozen=True)
class Idle:
    ready_s: float
    startup_cpu_s: float
    rss_mb: float


def new_record(agent: str, profile: str, sink: str) -> dict[str, Any]:
    return {
        "agent": agent,
        "profile": profile,
        "sink": sink,
        "skipped": None,
        "lines_written": None,
        "lines_delivered": None,
        "lines_lost": None,
        "lines_duplicated": None,
        "lines_duplicated_in_loki": None,
        "lines_per_s": None,
        "input_lines_per_s": None,
        "wall_s": None,
        "agent_cpu_s": None,
        "agent_cpu_s_per_million": None,
        "dockerd_cpu_s_per_million": None,
        "loki_cpu_s_per_million": None,
        "agent_peak_rss_mb": None,
        "agent_idle_rss_mb": None,
        "agent_startup_cpu_s": None,
        "queue_bound_mb": None,
        "rss_bound_mb": None,
        "latency_p50_s": None,
        "latency_p99_s": None,
        "latency_max_s": None,
        "first_line_s": None,
        "fault_s": None,
        "first_push_after_fault_s": None,
        "catch_up_s": None,
        "catch_up_lines_per_s": None,
        "agent_exit_code": None,
        "agent_restarts": 0,
        "loki_write": "defaults",
        "notes": [],
    }


def _per_million(cpu_s: float, lines: int) -> float | None:
    if lines <= 0 or math.isnan(cpu_s):
        return None
    return round(cpu_s / lines * 1e6, 3)


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def _peak_rss(run: Run) -> float:
    values = [s.rss_mb for s in run.samples if not math.isnan(s.rss_mb)]
    values += [s.hwm_mb for s in run.samples if not math.isnan(s.hwm_mb)]
    return max(values) if values else math.nan


async def _count(run: Run, rec: dict[str, Any], gens: list[str] | None = None) -> Acks:
    """Exact counts into ``rec``: delivered and lost from what Loki holds (from the
    acknowledged pushes with the null sink), sent twice from the acknowledged pushes."""
    run.phase("counting")
    acks = await asyncio.to_thread(run.acks)
    written = run.written(gens)
    total = sum(written.values())
    rec["lines_written"] = total
    rec["lines_duplicated"] = acks.duplicated(list(written))
    tally = await run.loki_tally()
    per = {
        g: {"container": g, "written": n, "duplicated": acks.duplicated([g])}
        for g, n in written.items()
    }
    if tally is not None:
        counts = [tally.count(g) for g in sorted(written)]
        for c in counts:
            per[c.gen].update(delivered=c.delivered, lost=c.lost)
        rec["lines_delivered"] = sum(c.delivered for c in counts)
        rec["lines_lost"] = sum(c.lost for c in counts)
        rec["lines_duplicated_in_loki"] = sum(c.duplicated for c in counts)
        for c in counts:
            if c.lost:
                rec["notes"].append(
                    f"{c.gen}: {c.lost} of {c.written} lost in Loki, first missing "
                    f"{tally.missing(c.gen)}"
                )
        if tally.foreign:
            rec["notes"].append(f"{tally.foreign} lines in Loki not from a generator")
    else:
        delivered = acks.delivered(list(written))
        rec["lines_delivered"] = delivered
        rec["lines_lost"] = total - delivered
        for g, n in written.items():
            got = acks.delivered([g])
            per[g].update(delivered=got, lost=n - got)
    rec["per_container"] = [per[g] for g in sorted(per)]
    if acks.foreign:
        rec["notes"].append(f"{acks.foreign} acknowledged lines not from a generator")
    return acks


async def measure_idle(bench: Bench, resolved: Resolved) -> Idle:
    """An agent whose filter matches no container: time to ready, start-up CPU (to
    ready and ``IDLE_S`` beyond) and RSS at rest."""
    async with Run(bench, resolved, "idle") as run:
        ready_s = await run.start_agent()
        run.phase("idle")
        await asyncio.sleep(IDLE_S)
        cpu = run.agent.cpu.read()
        rss = run.agent.rss_mb()
        await run.stop_agent()
    return Idle(ready_s, cpu, rss)


async def drain(
    bench: Bench, resolved: Resolved, idle: Idle, rec: dict[str, Any]
) -> None:
    o = bench.options
    async with Run(bench, resolved, "drain") as run:
        names = [f"d{i}" for i in range(o.drain_containers)]
        run.phase("writing the backlog")
        await run.add_generators(names, o.drain_lines, 0)
        await run.wait_written(names, 120 + o.drain_lines / 2000)
        total = o.drain_lines * o.drain_containers
        docker0 = bench.dockerd.read()
        loki0 = bench.loki.cpu_s() if bench.loki else math.nan
        t0 = time.time_ns()
        run.phase("draining")
        await run.start_agent()
        done_ns = await run.wait_count(total, o.settle_limit_s)
        agent_cpu = run.agent.cpu.read()
        docker1 = bench.dockerd.read()
        loki1 = bench.loki.cpu_s() if bench.loki else math.nan
        if not done_ns:
            rec["notes"].append(f"not drained within {o.settle_limit_s:.0f} s")
            done_ns = time.time_ns()
        # Anything sent twice after the last line arrives within a second or two.
        await run.wait_delivered(total, 3.0, 10.0)
        rec["agent_peak_rss_mb"] = _r(_peak_rss(run), 1)
        rec["agent_exit_code"] = await run.stop_agent()
        acks = await _count(run, rec)
        wall = (done_ns - t0) / NS
        delivered = rec["lines_delivered"] or 0
        rec["wall_s"] = _r(wall, 2)
        rec["lines_per_s"] = _r(delivered / wall, 0) if wall > 0 else None
        firsts = acks.first_acks()
        if len(firsts) > 1:
            span = (max(firsts) - min(firsts)) / NS
            rec["lines_per_s_first_to_last"] = (
                _r(len(firsts) / span, 0) if span else None
            )
        rec["agent_cpu_s"] = _r(agent_cpu, 2)
        rec["agent_cpu_s_per_million"] = _per_million(
            agent_cpu - idle.startup_cpu_s, delivered
        )
        rec["agent_cpu_s_per_million_with_startup"] = _per_million(agent_cpu, delivered)
        rec["dockerd_cpu_s_per_million"] = _per_million(docker1 - docker0, delivered)
        rec["loki_cpu_s_per_million"] = _per_million(loki1 - loki0, delivered)
        rec["series"] = {**run.series(), "throughput": acks.throughput(run.t0_ns)}


async def steady(
    bench: Bench, resolved: Resolved, idle: Idle, rec: dict[str, Any]
) -> None:
    o = bench.options
    steps: list[dict[str, Any]] = []
    step_gens: list[list[str]] = []
    async with Run(bench, resolved, "steady") as run:
        await run.start_agent()
        for rate in o.steady_rates:
            names = [f"s{rate}-{i}" for i in range(o.steady_containers)]
            per = rate / o.steady_containers
            count = max(1, int(per * o.steady_step_s))
            cpu0 = run.agent.cpu.read()
            docker0 = bench.dockerd.read()
            start_s = run.now_s()
            run.phase(f"steady {rate:,} lines/s")
            await run.add_generators(names, count, per)
            await run.wait_written(names, o.steady_step_s * 4 + 30)
            written_s = run.now_s()
            held = await run.wait_delivered(
                run.expected, o.steady_grace_s, o.steady_grace_s
            )
            end_s = run.now_s()
            cpu1 = run.agent.cpu.read()
            docker1 = bench.dockerd.read()
            rss = [
                s.rss_mb
                for s in run.samples
                if start_s <= s.t_s and not math.isnan(s.rss_mb)
            ]
            steps.append(
                {
                    "rate": rate,
                    "lines_written": count * len(names),
                    "caught_up": held,
                    "settle_s": _r(end_s - written_s, 2),
                    "agent_cpu_cores": _r((cpu1 - cpu0) / (end_s - start_s), 3),
                    "agent_cpu_s_per_million": _per_million(
                        cpu1 - cpu0, count * len(names)
                    ),
                    "dockerd_cpu_s_per_million": _per_million(
                        docker1 - docker0, count * len(names)
                    ),
                    "agent_peak_rss_mb": _r(max(rss), 1) if rss else None,
                    "window_s": [_r(start_s, 2), _r(end_s, 2)],
                }
            )
            step_gens.append(names)
            if not held:
                break
        # The agent fell behind (or the top step passed): let it finish, so that what is
        # counted lost was lost, not late.
        run.phase("steady: settling")
        await run.wait_delivered(run.expected, 30.0, o.settle_limit_s)
        rec["agent_peak_rss_mb"] = _r(_peak_rss(run), 1)
        rec["agent_exit_code"] = await run.stop_agent()
        acks = await _count(run, rec)
        tally = await run.loki_tally()
        best = None
        for step, names in zip(steps, step_gens, strict=True):
            written = run.written(names)
            if tally is not None:
                lost = sum(tally.count(g).lost for g in names)
            else:
                lost = sum(written.values()) - acks.delivered(names)
            step["lines_lost"] = lost
            step["lines_duplicated"] = acks.duplicated(names)
            lat = acks.latencies_s(names)
            step["latency_p99_s"] = _r(percentile(lat, 99))
            ts = [t for g in names for t in _written_span(acks, g)]
            if len(ts) == 2 * len(names):
                span = (max(ts) - min(ts)) / NS
                step["input_lines_per_s"] = (
                    _r(sum(written.values()) / span, 0) if span else None
                )
            if step["caught_up"] and lost == 0:
                best = step["rate"]
                rec["highest_rate_held_input_lines_per_s"] = step.get(
                    "input_lines_per_s"
                )
        rec["steps"] = steps
        rec["highest_rate_held"] = best
        rec["lines_per_s"] = best
        total_cpu = run.agent.cpu.read()
        rec["agent_cpu_s"] = _r(total_cpu, 2)
        rec["agent_cpu_s_per_million"] = _per_million(
            total_cpu - idle.startup_cpu_s, rec["lines_delivered"] or 0
        )
        rec["series"] = {**run.series(), "throughput": acks.throughput(run.t0_ns)}
        for step in steps:
            run.windows.append(
                (step["window_s"][0], step["window_s"][1], f"{step['rate']:,}/s")
            )
        rec["series"]["steps"] = [
            [s["window_s"][0], s["window_s"][1], s["rate"]] for s in steps
        ]
        rec["series"]["windows"] = []


def _written_span(acks: Acks, gen: str) -> list[int]:
    """Docker's timestamps of ``gen``'s first and last line, when both were acked."""
    n = acks.written.get(gen, 0)
    first = acks.first_ack_of(gen, 1)
    last = acks.first_ack_of(gen, n)
    if not first or not last:
        return []
    ts = acks.timestamps(gen)
    return [ts[1], ts[n]]


async def latency(
    bench: Bench, resolved: Resolved, idle: Idle, rec: dict[str, Any]
) -> None:
    o = bench.options
    by_rate: dict[int, list[str]] = {}
    probe_t: list[tuple[str, int]] = []
    async with Run(bench, resolved, "latency") as run:
        await run.start_agent()
        for rate in o.latency_rates:
            names = [f"l{rate}-{i}" for i in range(2)]
            run.phase(f"latency at {rate:,} lines/s")
            await run.add_generators(
                names, max(1, int(rate / 2 * o.latency_s)), rate / 2
            )
            await run.wait_written(names, o.latency_s * 4 + 30)
            await run.wait_delivered(run.expected, 10.0, 30.0)
            by_rate[rate] = names
        for i in range(o.latency_probes):
            run.phase(f"first line of a new container ({i + 1}/{o.latency_probes})")
            gen = f"p{i}"
            t = time.time_ns()
            await run.add_generators([gen], 1, 0)
            await run.wait_count(run.expected, 20.0)
            probe_t.append((gen, t))
            await asyncio.sleep(1.0)
        rec["agent_peak_rss_mb"] = _r(_peak_rss(run), 1)
        rec["agent_exit_code"] = await run.stop_agent()
        acks = await _count(run, rec)
        table = {}
        for rate, names in by_rate.items():
            lat = acks.latencies_s(names)
            table[str(rate)] = {
                "p50_s": _r(percentile(lat, 50)),
                "p99_s": _r(percentile(lat, 99)),
                "max_s": _r(max(lat) if lat else math.nan),
                "lines": len(lat),
            }
        rec["latency"] = table
        head = table.get(str(o.latency_rates[0]), {})
        rec["latency_p50_s"] = head.get("p50_s")
        rec["latency_p99_s"] = head.get("p99_s")
        rec["latency_max_s"] = head.get("max_s")
        firsts = [
            (acks.first_ack_of(gen) - t) / NS
            for gen, t in probe_t
            if acks.first_ack_of(gen)
        ]
        rec["first_line_s_all"] = [_r(f) for f in firsts]
        rec["first_line_s"] = _r(sorted(firsts)[len(firsts) // 2]) if firsts else None
        # The same from Docker's timestamp of the line (the container's write) rather
        # than from before ``docker create``: what the agent itself adds.
        written = [
            (acks.first_ack_of(gen) - acks.timestamps(gen)[1]) / NS
            for gen, _ in probe_t
            if acks.first_ack_of(gen)
        ]
        rec["first_line_from_write_s_all"] = [_r(f) for f in written]
        rec["first_line_from_write_s"] = (
            _r(sorted(written)[len(written) // 2]) if written else None
        )
        rec["series"] = {**run.series(), "throughput": acks.throughput(run.t0_ns)}


async def fault(
    bench: Bench, resolved: Resolved, idle: Idle, rec: dict[str, Any], kind: str
) -> None:
    o = bench.options
    restart_allowance = 30.0 if kind in ("outage", "kill") else 0.0
    duration = o.pre_s + o.fault_s + restart_allowance + o.post_s
    per = o.rate
    count = max(1, int(per * duration))
    names = [f"f{i}" for i in range(o.containers)]
    rec["input_lines_per_s"] = per * o.containers
    rec["fault_s"] = o.fault_s
    async with Run(bench, resolved, kind) as run:
        await run.start_agent()
        await run.add_generators(names, count, per)
        run.phase("before the fault")
        await asyncio.sleep(o.pre_s)
        if kind in ("outage", "kill"):
            start_s, end_s = await run.outage(
                o.fault_s, o.kill_at if kind == "kill" else None
            )
        else:
            start_s, end_s = await run.proxy_fault(
                "throttle" if kind == "throttle" else "slow", o.fault_s
            )
        run.phase("writing after the fault")
        await run.wait_written(names, duration + 120)
        run.phase("settling")
        await run.wait_delivered(run.expected, FAULT_QUIET_S, o.settle_limit_s)
        rec["agent_peak_rss_mb"] = _r(_peak_rss(run), 1)
        rec["agent_restarts"] = run.agent.restarts
        cpu = run.agent.cpu.read()
        rec["agent_exit_code"] = await run.stop_agent()
        acks = await _count(run, rec)
        start_ns = run.t0_ns + int(start_s * NS)
        end_ns = run.t0_ns + int(end_s * NS)
        rec["fault_window_s"] = [_r(start_s, 2), _r(end_s, 2)]
        in_fault = [
            v
            for smp in run.samples
            if start_s <= smp.t_s <= end_s
            for v in (smp.rss_mb, smp.hwm_mb)
            if not math.isnan(v)
        ]
        rec["agent_peak_rss_in_fault_mb"] = _r(max(in_fault), 1) if in_fault else None
        rec["fault_actual_s"] = _r(end_s - start_s, 2)
        after = [
            t for t, status in run.proxy.pushes if t >= end_ns and 200 <= status < 300
        ]
        rec["first_push_after_fault_s"] = (
            _r((min(after) - end_ns) / NS) if after else None
        )
        rec["backlog_at_fault_end"] = acks.pending_at(end_ns)
        cleared = acks.backlog_cleared_ns(start_ns, end_ns)
        if cleared is not None:
            catch_up = max(0.0, (cleared - end_ns) / NS)
            rec["catch_up_s"] = _r(catch_up, 2)
            if catch_up > 0:
                rec["catch_up_lines_per_s"] = _r(
                    acks.acked_between(end_ns, cleared) / catch_up, 0
                )
        rec["agent_cpu_s"] = _r(cpu, 2)
        rec["agent_cpu_s_per_million"] = _per_million(
            cpu - idle.startup_cpu_s * (1 + run.agent.restarts),
            rec["lines_delivered"] or 0,
        )
        rec["push_statuses"] = {
            str(k): v for k, v in sorted(run.proxy.statuses.items())
        }
        rec["series"] = {**run.series(), "throughput": acks.throughput(run.t0_ns)}


Profile = Callable[[Bench, Resolved, Idle, dict[str, Any]], Awaitable[None]]


def _fault(kind: str) -> Profile:
    async def go(
        bench: Bench, resolved: Resolved, idle: Idle, rec: dict[str, Any]
    ) -> None:
        await fault(bench, resolved, idle, rec, kind)

    return go


_RUNNERS: dict[str, Profile] = {
    "drain": drain,
    "steady": steady,
    "latency": latency,
    **{kind: _fault(kind) for kind in FAULTS},
}


async def run_profile(
    bench: Bench, resolved: Resolved, idle: Idle, profile: str
) -> dict[str, Any]:
    rec = new_record(resolved.spec.name, profile, bench.options.sink)
    rec["agent_idle_rss_mb"] = _r(idle.rss_mb, 1)
    rec["agent_startup_cpu_s"] = _r(idle.startup_cpu_s, 2)
    if resolved.config_kind == "alloy":
        rec["loki_write"] = bench.options.write.describe()
    else:
        # Promtail's client has no shards: only the retry settings reach it.
        rec["loki_write"] = replace(bench.options.write, min_shards=None).describe()
    bound = resolved.spec.queue_bound_mb(bench.options.write.min_shards or 1)
    if bound is not None:
        rec["queue_bound_mb"] = _r(bound, 2)
        rec["rss_bound_mb"] = _r(bound + idle.rss_mb, 1)
    await _RUNNERS[profile](bench, resolved, idle, rec)
    return rec
