"""The agents under test: what each runs, how it is started, killed and restarted.

Owns the agent process boundary. Every agent gets the same job: discover the
containers labelled ``minilog.bench.run=<run>`` over the Docker socket (refresh every
second), label each stream ``container=<name>`` and ``bench_run=<run>``, and push to the
fault proxy with ``loki.write``'s defaults (batch 1 MiB or 1 s, timeout 10 s, backoff
500 ms to 5 min, 10 retries) unless the run sets the retry options.

- ``minilog``: the installed package as a process (``python -m minilog run``).
- ``minilog-file``, ``minilog-api``: the same with ``loki.source.docker``'s
  ``logs_from`` set to ``"file"`` (the json-file on disk) or ``"api"`` (dockerd's
  ``/logs``), so one run compares both paths (``minilog`` leaves the default,
  ``"auto"``, which reads the file where it can).
- ``minilog-image``: the ``minilog:latest`` image in the compose stack's ``alloy`` role
  (``--network host``, the Docker socket mounted, the same ``config.alloy``).
- ``alloy``: ``ALLOY_BIN`` or ``alloy`` on PATH, else the ``grafana/alloy:latest``
  image, running that same ``config.alloy``.
- ``promtail``: ``PROMTAIL_BIN`` or ``promtail`` on PATH, else the
  ``grafana/promtail:3.6.0`` image, with the equivalent ``docker_sd_configs`` scrape
  config and the same client settings.
- ``cmd:NAME=COMMAND``: any command line, run through ``sh -c`` with these replaced:
  ``{config_alloy}``, ``{promtail_config}``, ``{push_url}``, ``{storage}``,
  ``{http_port}``, ``{run}``. Without ``{http_port}`` it is given 3 s to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from minilog.bench.dockerapi import DockerAPI
from minilog.bench.lokiproc import free_port
from minilog.bench.procstats import CpuSource, proc_rss_mb, tree
from minilog.errors import BenchError

__all__ = [
    "MINILOG_LOGS_FROM",
    "MINILOG_QUEUE_BOUND_MB",
    "AgentRunner",
    "AgentSpec",
    "WriteSettings",
    "alloy_config",
    "parse_agent",
    "promtail_config",
    "resolve",
]

#: ``loki.write``'s queue bound (``queue_config.capacity``, 10 MiB) in MB.
MINILOG_QUEUE_BOUND_MB = (10 << 20) / 1e6
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REFRESH = "1s"
DOCKER_SOCKET = "/var/run/docker.sock"
ALLOY_IMAGE = "grafana/alloy:latest"
PROMTAIL_IMAGE = "grafana/promtail:3.6.0"
MINILOG_IMAGE = "minilog:latest"


@dataclass(frozen=True)
class WriteSettings:
    """``loki.write`` endpoint arguments the run sets; ``None`` keeps the agent's
    default. ``min_shards`` (``queue_config``) is experimental in Alloy: agents given
    one run with ``--stability.level=experimental``; Promtail has no such setting."""

    min_backoff_period: str | None = None
    max_backoff_period: str | None = None
    max_backoff_retries: int | None = None
    min_shards: int | None = None

    def describe(self) -> str:
        parts = [
            f"{k}={v}"
            for k, v in (
                ("min_backoff_period", self.min_backoff_period),
                ("max_backoff_period", self.max_backoff_period),
                ("max_backoff_retries", self.max_backoff_retries),
                ("min_shards", self.min_shards),
            )
            if v is not None
        ]
        return ", ".join(parts) or "defaults"

    @property
    def run_flags(self) -> list[str]:
        """What ``alloy run`` (and ``minilog run``) need for these settings."""
        return [] if self.min_shards is None else ["--stability.level=experimental"]


#: ``--agent`` names of minilog with ``loki.source.docker``'s ``logs_from`` set.
MINILOG_LOGS_FROM = {"minilog-file": "file", "minilog-api": "api"}


def alloy_config(
    run: str, push_url: str, write: WriteSettings, logs_from: str | None = None
) -> str:
    """The ``config.alloy`` every Alloy-compatible agent runs; ``logs_from`` (a
    minilog argument, which Alloy would refuse) only for minilog's path variants."""
    endpoint = [f'    url = "{push_url}"']
    if write.min_backoff_period is not None:
        endpoint.append(f'    min_backoff_period = "{write.min_backoff_period}"')
    if write.max_backoff_period is not None:
        endpoint.append(f'    max_backoff_period = "{write.max_backoff_period}"')
    if write.max_backoff_retries is not None:
        endpoint.append(f"    max_backoff_retries = {write.max_backoff_retries}")
    if write.min_shards is not None:
        endpoint.append(
            f"    queue_config {{\n      min_shards = {write.min_shards}\n    }}"
        )
    body = "\n".join(endpoint)
    source_extra = "" if logs_from is None else f'\n  logs_from  = "{logs_from}"'
    return f"""\
// minilog bench: run {run}
discovery.docker "bench" {{
  host             = "unix://{DOCKER_SOCKET}"
  refresh_interval = "{REFRESH}"
  filter {{
    name   = "label"
    values = ["minilog.bench.run={run}"]
  }}
}}

discovery.relabel "bench" {{
  targets = discovery.docker.bench.targets
  rule {{
    source_labels = ["__meta_docker_container_name"]
    regex         = "/(.*)"
    target_label  = "container"
  }}
  rule {{
    source_labels = ["__meta_docker_container_label_minilog_bench_run"]
    target_label  = "bench_run"
  }}
}}

loki.source.docker "bench" {{
  host       = "unix://{DOCKER_SOCKET}"
  targets    = discovery.relabel.bench.output
  forward_to = [loki.write.bench.receiver]{source_extra}
}}

loki.write "bench" {{
  endpoint {{
{body}
  }}
}}
"""


def promtail_config(
    run: str, push_url: str, write: WriteSettings, storage: Path, http_port: int
) -> dict[str, object]:
    """Promtail's equivalent of :func:`alloy_config` (JSON, which is YAML)."""
    backoff = {
        "min_period": write.min_backoff_period or "500ms",
        "max_period": write.max_backoff_period or "5m",
        "max_retries": 10
        if write.max_backoff_retries is None
        else write.max_backoff_retries,
    }
    return {
        "server": {
            "http_listen_address": "127.0.0.1",
            "http_listen_port": http_port,
            "grpc_listen_address": "127.0.0.1",
            "grpc_listen_port": free_port(),
            "log_level": "warn",
        },
        "positions": {"filename": str(storage / "positions.yaml")},
        "clients": [
            {
                "url": push_url,
                "batchwait": "1s",
                "batchsize": 1 << 20,
                "timeout": "10s",
                "backoff_config": backoff,
            }
        ],
        "scrape_configs": [
            {
                "job_name": "bench",
                "docker_sd_configs": [
                    {
                        "host": f"unix://{DOCKER_SOCKET}",
                        "refresh_interval": REFRESH,
                        "filters": [
                            {"name": "label", "values": [f"minilog.bench.run={run}"]}
                        ],
                    }
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_docker_container_name"],
                        "regex": "/(.*)",
                        "target_label": "container",
                    },
                    {
                        "source_labels": [
                            "__meta_docker_container_label_minilog_bench_run"
                        ],
                        "target_label": "bench_run",
                    },
                ],
            }
        ],
    }


@dataclass(frozen=True)
class AgentSpec:
    """An ``--agent`` value: ``name`` labels the results, ``kind`` says how it runs."""

    name: str
    kind: str  # minilog, minilog-image, alloy, promtail, cmd
    command: str = ""
    #: ``loki.source.docker``'s ``logs_from`` for a minilog process; None: default.
    logs_from: str | None = None

    def queue_bound_mb(self, shards: int = 1) -> float | None:
        """minilog's queue bound: ``capacity`` per shard."""
        return (
            MINILOG_QUEUE_BOUND_MB * shards
            if self.kind in ("minilog", "minilog-image")
            else None
        )


def parse_agent(value: str) -> AgentSpec:
    """Raises ValueError for an unknown name or an empty ``cmd:``."""
    if value.startswith("cmd:"):
        rest = value[4:]
        name, sep, command = rest.partition("=")
        if not sep:
            name, command = "cmd", rest
        if not command.strip() or not name.strip():
            raise ValueError("--agent cmd:NAME=COMMAND needs a name and a command")
        return AgentSpec(name.strip(), "cmd", command)
    if value in ("minilog", "minilog-image", "alloy", "promtail"):
        return AgentSpec(value, value)
    if value in MINILOG_LOGS_FROM:
        return AgentSpec(value, "minilog", logs_from=MINILOG_LOGS_FROM[value])
    raise ValueError(
        f"unknown agent {value!r}: minilog, minilog-file, minilog-api, "
        "minilog-image, alloy, promtail or cmd:NAME=COMMAND"
    )


@dataclass
class Resolved:
    """How an agent runs here: a process (``argv``) or a container (``image``)."""

    spec: AgentSpec
    argv: list[str] = field(default_factory=list)  # with placeholders
    image: str = ""
    ready_path: str = "/-/ready"
    config_kind: str = "alloy"  # or promtail


async def resolve(spec: AgentSpec, docker: DockerAPI) -> Resolved | str:
    """How ``spec`` runs on this machine, or why it cannot (the skip reason)."""
    if spec.kind == "minilog":
        return Resolved(
            spec,
            argv=[
                sys.executable,
                "-m",
                "minilog",
                "run",
                "--server.http.listen-addr=127.0.0.1:{http_port}",
                "--storage.path={storage}",
                "{config_alloy}",
            ],
        )
    if spec.kind == "minilog-image":
        if await docker.image_exists(MINILOG_IMAGE):
            return Resolved(spec, image=MINILOG_IMAGE)
        return (
            f"image {MINILOG_IMAGE} not in the local Docker Engine (build it: docker "
            "compose -f compose/docker-compose.yml build alloy)"
        )
    if spec.kind == "alloy":
        binary = os.environ.get("ALLOY_BIN") or shutil.which("alloy")
        if binary:
            return Resolved(
                spec,
                argv=[
                    binary,
                    "run",
                    "--server.http.listen-addr=127.0.0.1:{http_port}",
                    "--storage.path={storage}",
                    "--disable-reporting",
                    "{config_alloy}",
                ],
            )
        if await docker.image_exists(ALLOY_IMAGE):
            return Resolved(spec, image=ALLOY_IMAGE)
        return (
            f"no Grafana Alloy here: no ALLOY_BIN, no alloy on PATH, and image "
            f"{ALLOY_IMAGE} is not in the local Docker Engine (docker pull "
            f"{ALLOY_IMAGE}; no registry that has it answers on this machine)"
        )
    if spec.kind == "promtail":
        binary = os.environ.get("PROMTAIL_BIN") or shutil.which("promtail")
        if binary:
            return Resolved(
                spec,
                argv=[binary, "-config.file={promtail_config}"],
                ready_path="/ready",
                config_kind="promtail",
            )
        if await docker.image_exists(PROMTAIL_IMAGE):
            return Resolved(
                spec, image=PROMTAIL_IMAGE, ready_path="/ready", config_kind="promtail"
            )
        return (
            f"no Promtail here: no PROMTAIL_BIN, no promtail on PATH, and image "
            f"{PROMTAIL_IMAGE} is not in the local Docker Engine"
        )
    return Resolved(spec, argv=["sh", "-c", spec.command], ready_path="")


class AgentRunner:
    """One agent for one run: start, readiness, kill -9, restart, stop, readings."""

    def __init__(
        self,
        resolved: Resolved,
        workdir: Path,
        run: str,
        push_url: str,
        write: WriteSettings,
        docker: DockerAPI,
    ) -> None:
        self.resolved = resolved
        self.docker = docker
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.config_alloy = workdir / "config.alloy"
        self.config_alloy.write_text(
            alloy_config(run, push_url, write, resolved.spec.logs_from)
        )
        self.promtail_config = workdir / "promtail.yaml"
        self.promtail_config.write_bytes(
            orjson.dumps(
                promtail_config(run, push_url, write, self.storage, self.http_port),
                option=orjson.OPT_INDENT_2,
            )
        )
        self.log_path = workdir / "agent.log"
        # Before the config argument of ``run``: an Alloy-compatible agent's only.
        self.run_flags = (
            write.run_flags
            if resolved.config_kind == "alloy" and resolved.spec.kind != "cmd"
            else []
        )
        self.values = {
            "config_alloy": str(self.config_alloy),
            "promtail_config": str(self.promtail_config),
            "push_url": push_url,
            "storage": str(self.storage),
            "http_port": str(self.http_port),
            "run": run,
        }
        self.cpu = CpuSource()
        self._proc: subprocess.Popen[bytes] | None = None
        self._cid = ""
        self._pid = 0
        self.restarts = 0

    # -- lifecycle -------------------------------------------------------------------

    def argv(self) -> list[str]:
        out = []
        for arg in self.resolved.argv:
            if arg == "{config_alloy}":
                out.extend(self.run_flags)
            for key, value in self.values.items():
                placeholder = "{" + key + "}"
                if placeholder in arg:
                    # A cmd: agent's line goes through sh -c: quote what we put in.
                    quoted = (
                        shlex.quote(value)
                        if self.resolved.spec.kind == "cmd"
                        else value
                    )
                    arg = arg.replace(placeholder, quoted)
            out.append(arg)
        return out

    async def start(self) -> float:
        """Start and wait until ready; seconds to ready."""
        t0 = time.monotonic()
        if self.resolved.image:
            await self._start_container()
        else:
            with self.log_path.open("ab") as log:
                # Popen returns at once; waiting for the child happens in a thread.
                self._proc = subprocess.Popen(  # noqa: ASYNC220
                    self.argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # kill -9 reaches a wrapper's children too
                    cwd=self.workdir,
                )
            self._pid = self._proc.pid
            self.cpu.follow(pids=[self._pid])
        await self._wait_ready()
        return time.monotonic() - t0

    async def _start_container(self) -> None:
        if not self._cid:
            argv: list[str] | None
            if self.resolved.config_kind == "promtail":
                argv = [f"-config.file={self.promtail_config}"]
            else:
                argv = [
                    "run",
                    f"--server.http.listen-addr=127.0.0.1:{self.http_port}",
                    f"--storage.path={self.storage}",
                    *self.run_flags,
                    str(self.config_alloy),
                ]
            w = str(self.workdir)
            self._cid = await self.docker.create(
                self.resolved.image,
                argv,
                labels={"minilog.bench": "agent"},
                name=f"minilog-bench-agent-{uuid.uuid4().hex[:8]}",
                network_mode="host",
                binds=[f"{DOCKER_SOCKET}:{DOCKER_SOCKET}", f"{w}:{w}"],
                user="0:0",
            )
        await self.docker.start(self._cid)
        info = await self.docker.inspect(self._cid)
        self._pid = int(info["State"]["Pid"])
        self.cpu.follow(container_id=self._cid)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return bool(self._cid) and os.path.exists(f"/proc/{self._pid}")

    def log_tail(self, n: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-n:])

    async def _wait_ready(self) -> None:
        path = self.resolved.ready_path
        if not path or (
            self.resolved.spec.kind == "cmd"
            and "{http_port}" not in self.resolved.spec.command
        ):
            await asyncio.sleep(3.0)
            if not self.alive():
                raise BenchError(
                    f"agent {self.resolved.spec.name} exited:\n{self.log_tail()}"
                )
            return
        url = f"http://127.0.0.1:{self.http_port}{path}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s:
            while True:
                if not self.alive():
                    raise BenchError(
                        f"agent {self.resolved.spec.name} exited before ready:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with s.get(url) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"agent {self.resolved.spec.name} not ready at {url} after "
                        f"{READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    async def kill9(self) -> None:
        """SIGKILL the agent (its whole process group, or its container)."""
        self.cpu.read()
        self.cpu.bank()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self._proc.wait)
            self._proc = None
        elif self._cid:
            await self.docker.kill(self._cid, "KILL")
        self.cpu.follow()

    async def restart(self) -> float:
        self.restarts += 1
        return await self.start()

    async def stop(self) -> int | None:
        """SIGTERM, SIGKILL after ``STOP_TIMEOUT_S``; the exit code of a process."""
        self.cpu.read()
        code = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                code = await asyncio.to_thread(proc.wait)
        if self._cid:
            cid, self._cid = self._cid, ""
            with contextlib.suppress(BenchError):
                self.log_path.write_bytes(
                    b"\n".join(await self.docker.last_lines(cid, 200))
                )
            with contextlib.suppress(BenchError):
                await self.docker.stop(cid, int(STOP_TIMEOUT_S))
            await self.docker.remove(cid)
        return code

    # -- readings --------------------------------------------------------------------

    def rss_mb(self) -> float:
        """RSS of the agent's process tree (MB); ``nan`` when it is not running."""
        if not self._pid or not self.alive():
            return math.nan
        total = 0.0
        for pid in tree(self._pid):
            value = proc_rss_mb(pid)
            if not math.isnan(value):
                total += value
        return total

    def hwm_mb(self) -> float:
        """Peak resident memory of the agent's main process in this life (``VmHWM``)."""
        if not self._pid or not self.alive():
            return math.nan
        return proc_rss_mb(self._pid, "VmHWM")
