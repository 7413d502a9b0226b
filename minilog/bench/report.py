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
    "FILE_PATH_AGENT_CPU_S",
    "FILE_PATH_CPU_RATIO",
    "FILE_PATH_FIRST_LINE_S",
    "FILE_PATH_SPEEDUP",
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
    ("1st line s", "first_line_s"),
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


#: Agent names that are minilog; the ones that read json-files where they can.
_MINILOG = ("minilog", "minilog-file", "minilog-api", "minilog-image")
_FILE_READERS = ("minilog-file", "minilog", "minilog-image")
#: Issue 13 (``loki.source.docker`` reading json-files): agent + dockerd CPU per line
#: against Promtail's, the agent's own CPU per 1M lines, drain speed against the API
#: path, and a new container's first line (Docker's timestamp of it to Loki's 2xx).
FILE_PATH_CPU_RATIO = 0.25
FILE_PATH_AGENT_CPU_S = 3.0
FILE_PATH_SPEEDUP = 1.5
FILE_PATH_FIRST_LINE_S = 0.3


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _file_path_targets(by: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    out = []
    prom = by.get(("promtail", "drain"))
    api = by.get(("minilog-api", "drain"))
    for name in _FILE_READERS:
        rec = by.get((name, "drain"))
        if rec is None or rec.get("agent_cpu_s_per_million") is None:
            continue
        agent = rec["agent_cpu_s_per_million"]
        out.append(
            f"{name} drain: agent CPU {agent:.2f} s per 1M lines (target <= "
            f"{FILE_PATH_AGENT_CPU_S:g}): {_verdict(agent <= FILE_PATH_AGENT_CPU_S)}"
        )
        both = agent + (rec.get("dockerd_cpu_s_per_million") or 0.0)
        if prom and prom.get("agent_cpu_s_per_million") is not None:
            theirs = prom["agent_cpu_s_per_million"] + (
                prom.get("dockerd_cpu_s_per_million") or 0.0
            )
            ratio = both / theirs
            out.append(
                f"{name} drain: agent + dockerd CPU per 1M lines, {name} / promtail "
                f"= {both:.2f} / {theirs:.2f} = {ratio:.2f} (target <= "
                f"{FILE_PATH_CPU_RATIO:g}): {_verdict(ratio <= FILE_PATH_CPU_RATIO)}"
            )
        if api and api.get("lines_per_s") and rec.get("lines_per_s"):
            speedup = rec["lines_per_s"] / api["lines_per_s"]
            out.append(
                f"{name} drain: {rec['lines_per_s']:,.0f} lines/s = {speedup:.2f}x "
                f"minilog-api's {api['lines_per_s']:,.0f} (target >= "
                f"{FILE_PATH_SPEEDUP:g}x): {_verdict(speedup >= FILE_PATH_SPEEDUP)}"
            )
    for name in _FILE_READERS:
        rec = by.get((name, "latency"))
        if rec is None or rec.get("first_line_from_write_s") is None:
            continue
        first = rec["first_line_from_write_s"]
        ok = first <= FILE_PATH_FIRST_LINE_S
        probes = len(rec.get("first_line_from_write_s_all") or ())
        out.append(
            f"{name}: a new container's first line acknowledged by Loki "
            f"{first:.3f} s after Docker's timestamp of it (median of {probes}; "
            f"from docker create: {rec.get('first_line_s')} s; target <= "
            f"{FILE_PATH_FIRST_LINE_S:g} s): {_verdict(ok)}"
        )
    return out


def targets(records: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets for minilog, each as one line: met, or by how much not."""
    out = []
    by = {(r["agent"], r["profile"]): r for r in records if not r.get("skipped")}
    mini = (
        by.get(("minilog", "drain"))
        or by.get(("minilog-file", "drain"))
        or by.get(("minilog-image", "drain"))
    )
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
    out += _file_path_targets(by)
    for rec in records:
        if rec.get("skipped") or rec["agent"] not in _MINILOG:
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
