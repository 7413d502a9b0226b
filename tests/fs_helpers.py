"""File-system faults for tests: a tiny tmpfs that can be filled or made read-only, and
running a command as an unprivileged user.

Both need root (``mount``, ``setpriv``); ``fs_fault_unavailable_reason`` says why not
when they cannot be used, for ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "NOBODY",
    "as_user",
    "fill",
    "fs_fault_unavailable_reason",
    "remount",
    "tiny_tmpfs",
    "user_unavailable_reason",
]

#: uid and gid of ``nobody`` on Debian-like systems.
NOBODY = 65534


def fs_fault_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


def user_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "dropping privileges needs root"
    if shutil.which("setpriv") is None:
        return "no setpriv command"
    return None


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size_kib: int = 64) -> Iterator[Path]:
    """A ``size_kib`` tmpfs (mode 0777) mounted at ``path`` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size_kib}k,mode=0777",
            "tmpfs",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        # Lazy: a process of the test may still hold a file there.
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` with one file; returns it (delete it to
    free the space)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while f.write(chunk):
                pass
    return filler


def remount(path: Path, *, read_only: bool) -> None:
    option = "remount,ro" if read_only else "remount,rw"
    subprocess.run(["mount", "-o", option, str(path)], check=True, capture_output=True)


def as_user(command: list[str], uid: int = NOBODY) -> list[str]:
    """``command`` prefixed to run as ``uid`` (same gid, no other group).

    The process keeps one capability, CAP_DAC_READ_SEARCH, so it can read this
    interpreter and its packages wherever they live (under /root here); it still cannot
    write where ``uid`` may not, nor connect to a socket ``uid`` may not write to.
    """
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        *command,
    ]
