"""PNG plots of the results (matplotlib, the ``minilog[bench]`` extra).

- ``throughput-<profile>.png``: lines Loki acknowledged per second over time, one line
  per agent, fault windows shaded (steady: the rate steps).
- ``rss-<profile>.png``: agent RSS over time, fault windows shaded, idle RSS and (for
  minilog) queue bound + idle RSS as dashed lines.
- ``compare.png``: bars per agent: drain CPU per million lines, peak RSS, p99 latency,
  and lines lost and sent twice in the fault profiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_all"]

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _shade(ax: Any, rec: dict[str, Any]) -> None:
    series = rec.get("series") or {}
    labelled = set()
    for start, end, label in series.get("windows", []):
        ax.axvspan(
            start,
            end,
            color="tab:red",
            alpha=0.12,
            label=None if label in labelled else f"fault: {label}",
        )
        labelled.add(label)
    for i, (start, end, rate) in enumerate(series.get("steps", [])):
        ax.axvspan(start, end, color="grey", alpha=0.06 + 0.06 * (i % 2))
        ax.text(
            start,
            1.0,
            f"{rate:,}/s",
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            va="top",
        )


def _value(
    records: Sequence[dict[str, Any]], agent: str, profile: str, key: str
) -> float:
    for rec in records:
        if rec["agent"] == agent and rec["profile"] == profile:
            return float(rec.get(key) or 0)
    return 0.0


def plot_all(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Write the plots into ``out``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    done = [r for r in records if not r.get("skipped") and r.get("series")]
    agents = sorted({r["agent"] for r in records})
    color = {a: _COLORS[i % len(_COLORS)] for i, a in enumerate(agents)}
    for profile in sorted({r["profile"] for r in done}):
        recs = [r for r in done if r["profile"] == profile]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        for rec in recs:
            points = rec["series"].get("throughput") or []
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=rec["agent"], color=color[rec["agent"]], lw=1.2)
        _shade(ax, recs[0])
        ax.set_title(f"{profile}: lines acknowledged by Loki per second")
        ax.set_xlabel("time since the run started (s)")
        ax.set_ylabel("lines/s")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        path = out / f"throughput-{profile}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(10, 4.5))
        for rec in recs:
            s = rec["series"]
            pts = [
                (t, v)
                for t, v in zip(s["t_s"], s["rss_mb"], strict=True)
                if v is not None
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(
                    xs,
                    ys,
                    label=f"{rec['agent']} RSS",
                    color=color[rec["agent"]],
                    lw=1.2,
                )
            if rec.get("rss_bound_mb"):
                ax.axhline(
                    rec["rss_bound_mb"],
                    color=color[rec["agent"]],
                    ls="--",
                    lw=0.9,
                    label=f"{rec['agent']} queue bound + idle RSS",
                )
            elif rec.get("agent_idle_rss_mb"):
                ax.axhline(
                    rec["agent_idle_rss_mb"],
                    color=color[rec["agent"]],
                    ls=":",
                    lw=0.9,
                    label=f"{rec['agent']} idle RSS",
                )
        _shade(ax, recs[0])
        kills = [
            (t, rec["agent"])
            for rec in recs
            for t, what in rec["series"].get("events", [])
            if "killed" in what
        ]
        for t, agent in kills:
            ax.axvline(t, color=color[agent], lw=0.9, ls="-.", label=f"{agent} kill -9")
        ax.set_title(f"{profile}: agent resident memory")
        ax.set_xlabel("time since the run started (s)")
        ax.set_ylabel("RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        path = out / f"rss-{profile}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    panels = [
        ("drain", "agent_cpu_s_per_million", "drain: agent CPU per 1M lines (s)"),
        ("drain", "agent_peak_rss_mb", "drain: peak RSS (MB)"),
        ("latency", "latency_p99_s", "latency: p99, write to acknowledged (s)"),
    ]
    fault_profiles = [
        p
        for p in ("outage", "kill", "throttle", "slow")
        if any(r["profile"] == p for r in done)
    ]
    present = [p for p in panels if any(r["profile"] == p[0] for r in done)]
    n = len(present) + (2 if fault_profiles else 0)
    if n:
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4))
        axes_list = list(axes) if n > 1 else [axes]
        names = [a for a in agents if any(r["agent"] == a for r in done)]
        for ax, (profile, key, title) in zip(axes_list, present, strict=False):
            values = [_value(done, a, profile, key) for a in names]
            ax.bar(names, values, color=[color[a] for a in names])
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            for i, v in enumerate(values):
                ax.text(
                    i,
                    v,
                    f"{v:,.2f}" if v < 100 else f"{v:,.0f}",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        if fault_profiles:
            for ax, key, title in zip(
                axes_list[len(present) :],
                ("lines_lost", "lines_duplicated"),
                ("faults: lines lost", "faults: lines sent twice"),
                strict=False,
            ):
                width = 0.8 / max(1, len(names))
                for j, a in enumerate(names):
                    vals = [_value(done, a, p, key) for p in fault_profiles]
                    slots = [i + j * width for i in range(len(fault_profiles))]
                    ax.bar(slots, vals, width=width, label=a, color=color[a])
                    for x, v in zip(slots, vals, strict=True):
                        ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
                ax.set_ylim(bottom=0, top=None if ax.get_ylim()[1] > 1 else 1)
                ax.set_xticks(
                    [
                        i + width * (len(names) - 1) / 2
                        for i in range(len(fault_profiles))
                    ]
                )
                ax.set_xticklabels(fault_profiles)
                ax.set_title(title, fontsize=9)
                ax.set_ylabel("lines")
                ax.grid(axis="y", alpha=0.3)
                ax.legend(fontsize=8)
        fig.suptitle("minilog bench: agents compared (lower is better)")
        fig.tight_layout()
        path = out / "compare.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
