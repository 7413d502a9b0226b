"""Starts and stops a real Grafana Loki 3.6 for the tests: the binary or the image.

Owns how the tests run a Loki of their own (``LOKI_BIN`` or ``loki`` on PATH, else
the ``grafana/loki:3.6.0`` image in the local Docker Engine; conftest prefers a
``LOKI_URL`` Loki for the seed config), the config it runs (the compose stack's
``compose/loki/loki-config.yaml``, i.e. the seed's with its one fix, moved onto free
loopback ports and a fresh data directory, plus a test's overrides), waiting for
``/ready`` and stopping it whatever happened (SIGTERM, then SIGKILL). ``loki_helpers``
owns talking to a running Loki.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "LOKI_IMAGE",
    "SEED_LOKI_CONFIG",
    "LokiLauncher",
    "LokiStarter",
    "RunningLoki",
    "adapted_config",
    "launcher_or_reason",
    "merge",
    "running_loki",
]

REPO = Path(__file__).resolve().parents[1]
#: The compose stack's Loki config: the seed's plus ``delete_request_store``.
SEED_LOKI_CONFIG = REPO / "compose" / "loki" / "loki-config.yaml"
LOKI_IMAGE = "grafana/loki:3.6.0"

# Loki needs ~10-16 s to report ready (its query frontend finds the scheduler on a
# timer, the ingester waits min_ready_duration); the bound leaves room on a busy host
# and still fails, with Loki's log, before pytest-timeout's 60 s.
READY_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 30.0
_START_ATTEMPTS = 3  # a free port can be taken by another Loki before ours binds it
_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LokiLauncher:
    """How this machine runs a Loki of its own: a binary path or an image name."""

    kind: Literal["binary", "image"]
    target: str

    def describe(self) -> str:
        if self.kind == "binary":
            return f"Loki binary {self.target}"
        return f"Loki image {self.target} (docker, --network host)"


def _image_present(image: str) -> str | None:
    """``None`` when the local Engine has ``image``, else why it cannot be used."""
    try:
        import docker
        import docker.errors
        from docker_helpers import docker_host
    except ImportError:
        return "the docker Python package is not installed"
    host = docker_host()
    if host.startswith("unix://") and not os.path.exists(host[len("unix://") :]):
        return f"Docker Engine not reachable at {host} (no socket)"
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        return f"Docker Engine not reachable: {exc}"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return f"image {image} not in the local Engine (docker pull {image})"
    except Exception as exc:
        return f"Docker Engine not reachable: {exc}"
    finally:
        client.close()
    return None


def launcher_or_reason(
    environ: Mapping[str, str] = os.environ,
) -> LokiLauncher | str:
    """The first way to run Loki here, or why there is none (a skip reason).

    ``LOKI_BIN`` (must be executable), else ``loki`` on PATH, else ``LOKI_IMAGE`` when
    the local Docker Engine holds it. Pulling is left to ``scripts/test``.
    """
    configured = environ.get("LOKI_BIN", "").strip()
    if configured:
        if os.access(configured, os.X_OK):
            return LokiLauncher("binary", configured)
        return f"LOKI_BIN={configured} is not an executable file"
    on_path = shutil.which("loki", path=environ.get("PATH"))
    if on_path is not None:
        return LokiLauncher("binary", on_path)
    image_problem = _image_present(LOKI_IMAGE)
    if image_problem is None:
        return LokiLauncher("image", LOKI_IMAGE)
    return (
        "no real Loki 3.6 to start: LOKI_BIN is unset, no loki on PATH, and "
        f"{image_problem} (set LOKI_URL or LOKI_BIN, or run scripts/test, which "
        "installs one from ../shared/tools when that folder exists)"
    )


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def _moved(value: Any, old_prefix: str, new_prefix: str) -> Any:
    """``value`` with every path string under ``old_prefix`` moved to ``new_prefix``."""
    if isinstance(value, Mapping):
        return {k: _moved(v, old_prefix, new_prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old_prefix, new_prefix) for v in value]
    if isinstance(value, str) and (
        value == old_prefix or value.startswith(old_prefix + "/")
    ):
        return new_prefix + value[len(old_prefix) :]
    return value


def adapted_config(
    seed: Mapping[str, Any],
    data_dir: Path,
    http_port: int,
    grpc_port: int,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The seed's Loki config as a test runs it, then ``overrides``.

    Only what running beside other Lokis on a shared machine needs changes: both
    listeners on free loopback ports, the ring's own address on loopback (the query
    frontend dials the scheduler there), every path under ``path_prefix`` moved into
    ``data_dir``, and no usage report (traffic stays on 127.0.0.1; it also holds a
    stop up for ~25 s without a network).
    """
    prefix = seed["common"]["path_prefix"]
    config = _moved(seed, prefix, str(data_dir))
    adapted = {
        "server": {
            "http_listen_address": _LOOPBACK,
            "http_listen_port": http_port,
            "grpc_listen_address": _LOOPBACK,
            "grpc_listen_port": grpc_port,
        },
        "common": {"instance_addr": _LOOPBACK},
        "analytics": {"reporting_enabled": False},
    }
    return merge(merge(config, adapted), overrides or {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies (Linux), so a
    killed pytest leaves no Loki behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class RunningLoki:
    """A Loki this process started; ``stop()`` is idempotent and always cleans up."""

    def __init__(
        self, launcher: LokiLauncher, workdir: Path, config: Mapping[str, Any]
    ) -> None:
        self.launcher = launcher
        self.workdir = workdir
        self.config = config
        server = config["server"]
        self.base_url = f"http://{_LOOPBACK}:{server['http_listen_port']}"
        self.push_url = self.base_url + "/loki/api/v1/push"
        self.log_path = workdir / "loki.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._container: Any = None
        self._client: Any = None

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        config_path = self.workdir / "loki.yaml"
        config_path.write_text(yaml.safe_dump(dict(self.config), sort_keys=False))
        args = [f"-config.file={config_path}"]
        if self.launcher.kind == "binary":
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    [self.launcher.target, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
        else:
            import docker
            from docker_helpers import TEST_LABEL

            self._client = docker.from_env()
            workdir = str(self.workdir)
            self._container = self._client.containers.run(
                self.launcher.target,
                args,
                name=f"minilog-test-loki-{uuid.uuid4().hex[:8]}",
                detach=True,
                network_mode="host",
                # The official image runs as uid 10001; ours owns the data directory.
                user=f"{os.getuid()}:{os.getgid()}",
                volumes={workdir: {"bind": workdir, "mode": "rw"}},
                labels={TEST_LABEL: "1"},
            )

    def exited(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is not None
        if self._container is not None:
            self._container.reload()
            return bool(self._container.status in ("exited", "dead"))
        return True

    def log_tail(self, lines: int = 15) -> str:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self.log_path.write_bytes(self._container.logs())
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``/ready`` until 200 (Loki offers nothing to wait on); fail fast when
        the process exits.

        Raises:
            RuntimeError: Loki exited or did not become ready; its log tail attached.
        """
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            if self.exited():
                what = self.launcher.describe()
                raise RuntimeError(f"{what} exited before ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"{exc.code} {exc.read().decode(errors='replace').strip()}"
            except OSError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{self.launcher.describe()} not ready after {timeout_s}s at "
                    f"{self.base_url}: {last}\n{self.log_tail()}"
                )
            time.sleep(0.25)

    # -- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``; removes the container."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._container is not None:
            container, self._container = self._container, None
            with contextlib.suppress(Exception):
                self.log_path.write_bytes(container.logs())
            try:
                container.stop(timeout=int(STOP_TIMEOUT_S))  # SIGTERM, then SIGKILL
            finally:
                with contextlib.suppress(Exception):
                    container.remove(force=True)
        if self._client is not None:
            self._client.close()
            self._client = None


@contextlib.contextmanager
def running_loki(
    launcher: LokiLauncher,
    workdir: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    seed_config: Path = SEED_LOKI_CONFIG,
) -> Iterator[RunningLoki]:
    """A ready Loki on free ports with its data under ``workdir`` (fresh each time),
    stopped on exit whatever happened, Ctrl-C included."""
    seed = yaml.safe_load(seed_config.read_text())
    failures = []
    for attempt in range(_START_ATTEMPTS):
        data_dir = workdir / f"loki-{attempt}"
        data_dir.mkdir(parents=True)
        config = adapted_config(seed, data_dir, _free_port(), _free_port(), overrides)
        loki = RunningLoki(launcher, data_dir, config)
        try:
            loki.start()
            loki.wait_ready()
        except RuntimeError as exc:
            loki.stop()
            failures.append(str(exc))
            if "address already in use" in str(exc):
                continue  # another process took a port between our probe and bind
            raise
        except BaseException:
            loki.stop()
            raise
        try:
            yield loki
        finally:
            loki.stop()
        return
    raise RuntimeError("\n\n".join(failures))


#: ``with loki_starter(overrides) as loki:`` (a conftest fixture): a ready Loki with
#: the seed's config plus ``overrides`` in a fresh directory, stopped after the block.
LokiStarter = Callable[[Mapping[str, Any]], AbstractContextManager["RunningLoki"]]
