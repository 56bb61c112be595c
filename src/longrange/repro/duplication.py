"""Reformer duplication task: train 1-layer models with full and LSH attention, evaluate every
model with full attention and LSH-1/2/4/8 (the paper's Table 2, at a CPU-sized L).

All models use the Reformer's shared-QK attention; "full" is that attention with one bucket and
one chunk (exact), so the same weights can be evaluated either way.
"""

from __future__ import annotations

import argparse
import json

import torch

from longrange.attention.lsh import LSHAttention
from longrange.config import ModelConfig
from longrange.model.build import build_model
from longrange.tasks.duplication import VOCAB, duplication_accuracy, duplication_batch

TRAIN = {"full": 0, "lsh-1": 1, "lsh-2": 2, "lsh-4": 4}
EVAL = {"full": 0, "lsh-1": 1, "lsh-2": 2, "lsh-4": 4, "lsh-8": 8}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=32, help="L, symbols per copy (paper: 511)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--bucket-size", type=int, default=16)
    p.add_argument("--eval-batches", type=int, default=8)


def set_hashing(model, n_hashes: int, seq_len: int, bucket_size: int) -> None:
    """0 hashes = exact shared-QK attention (one bucket, one chunk covering the sequence)."""
    for block in model.blocks:
        attn: LSHAttention = block.attention
        if n_hashes == 0:
            attn.n_hashes, attn.n_buckets, attn.chunk = 1, 1, seq_len
        else:
            attn.n_hashes, attn.n_buckets, attn.chunk = n_hashes, None, bucket_size


def run(args: argparse.Namespace) -> str:
    seq_len = 2 * args.length + 2
    cfg = ModelConfig(
        name="duplication",
        vocab_size=VOCAB,
        d_model=args.d_model,
        n_heads=args.heads,
        layers=["lsh"],
        segment_len=seq_len,
        positions="learned",
        max_len=seq_len,
        lsh={"bucket_size": args.bucket_size, "hash_seed": None},
    )
    results: dict[str, dict[str, float]] = {}
    for train_name, train_hashes in TRAIN.items():
        torch.manual_seed(0)
        model = build_model(cfg)
        set_hashing(model, train_hashes, seq_len, args.bucket_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        for step in range(args.steps):
            for group in optimizer.param_groups:
                group["lr"] = 1e-3 * min(1.0, (step + 1) / 50)
            tokens, targets = duplication_batch(args.batch_size, args.length, gen)
            loss = model(tokens, targets=targets).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        results[train_name] = {}
        for eval_name, eval_hashes in EVAL.items():
            set_hashing(model, eval_hashes, seq_len, args.bucket_size)
            test_gen = torch.Generator().manual_seed(99)
            accs = []
            with torch.no_grad():
                for i in range(args.eval_batches):
                    for block in model.blocks:
                        block.attention.hash_seed = i  # different rotations per evaluation batch
                    tokens, targets = duplication_batch(args.batch_size, args.length, test_gen)
                    accs.append(duplication_accuracy(model(tokens).logits, targets))
            results[train_name][eval_name] = sum(accs) / len(accs)
        print(
            f"trained {train_name}: final loss {loss.item():.3f}; "
            + ", ".join(f"{k} {v:.1%}" for k, v in results[train_name].items()),
            flush=True,
        )
    settings = {k: v for k, v in vars(args).items() if isinstance(v, int | float | str)}
    (args.out / "duplication.json").write_text(json.dumps({"args": settings, "accuracy": results}, indent=1))
    header = "| train \\ eval | " + " | ".join(EVAL) + " |\n|---|" + "---:|" * len(EVAL)
    rows = [f"| {t} | " + " | ".join(f"{results[t][e]:.1%}" for e in EVAL) + " |" for t in TRAIN]
    return (
        f"Duplication task, L = {args.length} ({args.steps} steps x {args.batch_size} sequences), "
        f"accuracy on the second copy:\n\n" + header + "\n" + "\n".join(rows)
    )
