"""ListOps (Long Range Arena): encoder classifiers with full attention, Luna-16, Luna-128 and LSH
trained on the same generated data and budget; accuracy, time per step side by side.

CPU-sized by default (sequences up to 512 symbols, small models, a few hundred steps); the LRA
setting is --max-len 2000 --d-model 512 --steps 5000 on a GPU. Peak memory per mechanism and
length is measured by `longrange bench attention --bidirectional` (fresh process per point).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from longrange.config import ModelConfig
from longrange.model.classifier import LongRangeClassifier
from longrange.tasks.listops import SYMBOLS, encode, make_listops

MODELS = {  # name -> (attention kind, section overrides)
    "full": ("full", {}),
    "luna-16": ("luna", {"luna": {"proj_len": 16}}),
    "luna-128": ("luna", {"luna": {"proj_len": 128}}),
    "lsh-4": ("lsh", {"lsh": {"n_hashes": 4, "bucket_size": 32}}),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))


def run(args: argparse.Namespace) -> str:
    shape = dict(min_len=args.max_len // 4, max_len=args.max_len, max_depth=10, max_args=6)
    train = encode(make_listops(args.train, **shape, seed=0), args.max_len)
    test = encode(make_listops(args.test, **shape, seed=1), args.max_len)
    majority = float((test[2] == test[2].mode().values).float().mean())
    rows, results = [], {}
    for name in args.models.split(","):
        kind, sections = MODELS[name]
        cfg = ModelConfig(
            name=name,
            vocab_size=len(SYMBOLS),
            d_model=args.d_model,
            n_heads=4,
            layers=[kind] * args.layers,
            positions="sinusoidal",
            max_len=args.max_len,
            **sections,
        )
        torch.manual_seed(0)
        model = LongRangeClassifier(cfg, n_classes=10)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, args.train, (args.batch_size,), generator=gen)
            loss = F.cross_entropy(model(train[0][idx], train[1][idx]), train[2][idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        step_s = (time.perf_counter() - start) / args.steps
        model.eval()
        with torch.no_grad():
            predictions = torch.cat(
                [model(test[0][i : i + 64], test[1][i : i + 64]).argmax(-1) for i in range(0, args.test, 64)]
            )
        accuracy = float((predictions == test[2]).float().mean())
        results[name] = {"accuracy": accuracy, "step_s": step_s, "final_loss": loss.item()}
        rows.append(f"| {name} | {accuracy:.1%} | {step_s * 1000:.0f} |")
        print(rows[-1], flush=True)
    (args.out / "listops.json").write_text(json.dumps({"results": results, "majority_class": majority}, indent=1))
    return (
        f"ListOps, sequences up to {args.max_len} symbols, {args.train} training examples, {args.steps} steps x "
        f"{args.batch_size}; majority class {majority:.1%} (LRA reports ~37% for full attention at 2K).\n\n"
        "| model | test accuracy | ms / step |\n|---|---:|---:|\n" + "\n".join(rows)
    )
