"""The generators' log lines: what a generator container runs and how a line is read back.

Every line names its generator (``gen``) and carries its sequence number (``seq``, from 1),
so what reaches Loki can be counted exactly per generator: a missing number is a line
lost, a number seen twice a line sent twice. The shapes are the three an operator meets
(JSON access logs, logfmt, plain text) in rotation, 120 to 230 bytes, about 170 on average.

A generator is a busybox ``awk`` program (the ``minilog-busybox:test`` image, or
``busybox``): it writes ``count`` lines at ``rate`` lines per second (paced on
``/proc/uptime``, 10 ms resolution; 0 means as fast as it can), then sleeps until it is
removed, so that agents that only follow running containers (Promtail) see it too.
"""

from __future__ import annotations

import re

__all__ = [
    "GENERATOR_SLEEP",
    "generator_command",
    "parse_line",
]

#: The generator's last step: stay running until the harness removes it.
GENERATOR_SLEEP = "exec sleep 2147483647"

_LINE = re.compile(rb'(?:"gen":"|gen=)([A-Za-z0-9_.-]+)"?[ ,].*?(?:"seq":|seq=)(\d+)')

# One awk program; ``emit`` rotates the shapes and varies the fields with ``seq`` so
# that lines compress as real logs do, neither trivially nor not at all.
_AWK = r"""
function emit(s,   k, m, p, st, d) {
  k = s % 3
  m = methods[s % 4 + 1]; p = paths[s % 5 + 1]; st = codes[s % 7 + 1]
  d = (s * 37) % 900 + 3
  now = strftime("%Y-%m-%dT%H:%M:%SZ", systime())
  if (k == 0) {
    printf "{\"ts\":\"%s\",\"level\":\"%s\",\"gen\":\"%s\",\"seq\":%d,\"msg\":\"request handled\",\"method\":\"%s\",\"path\":\"%s/%d\",\"status\":%d,\"duration_ms\":%d,\"trace_id\":\"%08x%08x\"}\n", now, levels[s % 4 + 1], g, s, m, p, s % 10000, st, d, (s * 7919) % 2147483647, (s * 104729) % 2147483647
  } else if (k == 1) {
    printf "ts=%s level=%s gen=%s seq=%d caller=orders.go:%d msg=\"order state changed\" order_id=%d from=pending to=paid customer=c-%d duration_ms=%d\n", now, levels[s % 4 + 1], g, s, 100 + s % 400, 500000 + s, s % 9973, d
  } else {
    printf "%s %s [worker-%d] gen=%s seq=%d processed batch of %d items for tenant t-%d from queue jobs.%s in %d ms\n", now, ulevels[s % 4 + 1], s % 8, g, s, s % 50 + 1, s % 97, qs[s % 3 + 1], d
  }
}
BEGIN {
  split("info info warn error", levels, " ")
  split("INFO INFO WARN ERROR", ulevels, " ")
  split("GET POST GET PUT", methods, " ")
  split("/api/v1/items /api/v1/orders /api/v1/users /healthz /api/v2/search", paths, " ")
  split("200 200 201 204 404 500 200", codes, " ")
  split("default priority bulk", qs, " ")
  g = GEN; n = COUNT + 0; rate = RATE + 0
  if (rate > 0) {
    getline u < "/proc/uptime"; close("/proc/uptime"); split(u, a, " "); t0 = a[1]
  }
  s = 1
  while (s <= n) {
    due = n
    if (rate > 0) {
      getline u < "/proc/uptime"; close("/proc/uptime"); split(u, a, " ")
      due = int((a[1] - t0) * rate) + 1
      if (due > n) due = n
      if (s > due) { system("usleep 10000"); continue }
    }
    for (; s <= due; s++) emit(s)
    if (rate > 0) fflush()
  }
  fflush()
}
"""


def generator_command(gen: str, count: int, rate: float) -> list[str]:
    """The container command: write ``count`` lines at ``rate``/s as ``gen``, then sleep.

    Raises:
        ValueError: ``gen`` is not a plain name, or ``count``/``rate`` are negative.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", gen):
        raise ValueError(f"generator name {gen!r}: letters, digits, '_', '.', '-' only")
    if count < 0 or rate < 0:
        raise ValueError("count and rate must not be negative")
    script = (
        f"awk -v GEN={gen} -v COUNT={count} -v RATE={rate:g} '{_AWK}' && "
        + GENERATOR_SLEEP
    )
    return ["sh", "-c", script]


def parse_line(line: bytes) -> tuple[str, int] | None:
    """``(gen, seq)`` of a generator's line, or ``None`` for any other line."""
    found = _LINE.search(line)
    if found is None:
        return None
    return found.group(1).decode("ascii"), int(found.group(2))
