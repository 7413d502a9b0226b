"""``minilog bench PROFILE --agent NAME [--agent NAME ...] --out DIR``.

Runs a profile (or ``default``: all of them; ``quick``: a short smoke run) against each
agent in turn on the same machine, with the same generators, the same Loki and the same
faults; prints a table and the issue's targets, writes ``DIR/results.json`` and PNG
plots. Exit code: 0 when it ran (whatever the figures), 1 when it could not set up
(Docker or Loki missing), 2 for bad usage or a missing optional dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minilog.bench.agents import AgentSpec, WriteSettings, parse_agent, resolve
from minilog.bench.lokiproc import LokiProcess, find_loki
from minilog.bench.profiles import (
    FAULTS,
    PROFILES,
    measure_idle,
    new_record,
    run_profile,
)
from minilog.bench.progress import Progress
from minilog.bench.report import format_table, targets, write_results
from minilog.bench.run import Bench, Options
from minilog.errors import BenchError

__all__ = ["build_options", "main", "parser"]

INSTALL_HINT = "pip install 'minilog[bench]'"


def _rates(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"comma-separated integers, got {text!r}"
        ) from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("rates must be positive")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minilog bench",
        description="Measure log agents side by side against a real Loki 3.6 with the "
        "same generator containers and the same faults. Profiles: "
        + ", ".join(PROFILES)
        + "; default = all (about 8 min per agent on 2 cores); quick = drain, latency "
        "and throttle, shortened (under 2 min per agent).",
    )
    p.add_argument(
        "profile",
        nargs="+",
        choices=(*PROFILES, "default", "quick"),
        help="one or more, run in this order for each agent",
    )
    p.add_argument(
        "--agent",
        dest="agents",
        action="append",
        required=True,
        metavar="NAME",
        help="minilog (the installed package as a process), minilog-file and "
        "minilog-api (the same with logs_from = file or api), minilog-image (the "
        "minilog:latest image in the alloy role), alloy, promtail, or "
        "'cmd:NAME=COMMAND' (placeholders {config_alloy} {promtail_config} {push_url} "
        "{storage} {http_port} {run}); repeat to compare",
    )
    p.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="results directory"
    )
    p.add_argument(
        "--sink",
        choices=("loki", "null"),
        default="loki",
        help="loki: a real Loki 3.6 the bench starts (or --loki-url); null: the "
        "bench's "
        "proxy answers 204 itself (pure agent cost)",
    )
    p.add_argument(
        "--loki-url", help="use this running Loki (outage and kill are skipped)"
    )
    f = p.add_argument_group("fault profiles (outage, kill, throttle, slow)")
    f.add_argument("--containers", type=int, help="generator containers (2)")
    f.add_argument("--rate", type=float, help="lines/s per container (1000)")
    f.add_argument(
        "--outage-s",
        "--fault-s",
        dest="fault_s",
        type=float,
        help="fault length in seconds (60)",
    )
    f.add_argument("--pre-s", type=float, help="writing before the fault (10)")
    f.add_argument("--post-s", type=float, help="writing after the fault (10)")
    f.add_argument("--kill-at", type=float, help="kill: fraction of the outage (0.5)")
    f.add_argument("--retry-after-s", type=int, help="throttle: Retry-After (2)")
    f.add_argument("--slow-delay-s", type=float, help="slow: added to every answer (2)")
    f.add_argument(
        "--min-backoff-period", help="loki.write min_backoff_period (agent default)"
    )
    f.add_argument(
        "--max-backoff-period", help="loki.write max_backoff_period (agent default)"
    )
    f.add_argument(
        "--max-backoff-retries",
        type=int,
        help="loki.write max_backoff_retries (agent default)",
    )
    p.add_argument(
        "--min-shards",
        type=int,
        help="loki.write queue_config.min_shards for Alloy-compatible agents (their "
        "default, 1; set, they run with --stability.level=experimental)",
    )
    g = p.add_argument_group("drain, steady, latency")
    g.add_argument("--drain-containers", type=int, help="(4)")
    g.add_argument("--drain-lines", type=int, help="lines per container (200000)")
    g.add_argument(
        "--steady-rates",
        type=_rates,
        help="total lines/s steps (1000,5000,20000,50000,100000)",
    )
    g.add_argument("--steady-step-s", type=float, help="seconds per step (15)")
    g.add_argument("--latency-rates", type=_rates, help="(1000,10000)")
    g.add_argument("--latency-s", type=float, help="seconds per rate (10)")
    g.add_argument(
        "--latency-probes", type=int, help="first-line probes, new containers (3)"
    )
    p.add_argument(
        "--no-plots", action="store_true", help="no PNGs (no matplotlib needed)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


_QUICK: dict[str, Any] = {
    "drain_containers": 2,
    "drain_lines": 10_000,
    "latency_rates": (1000,),
    "latency_s": 4.0,
    "latency_probes": 1,
    "fault_s": 8.0,
    "pre_s": 3.0,
    "post_s": 4.0,
    "rate": 200.0,
    "steady_rates": (1000, 5000),
    "steady_step_s": 5.0,
    "settle_limit_s": 60.0,
}


def build_options(args: argparse.Namespace) -> tuple[Options, list[str]]:
    """The options and the profiles to run, from the command line."""
    options = Options(out=args.out, sink=args.sink)
    profiles: list[str] = []
    for name in args.profile:
        if name == "quick":
            expanded = ["drain", "latency", "throttle"]
            for key, value in _QUICK.items():
                setattr(options, key, value)
        elif name == "default":
            expanded = list(PROFILES)
        else:
            expanded = [name]
        profiles += [p for p in expanded if p not in profiles]
    for key in (
        "containers",
        "rate",
        "fault_s",
        "pre_s",
        "post_s",
        "kill_at",
        "retry_after_s",
        "slow_delay_s",
        "drain_containers",
        "drain_lines",
        "steady_rates",
        "steady_step_s",
        "latency_rates",
        "latency_s",
        "latency_probes",
    ):
        value = getattr(args, key)
        if value is not None:
            setattr(options, key, value)
    options.write = WriteSettings(
        args.min_backoff_period,
        args.max_backoff_period,
        args.max_backoff_retries,
        args.min_shards,
    )
    return options, profiles


async def _bench(
    options: Options,
    profiles: list[str],
    specs: list[AgentSpec],
    args: argparse.Namespace,
    progress: Progress,
) -> list[dict[str, Any]]:
    # A previous run's work files (its Loki data, the acknowledged pushes, positions)
    # would be counted again: the lines then look sent twice and the latencies stale.
    await asyncio.to_thread(shutil.rmtree, options.out / "work", True)
    bench = Bench(options, progress)
    loki: LokiProcess | None = None
    records: list[dict[str, Any]] = []
    try:
        await bench.docker.ping()
        if options.sink == "loki" and not args.loki_url:
            launcher = await find_loki(bench.docker)
            loki = LokiProcess(launcher, options.out / "work", bench.docker)
            progress.note(f"starting {launcher.describe()} on {loki.base_url}")
            await loki.start()
        await bench.setup(loki, args.loki_url)
        for spec in specs:
            found = await resolve(spec, bench.docker)
            if isinstance(found, str):
                progress.note(f"{spec.name}: skipped: {found}")
                for profile in profiles:
                    rec = new_record(spec.name, profile, options.sink)
                    rec["skipped"] = found
                    records.append(rec)
                continue
            try:
                idle = await measure_idle(bench, found)
            except BenchError as exc:
                progress.note(f"{spec.name}: skipped: {exc}")
                for profile in profiles:
                    rec = new_record(spec.name, profile, options.sink)
                    rec["skipped"] = f"could not run: {exc}"
                    records.append(rec)
                continue
            for profile in profiles:
                if (
                    profile in ("outage", "kill")
                    and options.sink == "loki"
                    and loki is None
                ):
                    rec = new_record(spec.name, profile, options.sink)
                    rec["skipped"] = (
                        "needs a Loki the bench starts itself (not --loki-url)"
                    )
                    records.append(rec)
                    continue
                try:
                    rec = await run_profile(bench, found, idle, profile)
                except BenchError as exc:
                    rec = new_record(spec.name, profile, options.sink)
                    rec["skipped"] = f"failed: {exc}"
                records.append(rec)
                progress.note(
                    f"{spec.name} {profile}: done"
                    + (f" (skipped: {rec['skipped']})" if rec["skipped"] else "")
                )
    finally:
        if loki is not None:
            with contextlib.suppress(BenchError):
                await loki.stop()
        await bench.aclose()
    return records


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        specs = [parse_agent(a) for a in args.agents]
    except ValueError as exc:
        print(f"minilog bench: {exc}", file=sys.stderr)
        return 2
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "minilog bench: the plots need matplotlib: "
                f"{INSTALL_HINT} (or run with --no-plots)",
                file=sys.stderr,
            )
            return 2
    options, profiles = build_options(args)
    options.out.mkdir(parents=True, exist_ok=True)
    progress = Progress(quiet=args.quiet)
    try:
        records = asyncio.run(_bench(options, profiles, specs, args, progress))
    except BenchError as exc:
        print(f"minilog bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    command = "minilog bench " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    notes = targets(records)
    write_results(
        options.out / "results.json",
        records,
        command,
        {"profiles": profiles, "targets": notes, "faults": list(FAULTS)},
    )
    print(format_table(records))
    for line in notes:
        print(line)
    for rec in records:
        for note in rec.get("notes") or []:
            print(f"{rec['agent']} {rec['profile']}: {note}")
    if not args.no_plots:
        from minilog.bench.plots import plot_all

        for path in plot_all(records, options.out):
            print(f"wrote {path}")
    print(f"wrote {options.out / 'results.json'}")
    return 0
