"""CPU and memory readings: ``/proc`` for processes, cgroup accounting for containers.

Owns the kernel boundary of the harness. A process is read with its descendants (an
agent started through a shell or a wrapper counts with its children); a container from
its cgroup's ``cpuacct.usage`` (cgroup v1) or ``cpu.stat`` (v2). Readings that cannot be
taken (no such process, cgroup not visible) are ``nan``, never a guess.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CpuSource",
    "cgroup_cpu_s",
    "children_of",
    "find_pids",
    "proc_cpu_s",
    "proc_rss_mb",
    "tree",
]

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")
_CGROUP = Path("/sys/fs/cgroup")


def _stat_fields(pid: int) -> list[str]:
    text = (_PROC / str(pid) / "stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text.rsplit(")", 1)[1].split()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds; ``nan`` when it is gone."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / _TICKS


def proc_rss_mb(pid: int, key: str = "VmRSS") -> float:
    """A kB field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in MB (10^6 B)."""
    try:
        with (_PROC / str(pid) / "status").open() as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return math.nan
    return math.nan


def children_of() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every visible process."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant of it."""
    kids = children_of()
    out = [pid]
    i = 0
    while i < len(out):
        out.extend(kids.get(out[i], ()))
        i += 1
    return out


def find_pids(comm: str) -> list[int]:
    """Pids whose ``comm`` is exactly ``comm`` (``dockerd``)."""
    out = []
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        try:
            if (_PROC / entry / "comm").read_text().strip() == comm:
                out.append(int(entry))
        except OSError:
            continue
    return out


def cgroup_cpu_s(container_id: str) -> float:
    """CPU seconds a container used, from its cgroup; ``nan`` when not visible."""
    v1 = [
        _CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage",
        _CGROUP / "cpu,cpuacct" / "docker" / container_id / "cpuacct.usage",
        _CGROUP
        / "cpuacct"
        / "system.slice"
        / f"docker-{container_id}.scope"
        / "cpuacct.usage",
    ]
    for path in v1:
        try:
            return int(path.read_text()) / 1e9
        except (OSError, ValueError):
            continue
    v2 = [
        _CGROUP / "system.slice" / f"docker-{container_id}.scope" / "cpu.stat",
        _CGROUP / "docker" / container_id / "cpu.stat",
    ]
    for path in v2:
        try:
            for line in path.read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            continue
    return math.nan


class CpuSource:
    """CPU seconds of a process tree or a container, read on demand.

    A process that exits takes its CPU with it; :meth:`bank` adds what was read last to
    a running total before a planned restart, so a profile's figure covers both lives.
    """

    def __init__(
        self, pids: Iterable[int] = (), container_id: str = "", children: bool = True
    ) -> None:
        self.children = children
        self.pids = list(pids)
        self.container_id = container_id
        self._banked = 0.0
        self._last = 0.0

    def read(self) -> float:
        if self.container_id:
            now = cgroup_cpu_s(self.container_id)
        elif self.pids:
            total = 0.0
            seen = False
            for root in self.pids:
                for pid in tree(root) if self.children else [root]:
                    value = proc_cpu_s(pid)
                    if not math.isnan(value):
                        total += value
                        seen = True
            now = total if seen else math.nan
        else:
            now = math.nan
        if not math.isnan(now):
            self._last = now
            return self._banked + now
        return self._banked + self._last

    def bank(self) -> None:
        """Keep what was read so far; the next reading starts a new life from 0."""
        self._banked += self._last
        self._last = 0.0

    def follow(self, pids: Iterable[int] = (), container_id: str = "") -> None:
        self.pids = list(pids)
        self.container_id = container_id
