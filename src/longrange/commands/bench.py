"""Benchmarks: attention speed/memory vs length, training throughput; results to files.

Examples:
  longrange bench attention --variants full,xl --lengths 1024,2048,4096 --out benchmarks/results/attention
  longrange bench train --presets transformer-tiny,transformer-xl-tiny --threads 1
Every figure is reported with a ratio against a baseline measured in the same run (full attention,
or the first preset), since these machines are shared and absolute times drift.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from longrange.bench import attention as attention_bench
from longrange.bench import report
from longrange.bench.variants import VARIANTS


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def add_attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", "--kinds", type=_csv(str), default=["full", "xl"], help=f"any of {sorted(VARIANTS)}")
    p.add_argument("--lengths", type=_csv(int), default=[1024, 2048, 4096])
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true", help="non-causal attention (encoders)")
    p.add_argument("--causal", dest="bidirectional", action="store_false", help="causal attention (the default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300, help="seconds per point before it is recorded as a timeout")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--full-max-length",
        type=int,
        default=16384,
        help="skip the full-attention baseline above this length (quadratic time)",
    )


def run_attention(args: argparse.Namespace) -> int:
    """Attention forward+backward time and peak memory vs sequence length (fresh process per point)."""
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; choose from {sorted(VARIANTS)}")
    variants = args.variants if "full" in args.variants else ["full", *args.variants]
    rows = []
    for length in args.lengths:
        for variant in variants:
            if variant == "full" and length > args.full_max_length:
                continue
            point = {
                "variant": variant,
                "length": length,
                "d_model": args.d_model,
                "heads": args.heads,
                "batch": args.batch,
                "causal": not args.bidirectional,
                "repeats": args.repeats,
                "device": args.device,
            }
            row = attention_bench.measure_in_subprocess(point, args.threads, args.timeout)
            rows.append(row)
            print(
                f"{variant:>12} L={length:>6}: {row.get('time_s', float('nan')):8.3f} s "
                f"{row.get('peak_mib', float('nan')):8.0f} MiB  {row['status']}",
                flush=True,
            )
    report.add_ratios(rows)
    report.write_results(rows, args.out, _meta(args))
    print(report.format_table(rows))
    print(f"-> {args.out}/results.{{csv,json,md,png}}")
    return 0


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", type=_csv(str), default=["transformer-tiny", "transformer-xl-tiny"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)


def run_train(args: argparse.Namespace) -> int:
    """Training tokens/s per preset on the built-in corpus."""
    from longrange.bench.train_speed import train_tokens_per_s

    rows = [train_tokens_per_s(p, args.steps, args.batch_size, args.threads) for p in args.presets]
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
        print(
            f"{r['preset']:>24}: {r['tokens_per_s']:10.0f} tokens/s  x{r['ratio']:.2f}  ({r['params']:,} params,"
            f" threads={r['threads']})"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps({"meta": _meta(args), "rows": rows}, indent=1))
    return 0


def _meta(args: argparse.Namespace) -> dict:
    return {
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": __import__("os").cpu_count(),
    }


def add_knn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=_csv(int), default=[16384, 65536, 262144, 1048576])
    p.add_argument("--backends", type=_csv(str), default=["exact", "faiss-flat", "faiss-hnsw", "faiss-ivf"])
    p.add_argument("--step-sizes", type=_csv(int), default=[8192, 65536], help="memory sizes for the step overhead")
    p.add_argument("--steps", type=int, default=5)


def run_knn(args: argparse.Namespace) -> int:
    """kNN search time/recall vs memory size per backend, and the training-step overhead of a kNN layer."""
    from longrange.bench.knn import search_point, step_overhead

    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        for backend in args.backends:
            rows.append(search_point(backend, size))
            exact = next(r for r in rows if r["size"] == size and r["backend"] == "exact")
            rows[-1]["time_vs_exact"] = rows[-1]["search_s"] / exact["search_s"]
            r = rows[-1]
            print(
                f"{backend:>11} M={size:>8}: search {r['search_s'] * 1e3:8.1f} ms (x{r['time_vs_exact']:.2f} of "
                f"exact), recall {r['recall']:.3f}, first search {r['first_search_s']:.2f} s",
                flush=True,
            )
    overhead = step_overhead(args.step_sizes, steps=args.steps)
    for r in overhead:
        print(f"train step, memory {r['memory_size']:>6}: {r['step_s']:.3f} s  x{r['ratio']:.2f} vs no memory")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "knn.json").write_text(json.dumps({"meta": _meta(args), "search": rows, "step": overhead}, indent=1))
    return 0


def add_reversible_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600)


def run_reversible(args: argparse.Namespace) -> int:
    """Peak memory of reversible vs plain Reformer stacks at depth 2, 4, 8 (fresh process per point)."""
    rows = []
    for kind in ("reversible", "plain"):
        for depth in (2, 4, 8):
            point = {
                "variant": f"{kind}-depth{depth}",
                "length": args.length,
                "d_model": args.d_model,
                "heads": args.heads,
                "batch": 1,
                "causal": True,
                "repeats": 1,
                "device": "cpu",
            }
            rows.append(attention_bench.measure_in_subprocess(point, args.threads, args.timeout))
            print(rows[-1], flush=True)
    growth = {}
    for kind in ("reversible", "plain"):
        peaks = {r["variant"]: r.get("peak_mib") for r in rows if r["variant"].startswith(kind)}
        if peaks.get(f"{kind}-depth2") is not None and peaks.get(f"{kind}-depth8") is not None:
            growth[kind] = peaks[f"{kind}-depth8"] - peaks[f"{kind}-depth2"]
    if len(growth) == 2:
        growth["ratio"] = growth["reversible"] / max(growth["plain"], 1e-9)
        print(
            f"peak-memory growth depth 2 -> 8: reversible {growth['reversible']:.0f} MiB, plain "
            f"{growth['plain']:.0f} MiB, ratio {growth['ratio']:.2f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reversible.json").write_text(
        json.dumps({"meta": _meta(args), "rows": rows, "growth": growth}, indent=1)
    )
    return 0


# name -> (add_arguments, run); mechanisms add their benchmarks here
BENCHES = {
    "attention": (add_attention_args, run_attention),
    "train": (add_train_args, run_train),
    "knn": (add_knn_args, run_knn),
    "reversible": (add_reversible_args, run_reversible),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, (add, run_fn) in BENCHES.items():
        p = sub.add_parser(name, help=(run_fn.__doc__ or name).strip().splitlines()[0])
        p.add_argument("--threads", type=int, default=2, help="torch threads (benchmarks run alone: 2 on this CPU)")
        p.add_argument("--out", type=Path, default=Path("benchmarks/results") / name)
        add(p)
        p.set_defaults(_bench=run_fn)


def run(args: argparse.Namespace) -> int:
    return args._bench(args)
