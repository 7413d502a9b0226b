"""The compose stack as a newcomer starts it: time to the first line in Loki, and the
``alloy`` container's memory while shipping the demo services and while idle.

    python benchmarks/bench_compose.py                  # with this machine's override
    python benchmarks/bench_compose.py --no-override    # where images can be pulled

Runs ``docker compose ... up -d --build`` (all but Grafana with the override), polls
Loki until the first line of a demo service is queryable, lets the demo services ship
for ``--ship-s`` seconds and reads the agent's ``VmRSS``/``VmHWM`` from
``/proc/<pid>/status``; then stops the demo services, restarts the agent and reads
its memory again after ``--idle-s`` seconds with nothing to tail. ``down -v`` at the
end, whatever happened. The image build is cached after the first run: the time to the
first line is mostly Loki getting ready.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = ("web-gateway", "order-api", "fulfillment-worker")
LOKI = "http://127.0.0.1:3100"


def compose_args(project: str, override: bool) -> list[str]:
    files = ["docker-compose.yml"]
    if override:
        files.append("docker-compose.host-network.yml")
    args = ["docker", "compose", "-p", project]
    for name in files:
        args += ["-f", str(REPO / "compose" / name)]
    return args


def first_line_queryable() -> bool:
    params = urllib.parse.urlencode(
        {
            "query": '{service=~"web-gateway|order-api|fulfillment-worker"}',
            "limit": "1",
            "start": str(time.time_ns() - 3600 * 10**9),
        }
    )
    try:
        with urllib.request.urlopen(
            f"{LOKI}/loki/api/v1/query_range?{params}", timeout=2
        ) as resp:
            return bool(json.load(resp)["data"]["result"])
    except OSError:
        return False


def memory_kib(container: str) -> tuple[int, int]:
    pid = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", container],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else ""
    return int(fields["VmRSS"]), int(fields["VmHWM"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-override", action="store_true")
    parser.add_argument("--ship-s", type=float, default=60.0)
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()
    compose = compose_args(
        f"minilog-bench-{uuid.uuid4().hex[:8]}", not args.no_override
    )
    try:
        started = time.monotonic()
        subprocess.run([*compose, "up", "-d", "--build"], check=True)
        while not first_line_queryable():
            if time.monotonic() - started > 300:
                print("no line in Loki after 300 s")
                return 1
            time.sleep(0.1)  # Loki offers no event: poll
        first = time.monotonic() - started
        print(f"docker compose up -> first line queryable in Loki: {first:.1f} s")

        time.sleep(args.ship_s)
        rss, hwm = memory_kib("alloy")
        print(
            f"alloy shipping the demo services for {args.ship_s:.0f} s: "
            f"VmRSS {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB)"
        )

        subprocess.run([*compose, "stop", *DEMO], check=True, capture_output=True)
        subprocess.run([*compose, "restart", "alloy"], check=True, capture_output=True)
        time.sleep(args.idle_s)
        rss, hwm = memory_kib("alloy")
        print(
            f"alloy idle (restarted, no container to tail) for {args.idle_s:.0f} s: "
            f"VmRSS {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB)"
        )
    finally:
        subprocess.run([*compose, "down", "-v"], check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
