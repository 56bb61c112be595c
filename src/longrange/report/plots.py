"""PNG plots of compare runs: training curves and loss by position in the document (one plot each)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _pyplot():
    import matplotlib  # loaded only to draw: its backend is chosen before pyplot loads

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def training_curves(run_dirs: dict[str, Path], path: Path) -> Path:
    """Training loss (in bits per byte) against training tokens, one line per system."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system, run_dir in run_dirs.items():
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
        records = [r for r in records if "loss" in r and "tokens" in r]
        seen, xs, ys = 0, [], []
        last_step = 0
        for r in records:  # `tokens` is per update; records are every `log_every` updates
            seen += r["tokens"] * (r["step"] - last_step)
            last_step = r["step"]
            xs.append(seen)
            ys.append(r["loss"] / math.log(2))
        ax.plot(xs, ys, label=system, marker="." if len(xs) < 30 else None)
    ax.set_xlabel("training tokens (bytes)")
    ax.set_ylabel("training loss (bits per byte)")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_by_position(results: dict[str, dict], path: Path) -> Path:
    """Held-out bits per byte by position of the target in its document (log2 buckets), all systems."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system, result in results.items():
        buckets = result.get("by_position") or []
        ax.plot([b["start"] for b in buckets], [b["bpb"] for b in buckets], marker="o", label=system)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in document (bytes, bucket start)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("Loss by position in the document")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
