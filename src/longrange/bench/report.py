"""Benchmark results as files and tables: the attention sweep (CSV, JSON, a Markdown table with ratios, a
log-log plot), the kNN search and the peer comparison tables, and the machine a run was measured on."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from pathlib import Path

import torch

BASELINE = "full"  # exact attention: the attention sweep measures every variant against it at the same length


def machine_meta(threads: int) -> dict:
    """What a result file records of the machine: threads, torch version, processor, cores."""
    return {
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }


def add_ratios(rows: list[dict], baseline: str = BASELINE, key: str = "variant") -> None:
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
    import matplotlib  # loaded only to draw: its backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): files only, no display

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


def knn_table(rows: list[dict], overhead: list[dict], meta: dict) -> str:
    """Markdown: kNN search time, speed-up and recall per key distribution, memory size and backend; then the
    training-step time per memory size (`longrange.bench.knn`)."""
    lines = [
        f"kNN search: {meta['queries']} queries, k = {meta['k']}, d = {meta['dim']}, {meta['threads']} thread(s) "
        f"for torch and faiss; index settings {meta['index_options']}.",
        "",
        "| keys | M | backend, store | search ms | speed-up vs exact fp32 | recall@k vs exact fp32 | build s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['distribution']} | {r['size']:,} | {r['backend']} {r.get('precision', 'fp32')} | "
            f"{r['search_s'] * 1e3:.1f} | {r['speedup_vs_exact']:.1f} | {r['recall']:.3f} | {r['build_s']:.1f} |"
        )
    if overhead:
        lines += ["", "| memory M | precision | train step s | vs no memory |", "|---:|---|---:|---:|"]
        lines += [
            f"| {r['memory_size']:,} | {r.get('precision', 'fp32')} | {r['step_s']:.3f} | {r['ratio']:.2f} |"
            for r in overhead
        ]
    return "\n".join(lines) + "\n"


def peers_table(rows: list[dict], meta: dict) -> str:
    """Markdown: training tokens/s of ours against each peer library, their ratio and MFU (`longrange.bench.peers`)."""

    def num(x, fmt="{:,.0f}"):
        return "-" if x is None else fmt.format(x)

    lay = meta["layout"]
    lines = [
        f"Training step (forward + backward + AdamW), batch 1, vocab {lay['vocab']}, d {lay['d_model']}, depth "
        f"{lay['depth']}, {lay['heads']} heads, segments {lay['segment']}, M {lay['knn_memory']:,}; commit "
        f"{meta['commit']}, torch {meta['torch']}, {meta['threads']} thread(s). MFU: our model FLOPs per token x "
        "tokens/s over the fp32 matmul ceiling measured in this run.",
        "",
        "| system | L | peer tokens/s | ours tokens/s | ratio | MFU ours | MFU peer | ceiling GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['length']:,} | {num(r['peer_tokens_per_s'])} | {num(r['ours_tokens_per_s'])} | "
            f"{num(r['ratio'], '{:.2f}x')} | {num(r['ours_mfu'], '{:.0%}')} | {num(r['peer_mfu'], '{:.0%}')} | "
            f"{r['ceiling_gflops']:.0f} |"
        )
    return "\n".join(lines) + "\n"
