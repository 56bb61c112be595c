"""Long context: the systems compared where context can help (models that have learned the local statistics).

All papers' claims about memory are about models near 1-1.5 bits per byte, where the next byte depends on
more than the last few hundred. This runs `longrange compare` at a budget that reaches that regime on a
CPU in about an hour (small presets, 1,000 updates of 16 rows x 256 bytes = 4.1M bytes per run, the
learning rate 2e-3 decayed to 2e-4, bf16), with 2 seeds, and scores every run on the whole held-out
documents of the corpus with its memories carried. The table gives bits per byte overall and by position
in the document, in buckets that start past each system's reach (the first segment, where every system sees
the same context, is a bucket of its own), the seeds' spread, and the difference from the Transformer of the
same seed (same initial data order), which is less noisy than the spread of either system.

Equal parameters (within 10%): the compressive model compresses with mean pooling (parameter-free; the
paper's best conv compression adds d x d x rate weights per layer, +40% at this size); every other system is
its preset. Reformer and Luna read a whole row in one pass and are left out by default (the row is one
segment here, so they see no more context than the Transformer); add them with ``--systems``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longrange.compare import CompareConfig, compare

DEFAULT_SYSTEMS = "transformer,transformer-xl,compressive,memorizing"
# the compressive preset's conv compression adds d x d x rate weights per layer (+40% at small): pool instead
OVERRIDES = {"compressive": {"compressive.compression": "mean"}}
# position buckets (tokens into the document): the first segment, then past the Transformer's reach
BUCKETS = ((0, 256), (256, 1024), (1024, 4096), (4096, 32768), (32768, 1 << 40))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--systems", default=DEFAULT_SYSTEMS)
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=1000, help="updates per run")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--row-tokens", type=int, default=256)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--data", default=None, help="corpus spec (default: the built-in stdlib code corpus)")
    p.add_argument("--eval-docs", type=int, default=10, help="held-out documents, scored whole")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")


def bucketed(by_position: list[dict], buckets=BUCKETS) -> list[dict]:
    """Token-weighted bits per byte over coarse position buckets from `evaluate`'s log2 buckets.

    Each log2 bucket [2^i, 2^(i+1)) lies inside one coarse bucket when the coarse edges are powers of 2.
    """
    out = []
    for lo, hi in buckets:
        inside = [b for b in by_position if b["start"] >= lo and b["end"] <= hi]
        tokens = sum(b["tokens"] for b in inside)
        bpb = sum(b["bpb"] * b["tokens"] for b in inside) / tokens if tokens else None
        out.append({"start": lo, "end": hi, "tokens": tokens, "bpb": bpb})
    return out


def _label(lo: int, hi: int) -> str:
    def k(n: int) -> str:
        return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)

    return f"{k(lo)}+" if hi >= 1 << 40 else f"{k(lo)}-{k(hi)}"


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]" if len(values) > 1 else f"{mean:.3f}"


def table(out: Path) -> tuple[str, dict]:
    """The Markdown table (and its data) from a finished comparison in `out`."""
    systems = [s for s in json.loads((out / "compare.json").read_text())["systems"] if (out / "runs" / s).is_dir()]
    runs = {}
    for system in systems:
        seeds = sorted((out / "runs" / system).glob("seed-*/result.json"))
        runs[system] = [json.loads(p.read_text()) for p in seeds]
    base = runs.get("transformer", [])
    lines = [
        "| system | params | reach (tokens) | tokens/s | held-out bpb, mean [min, max] | per seed | "
        "minus transformer, per seed |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    data = {}
    for system, rs in runs.items():
        if not rs:
            continue
        bpbs = [r["bpb"] for r in rs]
        paired = [r["bpb"] - b["bpb"] for r, b in zip(rs, base, strict=False) if r["seed"] == b["seed"]]
        buckets = [bucketed(r["by_position"]) for r in rs]
        data[system] = {"bpb": bpbs, "paired": paired, "buckets": buckets, "ablations": rs[0].get("ablations", [])}
        lines.append(
            f"| {system} | {rs[0]['parameters'] / 1e6:.2f}M | {rs[0]['reach']:,} | "
            f"{sum(r['tokens_per_s'] for r in rs) / len(rs):,.0f} | {_spread(bpbs)} | "
            f"{' / '.join(f'{b:.3f}' for b in bpbs)} | "
            f"{' / '.join(f'{d:+.3f}' for d in paired) if system != 'transformer' else '-'} |"
        )
    lines += ["", "By position in the document (bits per byte, mean [min, max] over seeds; tokens per bucket):", ""]
    header = [_label(lo, hi) for lo, hi in BUCKETS]
    lines.append("| system | " + " | ".join(header) + " |")
    lines.append("| --- |" + " ---: |" * len(header))
    first = next(iter(data.values()), None)
    if first:
        lines.append("| tokens | " + " | ".join(f"{b['tokens']:,}" for b in first["buckets"][0]) + " |")
    for system, d in data.items():
        cells = []
        for i in range(len(BUCKETS)):
            vals = [b[i]["bpb"] for b in d["buckets"] if b[i]["bpb"] is not None]
            cells.append(_spread(vals) if vals else "-")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    if "transformer" in data:
        lines += ["", "Minus the Transformer of the same seed, by position (bits per byte, per seed):", ""]
        lines.append("| system | " + " | ".join(header) + " |")
        lines.append("| --- |" + " ---: |" * len(header))
        for system, d in data.items():
            if system == "transformer":
                continue
            cells = []
            for i in range(len(BUCKETS)):
                diffs = [
                    b[i]["bpb"] - t[i]["bpb"]
                    for b, t in zip(d["buckets"], data["transformer"]["buckets"], strict=False)
                    if b[i]["bpb"] is not None and t[i]["bpb"] is not None
                ]
                cells.append(" / ".join(f"{x:+.3f}" for x in diffs) or "-")
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
    ablations = [(s, d["ablations"]) for s, d in data.items() if d["ablations"]]
    if ablations:
        lines += ["", "The seed-0 checkpoint evaluated with its memory off, halved, as trained and doubled:", ""]
        lines += ["| system | key | off | half | trained | double |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for system, rows in ablations:
            by = {r["variant"]: r["bpb"] for r in rows}
            cells = [f"{by[v]:.3f}" if by.get(v) is not None else "-" for v in ("off", "half", "trained", "double")]
            lines.append(f"| {system} | `{rows[0]['key']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines), data


def run(args: argparse.Namespace) -> str:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    cc = CompareConfig(
        systems=systems,
        size=args.size,
        steps=args.steps,
        rows=args.rows,
        row_tokens=args.row_tokens,
        seeds=args.seeds,
        whole_row=[],  # every system reads the row in its own segments: reach comes from memory alone
        data=args.data,
        eval_docs=args.eval_docs,
        eval_bytes=0,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_steps=args.warmup_steps,
        device=args.device,
        precision=args.precision,
        overrides={s: o for s, o in OVERRIDES.items() if s in systems},
        command="longrange repro long-context",
    )
    out = compare(cc, args.out)
    text, data = table(out)
    (args.out / "long-context.json").write_text(json.dumps(data, indent=1))
    return text
