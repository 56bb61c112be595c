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
from longrange.train.runtime import add_runtime_options, resolve_device


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


def run_attention(args: argparse.Namespace) -> int:
    """Attention forward+backward time and peak memory vs sequence length (fresh process per point)."""
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; choose from {sorted(VARIANTS)}")
    variants = args.variants if "full" in args.variants else ["full", *args.variants]
    args.device = str(resolve_device(args.device))
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
    add_runtime_options(p)


def run_train(args: argparse.Namespace) -> int:
    """Training tokens/s per preset on the built-in corpus."""
    from longrange.bench.train_speed import train_tokens_per_s

    runtime = {"device": str(resolve_device(args.device)), "precision": args.precision, "compile": args.compile}
    rows = [train_tokens_per_s(p, args.steps, args.batch_size, args.threads, runtime=runtime) for p in args.presets]
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
        print(
            f"{r['preset']:>24}: {r['tokens_per_s']:10.0f} tokens/s  x{r['ratio']:.2f}  MFU {r['mfu']:.0%} "
            f"({r['model_flops_per_token'] / 1e6:.1f} MFLOP/token, ceiling {r['ceiling_gflops']:.0f} GFLOP/s; "
            f"{r['params']:,} params, threads={r['threads']})"
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


def run_knn(args: argparse.Namespace) -> int:
    """kNN search time/recall vs memory size per backend, and the training-step overhead of a kNN layer."""
    from longrange.bench.knn import search_points, step_overhead

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)  # same thread count for torch and faiss
    except ImportError:
        args.backends = [b for b in args.backends if not b.startswith("faiss")]
    options = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    options.update({"ivf_lists": args.ivf_lists, "ivf_probe": args.ivf_probe})
    rows = []
    points = search_points(
        args.sizes, args.backends, args.distributions, args.dim, args.queries, args.k, 3, options, args.hnsw_random_max
    )
    for r in points:
        rows.append(r)
        print(
            f"{r['distribution']:>9} {r['backend']:>10} M={r['size']:>8}: search {r['search_s'] * 1e3:8.1f} ms "
            f"(x{r['speedup_vs_exact']:5.1f} vs exact), recall {r['recall']:.3f}, build {r['build_s']:6.1f} s",
            flush=True,
        )
    overhead = step_overhead(args.step_sizes, steps=args.steps, preset=args.step_preset) if args.steps else []
    for r in overhead:
        print(f"train step, memory {r['memory_size']:>6}: {r['step_s']:.3f} s  x{r['ratio']:.2f} vs no memory")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**_meta(args), "index_options": options, "queries": args.queries, "k": args.k, "dim": args.dim}
    (args.out / "knn.json").write_text(json.dumps({"meta": meta, "search": rows, "step": overhead}, indent=1))
    (args.out / "knn.md").write_text(_knn_table(rows, overhead, meta))
    print(f"-> {args.out}/knn.{{json,md}}")
    return 0


def _knn_table(rows: list[dict], overhead: list[dict], meta: dict) -> str:
    lines = [
        f"kNN search: {meta['queries']} queries, k = {meta['k']}, d = {meta['dim']}, {meta['threads']} thread(s) "
        f"for torch and faiss; index settings {meta['index_options']}.",
        "",
        "| keys | M | backend | search ms | speed-up vs exact | recall@k | build s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['distribution']} | {r['size']:,} | {r['backend']} | {r['search_s'] * 1e3:.1f} | "
            f"{r['speedup_vs_exact']:.1f} | {r['recall']:.3f} | {r['build_s']:.1f} |"
        )
    if overhead:
        lines += ["", "| memory M | train step s | vs no memory |", "|---:|---:|---:|"]
        lines += [f"| {r['memory_size']:,} | {r['step_s']:.3f} | {r['ratio']:.2f} |" for r in overhead]
    return "\n".join(lines) + "\n"


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


def add_peers_args(p: argparse.ArgumentParser) -> None:
    from longrange.bench.peers import SYSTEMS

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
    import subprocess

    from longrange.bench.mfu import matmul_ceiling, mfu, model_flops_per_token
    from longrange.bench.peers import SYSTEMS, Layout, measure_in_subprocess, our_config, peer_available

    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"--systems: unknown system {unknown[0]!r}; choose from {list(SYSTEMS)}")
    layout = Layout(args.vocab, args.d_model, args.depth, args.heads, args.segment, args.knn_memory, bucket=args.bucket)
    points = []
    for repeat in range(args.repeats):
        for system in args.systems:
            with_peer = not args.ours_only and peer_available(system)
            for length in args.lengths:
                runs = [("ours", False)] + ([("peer", False)] if with_peer else [])
                if system == "memorizing":  # memory carried across steps, as our trainer runs: as it grows
                    runs += [("ours", True), ("ours", "full")]  # over the timed steps, and full (M entries)
                for side, carry in runs if repeat % 2 == 0 else runs[::-1]:
                    point = {"system": system, "length": length, "side": side, "carry": bool(carry)}
                    points.append({**point, "full_memory": carry == "full"})
    meta = _meta(args)
    meta["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    meta["commit"] = meta["commit"].strip() or "unknown"
    meta["layout"] = vars(layout)
    ceilings: dict[int, float] = {}
    best: dict[tuple, dict] = {}
    for point in points:
        full = {**point, "threads": args.threads, "steps": args.steps, "warmup": args.warmup, "layout": vars(layout)}
        row = measure_in_subprocess(full, args.timeout)
        memory = "full" if point["full_memory"] else point["carry"]
        key = (point["system"], point["length"], point["side"], memory)
        label = {True: " carried", "full": " full memory"}.get(memory, "")
        print(
            f"{point['system']:>12} L={point['length']:>5} {point['side']:>4}{label}: "
            f"{row.get('tokens_per_s', float('nan')):8.0f} tokens/s  {row['status']}",
            flush=True,
        )
        if row["status"] == "ok" and row["tokens_per_s"] > best.get(key, {}).get("tokens_per_s", 0):
            best[key] = row
        elif key not in best:
            best[key] = row
    rows = []
    for system in args.systems:
        for length in args.lengths:
            cfg = our_config(system, layout, length)
            if cfg.segment_len not in ceilings:
                ceilings[cfg.segment_len] = matmul_ceiling(cfg, cfg.segment_len, args.threads)["gflops"]
            flops, ceiling = model_flops_per_token(cfg), ceilings[cfg.segment_len]
            peer = best.get((system, length, "peer", False), {})
            for memory in (False, True, "full") if system == "memorizing" else (False,):
                ours = best.get((system, length, "ours", memory), {})
                ours_tps, peer_tps = ours.get("tokens_per_s"), peer.get("tokens_per_s")
                rows.append(
                    {
                        "system": system + {True: " (memory carried)", "full": " (memory full)"}.get(memory, ""),
                        "length": length,
                        "peer_tokens_per_s": peer_tps,
                        "ours_tokens_per_s": ours_tps,
                        "ratio": ours_tps / peer_tps if ours_tps and peer_tps else None,
                        "model_flops_per_token": flops,
                        "ceiling_gflops": ceiling,
                        "ours_mfu": mfu(flops, ours_tps, ceiling) if ours_tps else None,
                        "peer_mfu": mfu(flops, peer_tps, ceiling) if peer_tps else None,
                        "status": f"ours {ours.get('status', 'not run')}, peer {peer.get('status', 'not run')}",
                    }
                )
    table = _peers_table(rows, meta)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "points": list(best.values())}, indent=1)
    )
    (args.out / "peers.md").write_text(table)
    print(f"-> {args.out}/peers.{{json,md}}")
    return 0


def _peers_table(rows: list[dict], meta: dict) -> str:
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
