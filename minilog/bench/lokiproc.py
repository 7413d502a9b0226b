"""The harness's own Loki 3.6: its config, starting it, stopping it for an outage.

Owns the Loki process boundary. Loki runs as the binary (``LOKI_BIN``, else ``loki`` on
PATH) or the ``grafana/loki:3.6.0`` image (``--network host``), on free loopback ports
with a fresh data directory, always on the same ports and directory across an outage so
that its write-ahead log brings back what it held.

The config is the compose stack's (the seed's: monolithic, filesystem storage, TSDB v13,
72 h retention, in-memory ring) with the ingestion limits raised, so that a throughput
run measures the agent, not Loki's flow control (see ``LIMITS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from minilog.bench.dockerapi import DockerAPI
from minilog.bench.procstats import CpuSource
from minilog.errors import BenchError

__all__ = [
    "LIMITS",
    "LOKI_IMAGE",
    "LokiLauncher",
    "LokiProcess",
    "find_loki",
    "free_port",
    "loki_config",
]

LOKI_IMAGE = "grafana/loki:3.6.0"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

#: Loki's per-tenant and per-stream ingestion limits, raised for throughput runs (its
#: defaults, 4 MB/s per tenant and 3 MB/s per stream, cap a run near 20k lines/s), and
#: a larger page for the harness's counting queries.
LIMITS: dict[str, Any] = {
    "ingestion_rate_mb": 1024,
    "ingestion_burst_size_mb": 1024,
    "per_stream_rate_limit": "512MB",
    "per_stream_rate_limit_burst": "1024MB",
    "max_entries_limit_per_query": 20000,
    "retention_period": "72h",
    "max_query_lookback": "72h",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loki_config(data_dir: Path, http_port: int, grpc_port: int) -> dict[str, Any]:
    """The seed's Loki config on loopback ports under ``data_dir``, limits raised."""
    d = str(data_dir)
    return {
        "auth_enabled": False,
        "server": {
            "http_listen_address": "127.0.0.1",
            "http_listen_port": http_port,
            "grpc_listen_address": "127.0.0.1",
            "grpc_listen_port": grpc_port,
            "log_level": "warn",
            "grpc_server_max_recv_msg_size": 64 << 20,
        },
        "common": {
            "path_prefix": d,
            "instance_addr": "127.0.0.1",
            "storage": {
                "filesystem": {
                    "chunks_directory": d + "/chunks",
                    "rules_directory": d + "/rules",
                }
            },
            "replication_factor": 1,
            "ring": {"kvstore": {"store": "inmemory"}},
        },
        "schema_config": {
            "configs": [
                {
                    "from": "2024-01-01",
                    "store": "tsdb",
                    "object_store": "filesystem",
                    "schema": "v13",
                    "index": {"prefix": "index_", "period": "24h"},
                }
            ]
        },
        "limits_config": dict(LIMITS),
        "compactor": {
            "working_directory": d + "/compactor",
            "compaction_interval": "10m",
            "retention_enabled": True,
            "retention_delete_delay": "2h",
            "retention_delete_worker_count": 150,
            "delete_request_store": "filesystem",
        },
        "analytics": {"reporting_enabled": False},
    }


@dataclass(frozen=True)
class LokiLauncher:
    kind: Literal["binary", "image"]
    target: str

    def describe(self) -> str:
        if self.kind == "binary":
            return f"Loki binary {self.target}"
        return f"Loki image {self.target} (--network host)"


async def find_loki(docker: DockerAPI | None) -> LokiLauncher:
    """``LOKI_BIN``, else ``loki`` on PATH, else the image in the local Engine.

    Raises:
        BenchError: none of them; the message says how to get one.
    """
    configured = os.environ.get("LOKI_BIN", "").strip()
    if configured:
        if os.access(configured, os.X_OK):
            return LokiLauncher("binary", configured)
        raise BenchError(f"LOKI_BIN={configured} is not an executable file")
    found = shutil.which("loki")
    if found:
        return LokiLauncher("binary", found)
    if docker is not None and await docker.image_exists(LOKI_IMAGE):
        return LokiLauncher("image", LOKI_IMAGE)
    raise BenchError(
        "no Grafana Loki 3.6 to run: set LOKI_BIN, put `loki` on PATH, or "
        f"`docker pull {LOKI_IMAGE}`"
    )


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the harness dies, so no Loki is left behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class LokiProcess:
    """One Loki on fixed ports and a fixed data directory; stop and start at will."""

    def __init__(self, launcher: LokiLauncher, workdir: Path, docker: DockerAPI | None):
        self.launcher = launcher
        self.docker = docker
        self.data_dir = workdir / "loki"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.push_url = self.base_url + "/loki/api/v1/push"
        self.config_path = self.data_dir / "loki.yaml"
        # JSON is YAML: no YAML library needed.
        config = loki_config(self.data_dir, self.http_port, self.grpc_port)
        self.config_path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
        self.log_path = self.data_dir / "loki.log"
        self.cpu = CpuSource()
        self._proc: subprocess.Popen[bytes] | None = None
        self._cid = ""

    async def start(self) -> None:
        args = [f"-config.file={self.config_path}"]
        if self.launcher.kind == "binary":
            with self.log_path.open("ab") as log:
                # Popen returns at once; waiting for the child happens in a thread.
                self._proc = subprocess.Popen(  # noqa: ASYNC220
                    [self.launcher.target, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            self.cpu.follow(pids=[self._proc.pid])
        else:
            assert self.docker is not None
            d = str(self.data_dir)
            self._cid = await self.docker.create(
                self.launcher.target,
                args,
                labels={"minilog.bench": "loki"},
                name=f"minilog-bench-loki-{uuid.uuid4().hex[:8]}",
                network_mode="host",
                binds=[f"{d}:{d}"],
                user=f"{os.getuid()}:{os.getgid()}",
            )
            await self.docker.start(self._cid)
            self.cpu.follow(container_id=self._cid)
        await self.wait_ready()

    def _exited(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    def log_tail(self, n: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Poll ``/ready`` until 200; seconds it took."""
        t0 = time.monotonic()
        last = ""
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5)
        ) as session:
            while True:
                if self._exited():
                    raise BenchError(
                        f"{self.launcher.describe()} exited before ready:\n"
                        + self.log_tail()
                    )
                try:
                    async with session.get(self.base_url + "/ready") as resp:
                        if resp.status == 200:
                            return time.monotonic() - t0
                        last = f"{resp.status} {(await resp.text()).strip()}"
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    last = str(exc)
                if time.monotonic() - t0 > timeout_s:
                    raise BenchError(
                        f"{self.launcher.describe()} not ready after {timeout_s:.0f} s "
                        f"at {self.base_url}: {last}\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """SIGTERM (then SIGKILL after ``STOP_TIMEOUT_S``); its CPU so far is kept."""
        self.cpu.read()
        self.cpu.bank()
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
        if self._cid and self.docker is not None:
            cid, self._cid = self._cid, ""
            with contextlib.suppress(BenchError):
                await self.docker.stop(cid, int(STOP_TIMEOUT_S))
            with contextlib.suppress(BenchError):
                await self.docker.remove(cid)
        self.cpu.follow()

    def cpu_s(self) -> float:
        value = self.cpu.read()
        return value if not math.isnan(value) else math.nan
