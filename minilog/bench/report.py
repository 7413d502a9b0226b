"""The results: ``results.json`` and the table printed at the end.

Pure but for writing the file.

``results.json`` is ``{"machine": {...}, "command": "...", "results": [record, ...]}``
with one record per agent and profile (``FIELDS`` always present; profiles add their
own: ``steps``, ``latency``, ``fault_window_s``, ``series`` for the plots, ...).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "CATCH_UP_MIN_BACKLOG_S",
    "FIELDS",
    "format_table",
    "machine",
    "targets",
    "write_results",
]

FIELDS = (
    "agent",
    "profile",
    "sink",
    "lines_written",
    "lines_delivered",
    "lines_lost",
    "lines_duplicated",
    "lines_per_s",
    "agent_cpu_s_per_million",
    "dockerd_cpu_s_per_million",
    "agent_peak_rss_mb",
    "skipped",
)

_COLUMNS = (
    ("agent", "agent"),
    ("profile", "profile"),
    ("sink", "sink"),
    ("written", "lines_written"),
    ("lost", "lines_lost"),
    ("sent twice", "lines_duplicated"),
    ("lines/s", "lines_per_s"),
    ("agent CPU s/1M", "agent_cpu_s_per_million"),
    ("dockerd CPU s/1M", "dockerd_cpu_s_per_million"),
    ("Loki CPU s/1M", "loki_cpu_s_per_million"),
    ("peak RSS MB", "agent_peak_rss_mb"),
    ("idle RSS MB", "agent_idle_rss_mb"),
    ("p99 latency s", "latency_p99_s"),
    ("1st push after s", "first_push_after_fault_s"),
    ("catch-up s", "catch_up_s"),
)


#: The catch-up target is judged only when the fault left at least this many seconds
#: of input waiting.
CATCH_UP_MIN_BACKLOG_S = 5.0


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(records: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """One row per record; a skipped record says why in place of its figures."""
    heads = [h for h, _ in _COLUMNS]
    rows = []
    said: set[tuple[str, str]] = set()
    for rec in records:
        if rec.get("skipped"):
            row = [_cell(rec.get(k)) for _, k in _COLUMNS[:3]]
            reason = (rec["agent"], str(rec["skipped"]))
            row.append(
                "skipped" + (" (as above)" if reason in said else ": " + reason[1])
            )
            said.add(reason)
            row.extend([""] * (len(_COLUMNS) - 4))
        else:
            row = [_cell(rec.get(k)) for _, k in _COLUMNS]
        rows.append(row)
    if markdown:
        out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [len(h) for h in heads]
    for r in rows:
        for i, c in enumerate(r):
            if not c.startswith("skipped"):
                widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(heads)).rstrip()]
    lines.extend(
        "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows
    )
    return "\n".join(lines)


def targets(records: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets for minilog, each as one line: met, or by how much not."""
    out = []
    by = {(r["agent"], r["profile"]): r for r in records if not r.get("skipped")}
    mini = by.get(("minilog", "drain")) or by.get(("minilog-image", "drain"))
    prom = by.get(("promtail", "drain"))
    if (
        mini
        and prom
        and mini["agent_cpu_s_per_million"]
        and prom["agent_cpu_s_per_million"]
    ):
        ratio = mini["agent_cpu_s_per_million"] / prom["agent_cpu_s_per_million"]
        verdict = "met" if ratio <= 0.33 else f"MISSED by {ratio / 0.33:.2f}x"
        out.append(
            f"drain CPU per 1M lines, {mini['agent']} / promtail = "
            f"{mini['agent_cpu_s_per_million']:.2f} / "
            f"{prom['agent_cpu_s_per_million']:.2f} "
            f"= {ratio:.2f} (target <= 0.33): {verdict}"
        )
    for rec in records:
        if rec.get("skipped") or rec["agent"] not in ("minilog", "minilog-image"):
            continue
        if rec["profile"] not in ("outage", "kill", "throttle", "slow"):
            continue
        name = f"{rec['agent']} {rec['profile']}"
        lost = rec["lines_lost"]
        out.append(
            f"{name}: {lost} lines lost (target 0): {'met' if lost == 0 else 'MISSED'}"
        )
        dup = rec["lines_duplicated"]
        out.append(
            f"{name}: {dup} lines sent twice (target: at most one unacknowledged "
            "batch, "
            "~6,000 lines of these at 1 MiB)"
            + (": met" if dup is not None and dup <= 6000 else ": MISSED")
        )
        if rec["profile"] in ("outage", "kill") and rec.get("rss_bound_mb"):
            peak = rec.get("agent_peak_rss_in_fault_mb")
            bound = rec["rss_bound_mb"]
            ok = peak is not None and peak <= bound
            out.append(
                f"{name}: peak RSS during the outage {peak} MB vs queue bound + idle "
                f"RSS {bound} MB: "
                + ("met" if ok else f"MISSED by {(peak or 0) - bound:.1f} MB")
            )
        rate, cu = rec.get("input_lines_per_s"), rec.get("catch_up_lines_per_s")
        backlog = rec.get("backlog_at_fault_end") or 0
        if rate and backlog < CATCH_UP_MIN_BACKLOG_S * rate:
            # A backlog of a batch or two clears in one round trip: no rate to judge.
            out.append(
                f"{name}: backlog at the fault's end {backlog:,} lines (under "
                f"{CATCH_UP_MIN_BACKLOG_S:g} s of input): catch-up not judged"
            )
        elif rate and cu:
            ratio = cu / rate
            out.append(
                f"{name}: catch-up {cu:,.0f} lines/s = {ratio:.1f}x the input rate "
                f"(target >= 3x): {'met' if ratio >= 3 else 'MISSED'}"
            )
    return out


def write_results(
    path: Path, records: Sequence[dict[str, Any]], command: str, extra: dict[str, Any]
) -> None:
    doc = {"command": command, "machine": machine(), **extra, "results": list(records)}
    path.write_bytes(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
