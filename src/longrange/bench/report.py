"""Benchmark result files: CSV, JSON, a printed table with ratios, and a log-log plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


def add_ratios(rows: list[dict], baseline: str = "full", key: str = "variant") -> None:
    """Add time_ratio / memory_ratio against the baseline variant at the same length (same run)."""
    base = {r["length"]: r for r in rows if r[key] == baseline and r.get("status") == "ok"}
    for r in rows:
        b = base.get(r["length"])
        if r.get("status") == "ok" and b:
            r["time_ratio"] = r["time_s"] / b["time_s"]
            r["memory_ratio"] = r["peak_mib"] / max(b["peak_mib"], 1e-9)


def loglog_slope(rows: list[dict], variant: str, field: str = "time_s") -> float | None:
    """Least-squares slope of log(field) vs log(length): 1 = linear, 2 = quadratic."""
    pts = [
        (math.log(r["length"]), math.log(max(r[field], 1e-9)))
        for r in rows
        if r["variant"] == variant and r.get("status") == "ok"
    ]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def format_table(rows: list[dict]) -> str:
    lines = [
        "| variant | length | time (s) | peak (MiB) | time / full | memory / full | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:

        def f(k, spec, r=r):
            return format(r[k], spec) if k in r else "-"

        lines.append(
            f"| {r['variant']} | {r['length']} | {f('time_s', '.3f')} | {f('peak_mib', '.0f')} | "
            f"{f('time_ratio', '.2f')} | {f('memory_ratio', '.2f')} | {r.get('status', '')} |"
        )
    return "\n".join(lines)


def write_results(rows: list[dict], out_dir: Path, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r})
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    variants = sorted({r["variant"] for r in rows})
    slopes = {v: {"time": loglog_slope(rows, v), "memory": loglog_slope(rows, v, "peak_mib")} for v in variants}
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "slopes": slopes, "rows": rows}, indent=1))
    (out_dir / "results.md").write_text(format_table(rows) + "\n")
    plot(rows, out_dir / "results.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant in sorted({r["variant"] for r in rows}):
        pts = sorted(
            (r["length"], r["time_s"], r["peak_mib"])
            for r in rows
            if r["variant"] == variant and r.get("status") == "ok"
        )
        if not pts:
            continue
        lengths, times, mems = zip(*pts, strict=True)
        axes[0].plot(lengths, times, marker="o", label=variant)
        axes[1].plot(lengths, [max(m, 1e-3) for m in mems], marker="o", label=variant)
    for ax, label in zip(axes, ["forward+backward time (s)", "peak memory (MiB)"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
