"""Helpers for end-to-end agent tests: the agent as a subprocess, its config, and what
Docker itself holds.

Owns ``AgentProcess`` (``python -m minilog run`` with stderr collected), a
``discovery.docker -> discovery.relabel -> loki.source.docker -> loki.write`` config
narrowed to the test's own containers, Prometheus-text metric reading, the positions
file reader and Docker's own view of a container's log (the ground truth).
"""

from __future__ import annotations

import asyncio
import calendar
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from minilog.testing import FakeLoki

__all__ = [
    "REPO",
    "SOURCE_ID",
    "AgentProcess",
    "StartAgent",
    "docker_config",
    "docker_lines",
    "free_port",
    "metric_sum",
    "only_stream",
    "paced_script",
    "positions_file",
    "read_positions",
    "resume_index",
    "rfc3339_ns",
    "start_agent_process",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]
#: The ``loki.source.docker`` component of ``docker_config``; its data dir holds the
#: positions file.
SOURCE_ID = "loki.source.docker.logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_config(
    name_regex: str,
    push_url: str,
    *,
    batch_wait: str = "100ms",
    min_backoff: str = "50ms",
    max_backoff: str = "400ms",
    max_retries: int = 10_000,
) -> str:
    """The seed pipeline, keeping only containers whose name matches ``name_regex``.

    Backoff is short so an outage test retries often; ``max_retries`` is large so an
    outage of a few seconds drops nothing.
    """
    return f"""
discovery.docker "containers" {{
  host = "unix:///var/run/docker.sock"
}}

discovery.relabel "keep" {{
  targets = discovery.docker.containers.targets
  rule {{
    source_labels = ["__meta_docker_container_name"]
    regex         = "/(.*)"
    target_label  = "container"
  }}
  rule {{
    source_labels = ["container"]
    regex         = "{name_regex}"
    action        = "keep"
  }}
}}

loki.source.docker "logs" {{
  host       = "unix:///var/run/docker.sock"
  targets    = discovery.relabel.keep.output
  forward_to = [loki.write.out.receiver]
}}

loki.write "out" {{
  endpoint {{
    url                 = "{push_url}"
    batch_wait          = "{batch_wait}"
    min_backoff_period  = "{min_backoff}"
    max_backoff_period  = "{max_backoff}"
    max_backoff_retries = {max_retries}
  }}
}}
"""


def paced_script(tag: str, count: int, *, every: int, pause: str) -> str:
    """A busybox ``sh`` loop printing ``<tag> <n>`` for n in 1..count, pausing
    ``pause`` seconds every ``every`` lines, then staying up (the test removes it)."""
    return (
        f'i=1; while [ $i -le {count} ]; do echo "{tag} $i"; '
        f"if [ $((i % {every})) -eq 0 ]; then sleep {pause}; fi; i=$((i+1)); done; "
        "exec sleep 600"
    )


def rfc3339_ns(text: str) -> int:
    """Docker's ``2026-01-02T03:04:05.123456789Z`` as Unix nanoseconds."""
    whole, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def docker_lines(container: Any) -> list[tuple[int, str]]:
    """What Docker holds for a container, in its order: ``(timestamp_ns, line)``."""
    raw = container.logs(stdout=True, stderr=True, timestamps=True)
    out = []
    for record in raw.decode().splitlines():
        ts, _, line = record.partition(" ")
        out.append((rfc3339_ns(ts), line))
    return out


def positions_file(storage: Path) -> Path:
    return storage / SOURCE_ID / "positions.json"


def read_positions(storage: Path) -> dict[str, tuple[int, int]]:
    """``{container id: (ts_ns, count_at_ts)}`` from the file (empty if none yet)."""
    try:
        raw = orjson.loads(positions_file(storage).read_bytes())
    except FileNotFoundError:
        return {}
    return {cid: (p["ts_ns"], p.get("count_at_ts", 0)) for cid, p in raw.items()}


def resume_index(records: Sequence[tuple[int, str]], position: tuple[int, int]) -> int:
    """How many of Docker's ``records`` a saved ``(ts_ns, count_at_ts)`` covers: a
    resume must start with ``records[resume_index(...)]``."""
    ts_ns, count = position
    before = sum(1 for ts, _ in records if ts < ts_ns)
    at = sum(1 for ts, _ in records if ts == ts_ns)
    assert count <= at, f"position {position} counts more lines than Docker holds"
    return before + count


def metric_sum(text: str, name: str, **match: str) -> float:
    """Sum of the samples called ``name`` (``_total`` included) whose labels include
    ``match``, in Prometheus text exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in match.items()
            ):
                total += sample.value
    return total


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
) -> None:
    """Poll ``predicate`` until true; ``AssertionError`` naming ``what`` after
    ``timeout_s``. Only for state that offers no event to await (files, metrics)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


class AgentProcess:
    """``python -m minilog run`` in a subprocess, its stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._seen = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            async with self._seen:
                self.lines.append(raw.decode(errors="replace"))
                self._seen.notify_all()

    def log_count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for_log(self, text: str, timeout_s: float = 30) -> None:
        try:
            async with asyncio.timeout(timeout_s), self._seen:
                await self._seen.wait_for(lambda: self.log_count(text) > 0)
        except TimeoutError:
            raise AssertionError(
                f"no {text!r} in the agent's log:\n{''.join(self.lines)}"
            ) from None

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path) as resp,
        ):
            return resp.status, await resp.text()

    async def metric(self, name: str, **match: str) -> float:
        status, text = await self.get("/metrics")
        assert status == 200
        return metric_sum(text, name, **match)

    async def wait(self, timeout_s: float = 60) -> int:
        async with asyncio.timeout(timeout_s):
            rc = await self.proc.wait()
            await self._reader
        return rc

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.wait()

    async def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM (a graceful shutdown) and the exit code."""
        if self.proc.returncode is None:
            self.proc.terminate()
        return await self.wait(timeout_s)


async def start_agent_process(
    config: Path | None,
    storage: Path,
    *extra: str,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    pythonpath: Sequence[Path] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> AgentProcess:
    """Start the agent on ``config`` (``None``: its embedded default) with
    ``--storage.path=storage`` and ``extra`` flags; returns once it serves HTTP.

    ``prefix`` wraps the command (``setpriv ...``), ``env`` adds variables,
    ``pythonpath`` directories searched before the repository's, and ``preexec_fn``
    runs in the child before the exec (to set resource limits)."""
    port = free_port()
    path = os.pathsep.join(str(p) for p in (*pythonpath, REPO))
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "minilog",
        "run",
        f"--server.http.listen-addr=127.0.0.1:{port}",
        f"--storage.path={storage}",
        "--disable-reporting",
        *extra,
        *([] if config is None else [str(config)]),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
        preexec_fn=preexec_fn,
    )
    agent = AgentProcess(proc, port)
    try:
        await agent.wait_for_log("now listening")
    except BaseException:
        await agent.kill()
        raise
    return agent


#: The ``agents`` fixture: ``agents(config, storage=None, *flags, **kw)`` is
#: ``start_agent_process`` with the test's ``tmp_path / "data"`` as default storage.
StartAgent = Callable[..., Awaitable["AgentProcess"]]


def only_stream(loki: FakeLoki, name: str) -> list[tuple[int, str]]:
    """``(timestamp_ns, line)`` of every entry ``loki`` received, all of which must be
    in the stream ``{container="<name>"}``."""
    out = []
    for labels, entry in loki.entries:
        assert labels == {"container": name}, labels
        out.append((entry.timestamp_ns, entry.line))
    return out
