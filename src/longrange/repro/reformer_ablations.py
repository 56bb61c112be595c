"""Reformer ablations (Kitaev et al. 2020, figures 3 and 5): shared QK, reversible layers, hash rounds.

Every model is a small causal byte LM trained with the project's trainer on the built-in code corpus, with
the same data, steps, batch, learning-rate schedule and sizes; held-out bits per byte are measured on the
same held-out documents. Three comparisons, each beside the paper's claim:

(a) full attention with separate Q and K vs the Reformer's shared QK (`full.shared_qk`: keys are the unit-norm
    queries, a token attends to itself only when nothing else is visible). Paper: sharing does not hurt.
(b) plain residual layers vs reversible ones (`reversible`), both full attention with separate Q and K.
    Paper: the reversible Transformer matches the regular one.
(c) LSH attention with 1, 2, 4 and 8 hash rounds (every layer LSH, each model evaluated with the rounds it
    was trained with) vs full shared-QK attention. Paper: more rounds approach full attention.

The differences in (a) and (b) are small, so those models train with several seeds (``--seeds``) and the
table gives mean, standard deviation and every seed. Every model uses sinusoidal absolute positions (no
rotary), so full and LSH layers see positions the same way. Wall time is each model's training time; the
machine may be shared, so times are noisy. The defaults (21 runs of 1,000 steps x 8 x 256 bytes, 2 x d 64)
take about 17 minutes on 2 CPU threads (benchmarks/results/repro/reformer-ablations.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

from longrange.config import ModelConfig
from longrange.data.corpus import load_corpus
from longrange.repro.common import held_out_bpb, train_model, write_json

CLAIMS = {
    "a": "shared QK does not hurt (Fig. 3 left: curves overlap)",
    "b": "reversible matches plain (Fig. 3 right: curves overlap)",
    "c": "more hash rounds approach full attention (Fig. 5: LSH-8 close to full, LSH-1 worst)",
}


# `--size small`: the paper's claims are for larger models and sequences than the tiny defaults; these are the
# defaults then (any option given on the command line still wins). Shared QK and hash rounds only (comparisons a, c)
SIZES = {
    "tiny": {},
    "small": {
        "d_model": 256,
        "heads": 4,
        "layers": 4,
        "segment_len": 1024,
        "bucket_size": 64,
        "batch_size": 4,
        "steps": 300,
        "rounds": "1,4",
        "lsh_seeds": 2,
        "eval_docs": 4,
        "eval_bytes": 16384,
        "only": "a,c",
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="tiny (the defaults below) or small")
    p.add_argument("--only", default="a,b,c", help="comparisons to run (a shared QK, b reversible, c hash rounds)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--segment-len", type=int, default=256)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--bucket-size", type=int, default=32, help="LSH chunk length (paper: 64 at 4K tokens)")
    p.add_argument("--rounds", default="1,2,4,8", help="LSH hash rounds to train")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the full-attention models of (a) and (b)")
    p.add_argument("--lsh-seeds", type=int, default=3, help="seeds of each LSH model")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-bytes", type=int, default=8192, help="bytes of each held-out document evaluated")
    p.add_argument("--eval-docs", type=int, default=8)


def variants(args: argparse.Namespace) -> dict[str, tuple[str, dict, int]]:
    """name -> (comparison, ModelConfig keywords, seeds)."""
    full = ["full"] * args.layers
    out = {
        "full, separate Q/K": ("a,b", {"layers": full}, args.seeds),
        "full, shared QK": ("a,c", {"layers": full, "full": {"rotary": False, "shared_qk": True}}, args.seeds),
        "full, separate Q/K, reversible": ("b", {"layers": full, "reversible": True}, args.seeds),
    }
    for rounds in (int(r) for r in args.rounds.split(",")):
        lsh = {"n_hashes": rounds, "bucket_size": args.bucket_size, "hash_seed": None}
        out[f"LSH-{rounds}"] = ("c", {"layers": ["lsh"] * args.layers, "lsh": lsh}, args.lsh_seeds)
    wanted = set(args.only.split(","))
    return {name: v for name, v in out.items() if wanted & set(v[0].split(","))}


def with_size(args: argparse.Namespace, argv_defaults: dict) -> argparse.Namespace:
    """`args` with the `--size` preset's values for every option left at its default."""
    for key, value in SIZES[args.size].items():
        if getattr(args, key) == argv_defaults[key]:
            setattr(args, key, value)
    return args


def build_config(args: argparse.Namespace, name: str, keywords: dict) -> ModelConfig:
    sections = {"full": {"rotary": False}, **keywords}
    return ModelConfig(
        name=name,
        d_model=args.d_model,
        n_heads=args.heads,
        segment_len=args.segment_len,
        positions="sinusoidal",
        max_len=args.segment_len,
        **sections,
    )


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def run(args: argparse.Namespace) -> str:
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    args = with_size(args, vars(defaults.parse_args([])))
    corpus = load_corpus(None)
    train_docs = corpus.split("train")
    test_docs = [d[: args.eval_bytes] for d in corpus.split("test")[: args.eval_docs]]
    results: dict[str, dict] = {}
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    for name, (comparison, keywords, seeds) in variants(args).items():
        cfg = build_config(args, name, keywords)
        runs = []
        for seed in range(seeds):
            start = time.perf_counter()
            model, history = train_model(
                cfg,
                train_docs,
                args.out / "runs" / f"{name.replace(', ', '-').replace(' ', '-').replace('/', '')}-seed{seed}",
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=seed,
            )
            train_s = time.perf_counter() - start
            model.eval()
            bpb = held_out_bpb(model, test_docs)["bpb"]
            runs.append({"seed": seed, "bpb": bpb, "train_s": train_s})
            print(f"{name} seed {seed}: held-out bpb {bpb:.4f}, {train_s:.0f} s", flush=True)
        results[name] = {
            "comparison": comparison,
            "runs": runs,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    write_json(
        args.out / "reformer_ablations.json",
        {"args": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str)}, "results": results},
    )
    return _table(args, results)


def _table(args: argparse.Namespace, results: dict[str, dict]) -> str:
    rows = []
    for name, result in results.items():
        bpbs = [r["bpb"] for r in result["runs"]]
        seconds = statistics.mean(r["train_s"] for r in result["runs"])
        rows.append(
            f"| {result['comparison']} | {name} | {result['parameters'] / 1e3:.0f}K | {len(bpbs)} | {_summary(bpbs)} "
            f"| {', '.join(f'{b:.4f}' for b in bpbs)} | {seconds:.0f} |"
        )
    claims = "\n".join(f"- ({k}) {v}" for k, v in CLAIMS.items())
    return (
        f"Built-in code corpus, {args.steps} steps x {args.batch_size} rows x {args.segment_len} bytes, "
        f"{args.layers} layers, d_model {args.d_model}, {args.heads} heads, sinusoidal positions, LSH bucket size "
        f"{args.bucket_size}; held-out bits per byte on the first {args.eval_bytes} bytes of {args.eval_docs} "
        "test documents. Wall time: mean training seconds per run (the machine may be shared: noisy).\n\n"
        "| comparison | model | parameters | seeds | held-out bpb (mean ± std) | per seed | train s / run |\n"
        "|---|---|---:|---:|---:|---|---:|\n" + "\n".join(rows) + "\n\nThe paper's claims:\n\n" + claims
    )
