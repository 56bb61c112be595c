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
from pathlib import Path

from longrange.bench import attention as attention_bench
from longrange.bench import report
from longrange.bench.knn import available_backends, search_points, step_overhead
from longrange.bench.peers import SYSTEMS, Layout, compare_with_peers
from longrange.bench.report import machine_meta
from longrange.bench.train_speed import best_point, make_trainer, profile_steps, sweep_batch_sizes
from longrange.bench.variants import VARIANTS
from longrange.config import ModelConfig
from longrange.runtime import PRECISION_CHOICES, add_runtime_options, resolve_device, resolve_precision


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
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    p.add_argument(
        "--full-max-length",
        type=int,
        default=16384,
        help="skip the full-attention baseline above this length (quadratic time)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISION_CHOICES,
        help="fp32 (default), bf16 or fp16 autocast around each forward (weights and input in fp32, as in a "
        "training step), or auto (bf16 where the device has fast bf16 matrix products)",
    )


def run_attention(args: argparse.Namespace) -> int:
    """Attention forward+backward time and peak memory vs sequence length (fresh process per point)."""

    def show(row: dict) -> None:
        print(
            f"{row['variant']:>12} L={row['length']:>6}: {row.get('time_s', float('nan')):8.3f} s "
            f"{row.get('peak_mib', float('nan')):8.0f} MiB  {row['status']}",
            flush=True,
        )
        with open(args.out / "rows.jsonl", "a") as f:  # each point as it is measured: a sweep cut short keeps them
            f.write(json.dumps(row) + "\n")

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.jsonl").unlink(missing_ok=True)
    rows = attention_bench.sweep(
        args.variants,
        args.lengths,
        d_model=args.d_model,
        heads=args.heads,
        batch=args.batch,
        causal=not args.bidirectional,
        repeats=args.repeats,
        device=str(device),
        threads=args.threads,
        timeout=args.timeout,
        baseline_max_length=args.full_max_length,
        on_row=show,
        precision=precision,
    )
    report.write_results(rows, args.out, {**machine_meta(args.threads), "precision": precision})
    print(report.format_table(rows))
    print(f"-> {args.out}/results.{{csv,json,md,png}}")
    return 0


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", type=_csv(str), default=["transformer-tiny", "transformer-xl-tiny"])
    p.add_argument("--steps", type=int, default=10, help="timed steps per point (after 2 warm-up steps)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per step (the first of a sweep)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="sweep: double the batch size from --batch-size up to this cap or until the device runs out of "
        "memory, and report each preset's fastest (default: --batch-size only)",
    )
    p.add_argument(
        "--sweep-seconds",
        type=float,
        default=0.0,
        help="stop a preset's sweep before a point that would end past this many seconds (0: no limit)",
    )
    p.add_argument("--fused-adamw", action="store_true", help="torch's fused AdamW (one kernel for every update)")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="OUT",
        help="also write torch.profiler's table of time by kernel (CUDA time on a GPU, CPU time on the CPU) of "
        "each preset's training step at its fastest batch size to OUT/PRESET.{txt,json}",
    )
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled (after one warm-up step)")
    add_runtime_options(p)


def run_train(args: argparse.Namespace) -> int:
    """Training tokens/s per preset on the built-in corpus (a batch-size sweep with --max-batch-size)."""
    cap = args.max_batch_size or args.batch_size
    if args.batch_size < 1 or cap < args.batch_size or args.steps < 1 or args.profile_steps < 1:
        raise ValueError("need --steps >= 1, --profile-steps >= 1 and 1 <= --batch-size <= --max-batch-size")
    runtime = {"device": str(resolve_device(args.device)), "precision": args.precision, "compile": args.compile}
    options = {"runtime": runtime, "fused_adamw": args.fused_adamw}

    def show(r: dict) -> None:
        if r["status"] != "ok":
            print(f"{r['preset']:>24} batch {r['batch_size']:>4}: {r['status']}", flush=True)
            return
        memory = "" if r["peak_mib"] is None else f", peak {r['peak_mib']:,.0f} MiB"
        print(
            f"{r['preset']:>24} batch {r['batch_size']:>4} {r['precision']}: {r['tokens_per_s']:10.0f} tokens/s  "
            f"MFU {r['mfu']:.0%} (ceiling {r['ceiling_gflops']:.0f} GFLOP/s {r['ceiling_dtype']}{memory})",
            flush=True,
        )

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**machine_meta(args.threads), "steps": args.steps, "batch_sizes": [args.batch_size, cap], **options}
    rows, points = [], []
    for preset in args.presets:
        sweep = sweep_batch_sizes(
            preset, args.steps, args.batch_size, cap, args.threads, seconds=args.sweep_seconds, on_point=show, **options
        )
        points += sweep
        best = best_point(sweep)
        if best is None:
            print(f"{preset:>24}: no batch size of {args.batch_size} or more fits on {runtime['device']}")
            continue
        best["ratio"] = best["tokens_per_s"] / (rows[0] if rows else best)["tokens_per_s"]
        rows.append(best)
        if args.profile is not None:
            trainer = make_trainer(preset, best["batch_size"], args.profile_steps + 1, **options)
            print(f"-> {profile_steps(trainer, args.profile_steps, args.profile, preset)}")
            del trainer
        # written after every preset, so that a run stopped by a time limit keeps what it measured
        (args.out / "train.json").write_text(json.dumps({"meta": meta, "rows": rows, "points": points}, indent=1))
    for r in rows:
        memory = "" if r["peak_mib"] is None else f", peak {r['peak_mib']:,.0f} MiB"
        print(
            f"{r['preset']:>24} {r['precision']}: {r['tokens_per_s']:10.0f} tokens/s  x{r['ratio']:.2f}  "
            f"MFU {r['mfu']:.0%} at batch {r['batch_size']} "
            f"({r['model_flops_per_token'] / 1e6:.1f} MFLOP/token, ceiling {r['ceiling_gflops']:.0f} GFLOP/s "
            f"{r['ceiling_dtype']}{memory}; {r['params']:,} params, threads={r['threads']})"
        )
    (args.out / "train.json").write_text(json.dumps({"meta": meta, "rows": rows, "points": points}, indent=1))
    return 0 if rows else 1


def add_knn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=_csv(int), default=[16384, 65536, 262144, 1048576])
    p.add_argument("--backends", type=_csv(str), default=["exact", "faiss-flat", "faiss-hnsw", "faiss-ivf"])
    p.add_argument("--distributions", type=_csv(str), default=["clustered", "random"], help="key distributions")
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--ivf-lists", type=int, default=None, help="default: 4 sqrt(M)")
    p.add_argument("--ivf-probe", type=int, default=None, help="default: see KNNMemory")
    p.add_argument("--hnsw-random-max", type=int, default=262144, help="skip HNSW on random keys above this size")
    p.add_argument("--step-sizes", type=_csv(int), default=[8192, 65536], help="memory sizes for the step overhead")
    p.add_argument("--step-preset", default="memorizing-small")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per memory size (0: skip)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the exact search's store and the step overhead's models live: cpu (default), cuda, cuda:N or "
        "auto (faiss indexes stay on the CPU)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_CHOICES,
        help="bf16: the exact search also over a bf16 store (keys rounded to bf16, as a bf16 run stores them), "
        "timed and checked against the float32 one, and the step overhead under bf16 autocast; auto (default): "
        "bf16 where the CPU has fast bf16 matrix products (the step overhead: as a run of --step-preset decides)",
    )


def run_knn(args: argparse.Namespace) -> int:
    """kNN search time/recall vs memory size per backend, and the training-step overhead of a kNN layer."""
    args.backends = available_backends(args.backends, args.threads)
    options = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    options.update({"ivf_lists": args.ivf_lists, "ivf_probe": args.ivf_probe})
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)  # the search alone: the device decides
    rows = []
    points = search_points(
        args.sizes,
        args.backends,
        args.distributions,
        args.dim,
        args.queries,
        args.k,
        3,
        options,
        args.hnsw_random_max,
        precision,
        device,
    )
    for r in points:
        rows.append(r)
        print(
            f"{r['distribution']:>9} {r['backend']:>10} {r['precision']} M={r['size']:>8}: "
            f"search {r['search_s'] * 1e3:8.1f} ms "
            f"(x{r['speedup_vs_exact']:5.1f} vs exact), recall {r['recall']:.3f}, build {r['build_s']:6.1f} s",
            flush=True,
        )
    step_precision = resolve_precision(args.precision, device, ModelConfig.from_name(args.step_preset))
    overhead = (
        step_overhead(
            args.step_sizes, steps=args.steps, preset=args.step_preset, precision=step_precision, device=device
        )
        if args.steps
        else []
    )
    for r in overhead:
        print(
            f"train step {r['precision']}, memory {r['memory_size']:>6}: {r['step_s']:.3f} s  "
            f"x{r['ratio']:.2f} vs no memory"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**machine_meta(args.threads), "index_options": options, "queries": args.queries, "k": args.k}
    meta.update(dim=args.dim, precision=precision, step_precision=step_precision, device=str(device))
    (args.out / "knn.json").write_text(json.dumps({"meta": meta, "search": rows, "step": overhead}, indent=1))
    (args.out / "knn.md").write_text(report.knn_table(rows, overhead, meta))
    print(f"-> {args.out}/knn.{{json,md}}")
    return 0


def add_reversible_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600)


def run_reversible(args: argparse.Namespace) -> int:
    """Peak memory of reversible vs plain Reformer stacks at depth 2, 4, 8 (fresh process per point)."""
    rows, growth = attention_bench.reversible_growth(
        args.length, args.d_model, args.heads, args.threads, args.timeout, on_row=lambda row: print(row, flush=True)
    )
    if "ratio" in growth:
        print(
            f"peak-memory growth depth 2 -> 8: reversible {growth['reversible']:.0f} MiB, plain "
            f"{growth['plain']:.0f} MiB, ratio {growth['ratio']:.2f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reversible.json").write_text(
        json.dumps({"meta": machine_meta(args.threads), "rows": rows, "growth": growth}, indent=1)
    )
    return 0


def add_peers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--systems", type=_csv(str), default=list(SYSTEMS), help=f"any of {list(SYSTEMS)}")
    p.add_argument("--lengths", type=_csv(int), default=[1024, 4096], help="target tokens per training step")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--segment", type=int, default=512, help="segment length of the systems with memories")
    p.add_argument("--knn-memory", type=int, default=64000, help="M, kNN memories per row")
    p.add_argument("--bucket", type=int, default=64, help="LSH bucket size")
    p.add_argument("--steps", type=int, default=3, help="timed steps per point (the fastest is kept)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="rounds of interleaved points; the best round is kept")
    p.add_argument("--ours-only", action="store_true", help="run our side alone (peers not installed)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per point")


def run_peers(args: argparse.Namespace) -> int:
    """Training tokens/s of each system against its peer library, same layout, interleaved fresh processes."""

    def show(point: dict, row: dict) -> None:
        label = " full memory" if point["full_memory"] else " carried" if point["carry"] else ""
        print(
            f"{point['system']:>12} L={point['length']:>5} {point['side']:>4}{label}: "
            f"{row.get('tokens_per_s', float('nan')):8.0f} tokens/s  {row['status']}",
            flush=True,
        )

    layout = Layout(args.vocab, args.d_model, args.depth, args.heads, args.segment, args.knn_memory, bucket=args.bucket)
    rows, points, meta = compare_with_peers(
        args.systems,
        args.lengths,
        layout,
        threads=args.threads,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        ours_only=args.ours_only,
        timeout=args.timeout,
        on_point=show,
    )
    table = report.peers_table(rows, meta)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps({"meta": meta, "rows": rows, "points": points}, indent=1))
    (args.out / "peers.md").write_text(table)
    print(f"-> {args.out}/peers.{{json,md}}")
    return 0


# name -> (add_arguments, run); mechanisms add their benchmarks here
BENCHES = {
    "attention": (add_attention_args, run_attention),
    "train": (add_train_args, run_train),
    "knn": (add_knn_args, run_knn),
    "reversible": (add_reversible_args, run_reversible),
    "peers": (add_peers_args, run_peers),
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
