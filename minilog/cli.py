"""The ``minilog`` command: ``run``, ``validate``, ``explain``, ``fmt``; signals and
exit codes.

Flags are spelled as Alloy's (``--server.http.listen-addr=...`` or ``... value``), so
compose files written for ``alloy run`` work unchanged. ``minilog run`` without a path
runs the embedded default config (the seed pipeline, Loki URL from ``$LOKI_URL``).
Signals: SIGTERM/SIGINT shut down gracefully (a second one exits at once); SIGHUP
reloads the config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import prometheus_client

from minilog._httpguard import raise_nofile_limit
from minilog.agent.logsetup import configure_logging
from minilog.components.base import STABLE
from minilog.errors import ConfigError, MinilogError
from minilog.loki.push import url_without_userinfo

if TYPE_CHECKING:
    from minilog.agent.runtime import Agent

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_LOKI_URL",
    "default_config",
    "main",
    "normalize_argv",
]

log = logging.getLogger("minilog.cli")

DEFAULT_LOKI_URL = "http://localhost:3100/loki/api/v1/push"

#: The seed pipeline: Docker discovery, service name from the container name, only the
#: three application services, shipped to Loki. ``{url}`` is filled from ``$LOKI_URL``.
DEFAULT_CONFIG = """\
// minilog's embedded default (``minilog run`` without a config path).
discovery.docker "containers" {
  host = "unix:///var/run/docker.sock"
}

discovery.relabel "logs" {
  targets = discovery.docker.containers.targets

  rule {
    source_labels = ["__meta_docker_container_name"]
    regex         = "/(.*)"
    target_label  = "service"
  }

  rule {
    source_labels = ["service"]
    regex         = "(web-gateway|order-api|fulfillment-worker)"
    action        = "keep"
  }
}

loki.source.docker "app_logs" {
  host       = "unix:///var/run/docker.sock"
  targets    = discovery.relabel.logs.output
  forward_to = [loki.write.endpoint.receiver]
}

loki.write "endpoint" {
  endpoint {
    url = {url}
  }
}
"""

# Alloy flags that change nothing for minilog: accepted (with a debug log) so that
# command lines written for Alloy keep working.
_IGNORED_VALUE_FLAGS = (
    "--server.http.ui-path-prefix",
    "--server.http.memory-addr",
)
_IGNORED_BOOL_FLAGS = (
    "--disable-reporting",
    "--server.http.enable-pprof",
    "--feature.community-components.enabled",
)
# Accepted only when switched off: minilog has no clustering.
_FALSE_ONLY_FLAGS = ("--cluster.enabled",)
_STABILITY_LEVELS = ("experimental", "public-preview", STABLE)
_LONG_FLAGS = frozenset(
    (
        "--server.http.listen-addr",
        "--storage.path",
        "--stability.level",
        "--config.format",
        "--feature.component-shutdown-deadline",
        "--testing.url-override",
        "--write",
        *_IGNORED_VALUE_FLAGS,
        *_IGNORED_BOOL_FLAGS,
        *_FALSE_ONLY_FLAGS,
    )
)
_EXIT_CONFIG = 1
#: The cyclic GC's thresholds while the agent runs (``_tune_gc``); CPython's are
#: (700, 10, 10).
_GC_THRESHOLDS = (10_000, 50, 100)


def default_config(environ: Mapping[str, str] | None = None) -> str:
    """The embedded config with the Loki URL from ``LOKI_URL`` (default: localhost).

    A bare base URL (``http://loki:3100``) gets Loki's push path appended.
    """
    env = os.environ if environ is None else environ
    url = env.get("LOKI_URL") or DEFAULT_LOKI_URL
    if urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/loki/api/v1/push"
    quoted = '"' + url.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return DEFAULT_CONFIG.replace("{url}", quoted)


def _version() -> str:
    try:
        return metadata.version("minilog")
    except metadata.PackageNotFoundError:  # running from a source tree, not installed
        import minilog

        return str(getattr(minilog, "__version__", "unknown"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minilog",
        description="A Loki-compatible log pipeline: a drop-in agent for Grafana "
        "Alloy's Docker -> Loki path.",
    )
    parser.add_argument(
        "--version", action="version", version=f"minilog, version {_version()}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run the agent",
        description="Run the agent with a config file or directory of *.alloy files. "
        "Without a path, runs the embedded default config: the seed pipeline (Docker "
        "discovery, service=<container name> for web-gateway, order-api and "
        "fulfillment-worker) shipping to $LOKI_URL (default " + DEFAULT_LOKI_URL + "; "
        "a base URL gets /loki/api/v1/push appended).",
    )
    run.add_argument("path", nargs="?", metavar="CONFIG_FILE_OR_DIR")
    run.add_argument(
        "--server.http.listen-addr",
        dest="listen_addr",
        metavar="ADDR",
        default="127.0.0.1:12345",
        help="address the HTTP server listens on (default %(default)s)",
    )
    run.add_argument(
        "--storage.path",
        dest="storage_path",
        metavar="DIR",
        default="data-minilog/",
        help="directory for component state such as positions (default %(default)s)",
    )
    run.add_argument(
        "--stability.level",
        dest="stability_level",
        default=STABLE,
        choices=_STABILITY_LEVELS,
        help="minimum stability level of features to allow (default %(default)s)",
    )
    run.add_argument(
        "--config.format",
        dest="config_format",
        metavar="FORMAT",
        default="alloy",
        help="config format; minilog reads only 'alloy'",
    )
    run.add_argument(
        "--feature.component-shutdown-deadline",
        dest="shutdown_deadline",
        metavar="DURATION",
        default=None,
        help="how long writers may flush at shutdown (Go duration; default: each "
        "endpoint's queue_config.drain_timeout, 15s)",
    )
    run.add_argument(
        "--testing.url-override",
        dest="url_overrides",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="TEST ONLY: rewrite loki.write endpoint URLs starting with OLD to start "
        "with NEW (lets an unchanged config ship to a fake Loki)",
    )
    for flag in _IGNORED_VALUE_FLAGS:
        run.add_argument(
            flag,
            dest="ignored_" + flag.strip("-").replace(".", "_").replace("-", "_"),
            help=argparse.SUPPRESS,
        )
    for flag in _IGNORED_BOOL_FLAGS:
        run.add_argument(
            flag,
            dest="ignored_" + flag.strip("-").replace("-", "_"),
            action="store_true",
            help="accepted for Alloy compatibility; ignored",
        )

    validate = sub.add_parser(
        "validate",
        help="check a config and print every problem as file:line:col: message",
    )
    validate.add_argument("path", metavar="CONFIG_FILE_OR_DIR")
    validate.add_argument(
        "--stability.level",
        dest="stability_level",
        default=STABLE,
        choices=_STABILITY_LEVELS,
    )

    # Parsed by minilog.bench itself (imported only when used): listed here for --help.
    sub.add_parser(
        "bench",
        help="measure agents against a real Loki (minilog bench --help)",
        add_help=False,
    )
    explain = sub.add_parser(
        "explain",
        help="say why each container is shipped or not, without starting the agent",
        description="Evaluate CONFIG up to its sources against the Docker socket "
        "(nothing is tailed or sent) and explain each container: the labels "
        "discovery produced, each relabel rule in order with the labels after it, "
        "the rule that dropped it if one did, and the labels each stream would reach "
        "Loki with.",
    )
    explain.add_argument("path", metavar="CONFIG_FILE_OR_DIR")
    explain.add_argument(
        "target", nargs="?", metavar="CONTAINER", help="a container name or ID prefix"
    )
    explain.add_argument(
        "--json", action="store_true", help="print the explanations as JSON"
    )
    explain.add_argument(
        "--verbose", "-v", action="store_true", help="show every step, kept or not"
    )
    explain.add_argument(
        "--stability.level",
        dest="stability_level",
        default=STABLE,
        choices=_STABILITY_LEVELS,
    )

    fmt = sub.add_parser(
        "fmt",
        aliases=["format"],
        help="print a config file in canonical format (stdin when no file or -)",
    )
    fmt.add_argument("path", metavar="CONFIG_FILE", nargs="?", default="-")
    fmt.add_argument(
        "--write", "-w", action="store_true", help="rewrite the file in place"
    )
    fmt.add_argument(
        "--test",
        "-t",
        action="store_true",
        help="exit with non-zero when changes would be made",
    )
    return parser


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Go's flag package accepts ``--bool=true|false``; argparse does not."""
    out: list[str] = []
    for raw in argv:
        arg = raw
        if raw.startswith("-") and not raw.startswith("--"):
            # Go flags also take a single dash: -server.http.listen-addr=...
            long = "-" + raw
            if long.partition("=")[0] in _LONG_FLAGS:
                arg = long
        name, sep, value = arg.partition("=")
        if sep and name in _IGNORED_BOOL_FLAGS:
            if value.lower() in ("1", "t", "true"):
                out.append(name)
            continue
        if sep and name in _FALSE_ONLY_FLAGS and value.lower() in ("0", "f", "false"):
            continue
        out.append(arg)
    return out


def _print_diagnostics(exc: ConfigError) -> None:
    for diagnostic in exc.diagnostics:
        print(diagnostic, file=sys.stderr)


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise SystemExit(
                f"minilog: --testing.url-override wants OLD=NEW, got {item!r}"
            )
        out[old] = new
    return out


def _cmd_validate(args: argparse.Namespace) -> int:
    from minilog.agent.graph import load_graph

    try:
        load_graph(args.path, stability_level=args.stability_level)
    except ConfigError as exc:
        _print_diagnostics(exc)
        return _EXIT_CONFIG
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import orjson

    from minilog.agent.dryrun import explain_config
    from minilog.agent.explain import render_text

    try:
        explanations = asyncio.run(
            explain_config(args.path, args.target, stability_level=args.stability_level)
        )
    except ConfigError as exc:
        _print_diagnostics(exc)
        return _EXIT_CONFIG
    except MinilogError as exc:
        print(f"minilog explain: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(
            orjson.dumps(explanations, option=orjson.OPT_INDENT_2).decode()
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(explanations, verbose=args.verbose))
    if args.target is not None and not explanations:
        print(f"minilog explain: no target named {args.target!r}", file=sys.stderr)
        return 1
    return 0


def _cmd_fmt(args: argparse.Namespace) -> int:
    """``alloy fmt``: parse and print, nothing else (no component checks)."""
    from minilog.config import format_source

    if args.write and args.test:
        print(
            "minilog: cannot use -w/--write and -t/--test at the same time",
            file=sys.stderr,
        )
        return _EXIT_CONFIG
    stdin = args.path == "-"
    if stdin and args.write:
        print("minilog: cannot use -w with standard input", file=sys.stderr)
        return _EXIT_CONFIG
    name = "<stdin>" if stdin else args.path
    path = Path(args.path)
    if not stdin and path.is_dir():
        print("minilog: cannot format a directory", file=sys.stderr)
        return _EXIT_CONFIG
    try:
        data = sys.stdin.buffer.read() if stdin else path.read_bytes()
    except OSError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return _EXIT_CONFIG
    # Bytes, not text mode: universal newlines would turn a carriage return inside
    # a comment or a raw string into a line break. Undecodable bytes become lone
    # surrogates, which the scanner reports in place ("illegal UTF-8 encoding").
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        formatted = format_source(text, name)
    except ConfigError as exc:
        _print_diagnostics(exc)
        print("minilog: encountered errors during formatting", file=sys.stderr)
        return _EXIT_CONFIG
    if args.test:
        if formatted != text:
            print(f"minilog: file {name} is not formatted correctly", file=sys.stderr)
            return _EXIT_CONFIG
        return 0
    if args.write:
        if formatted != text:
            path.write_bytes(formatted.encode("utf-8"))
    else:
        sys.stdout.write(formatted)
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    from minilog.agent.graph import LoggingConfig
    from minilog.agent.runtime import Agent
    from minilog.agent.server import AgentServer, parse_listen_addr
    from minilog.config import parse_duration

    def on_logging(cfg: LoggingConfig) -> None:
        configure_logging(cfg.level, cfg.format)

    try:
        host, port = parse_listen_addr(args.listen_addr)
        drain = None
        if args.shutdown_deadline:
            drain = parse_duration(args.shutdown_deadline)
    except ValueError as exc:
        print(f"minilog: {exc}", file=sys.stderr)
        return 2
    if args.path is None:
        log.info("no config path given: running the embedded default config")
        agent = Agent(
            config_text=default_config(),
            storage_path=args.storage_path,
            stability_level=args.stability_level,
            drain_timeout=drain,
            url_overrides=_parse_overrides(args.url_overrides),
            on_logging=on_logging,
        )
    else:
        agent = Agent(
            args.path,
            storage_path=args.storage_path,
            stability_level=args.stability_level,
            drain_timeout=drain,
            url_overrides=_parse_overrides(args.url_overrides),
            on_logging=on_logging,
        )
    # The process's own CPU, memory and GC figures, as Alloy exposes them too.
    ProcessCollector(registry=agent.registry)
    PlatformCollector(registry=agent.registry)
    GCCollector(registry=agent.registry)
    loop = asyncio.get_running_loop()
    signals_seen = 0
    reload_wanted = asyncio.Event()

    def on_stop(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            # Second signal: the user does not want to wait for the drain.
            os._exit(128 + signum)
        log.info(
            "shutting down gracefully", extra={"signal": signal.Signals(signum).name}
        )
        agent.request_stop()

    async def reloads() -> None:
        # One reload at a time, each SIGHUP after the last one began: a failure is
        # logged by the agent, and the last good config keeps running.
        while True:
            await reload_wanted.wait()
            reload_wanted.clear()
            with contextlib.suppress(MinilogError):
                await agent.reload()
            _tune_gc()  # the replaced components may be garbage now

    def on_hup() -> None:
        reload_wanted.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, on_stop, signal.SIGINT)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    # Handlers go in before anything starts: a signal during startup is honoured too.
    try:
        await agent.start()
    except ConfigError as exc:
        log.error("invalid configuration, exiting")
        _print_diagnostics(exc)
        _remove_handlers(loop)
        return _EXIT_CONFIG
    _log_plan(agent, "<embedded default>" if args.path is None else args.path)
    server = AgentServer(agent, host=host, port=port)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen", extra={"addr": args.listen_addr, "err": str(exc)})
        await agent.aclose()
        _remove_handlers(loop)
        return 1
    log.info("now listening for http traffic", extra={"addr": server.url})
    _tune_gc()
    # Owned here and awaited at the end: a failure in them surfaces from this call.
    helpers = [
        loop.create_task(_log_discovery(agent), name="startup summary"),
        loop.create_task(reloads(), name="reloads"),
    ]
    try:
        await agent.wait_stopped()
    finally:
        for task in helpers:
            task.cancel()
        await server.aclose()
        await agent.aclose()
        _remove_handlers(loop)
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if agent.failure is not None:
        log.error("the agent stopped after an internal failure")
        return 1
    log.info("shutdown complete")
    return 0


def _tune_gc() -> None:
    """Once the agent runs, and after each reload: the cyclic GC set for a process
    that allocates a tuple per log line and keeps batches of them queued.

    Everything built so far (modules, the graph, aiohttp) moves to the permanent
    generation, so full collections no longer walk it, and the first generation is
    collected every ``_GC_THRESHOLDS[0]`` allocations instead of 700: at the default
    a drain of 1M lines ran ~1,400 collections and spent 0.3-0.5 CPU s in them (its
    entries are not garbage; log entries form no cycles). Frozen objects are never
    collected, so a reload unfreezes first: what it replaced is collected then.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def _log_plan(agent: Agent, config: str) -> None:
    """What the agent runs: the config and where its logs go."""
    log.info("running config", extra={"config": config})
    endpoints = agent.write_endpoints()
    for component_id, url in endpoints:
        log.info(
            "shipping logs to endpoint",
            extra={"component_id": component_id, "url": url_without_userinfo(url)},
        )
    if not endpoints:
        log.info("the config has no loki.write endpoint: nothing is shipped to Loki")


async def _log_discovery(agent: Agent) -> None:
    """Once the first container list went through the graph: how many containers
    discovery found and how many relabelling kept (what is tailed)."""
    await agent.wait_discovered()
    counts = agent.docker_containers()
    if counts is None:
        return
    found, kept = counts
    log.info(
        "containers discovered",
        extra={"containers_found": found, "containers_kept": kept},
    )
    if found and not kept:
        log.warning(
            "relabelling kept none of the discovered containers: no log is tailed "
            "until a container matches the rules"
        )


def _pin_mmap_threshold() -> None:
    """Keep glibc serving large blocks (encoded push bodies) from mmap.

    glibc raises its mmap threshold each time such a block is freed, after which
    ~1 MiB request buffers come from the heap and fragment it: during a Loki outage
    that kept RSS about 10 MiB above the queue bound. Only the agent does this: a
    library must not retune its host process's allocator.
    """
    m_mmap_threshold = -3  # from glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_mmap_threshold, 128 * 1024)


def _remove_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``minilog = "minilog.cli:main"``); returns the exit code."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["bench"]:
        from minilog.bench import main as bench_main

        return bench_main(raw[1:])
    args = _parser().parse_args(normalize_argv(raw))
    if args.command == "validate":
        return _cmd_validate(args)
    if args.command in ("fmt", "format"):
        return _cmd_fmt(args)
    if args.command == "explain":
        return _cmd_explain(args)
    configure_logging("info", "logfmt")
    for name, value in vars(args).items():
        if name.startswith("ignored_") and value not in (None, False):
            log.debug("ignoring Alloy flag", extra={"flag": name[len("ignored_") :]})
    if args.config_format != "alloy":
        print(
            f"minilog: --config.format={args.config_format} is not supported; "
            "only 'alloy' configs can be read",
            file=sys.stderr,
        )
        return 2
    _pin_mmap_threshold()
    # Go's runtime does this for Alloy; the servers' connection caps are then set
    # below whatever the limit is (_httpguard.connection_headroom).
    raise_nofile_limit()
    # Alloy (Go) exposes no *_created series; dashboards built on it expect none.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        return asyncio.run(_serve(args))
    except MinilogError as exc:
        log.error("fatal error", extra={"err": str(exc)})
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
