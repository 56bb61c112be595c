"""ListOps (Long Range Arena): encoder classifiers with full attention, Luna-16, Luna-128 and LSH
trained on the same generated data and budget; accuracy, time per step and peak memory side by side.

CPU-sized by default (sequences of 32-128 symbols, 8,000 examples, 600 steps x 32, 2-layer d64 models:
4.5 min on 2 CPU threads, where every model learns the task well above the majority class); the LRA
setting is --max-len 2000 --d-model 512 --steps 5000 on a GPU. Each model trains in a fresh
process, so its peak memory is its own: the growth of the process's peak resident set
(``ru_maxrss``) over the level reached after the data and the model are built (on CPU). Time per
step is the mean over the steps after the first (a warm-up).

``--lra``: the Long Range Arena's setting (Tay et al. 2021): expressions of 500-2,000 symbols (up to 10
arguments, depth 10), 96,000 training examples, 6 layers, d_model 512, 8 heads, feed-forward 1024, 5,000
steps x 32. A full run of that is hours per model on a CPU, so with ``--lra`` each model by default trains only
``--time-steps 3`` steps on as many examples as those steps read, and the table gives the measured seconds per
step and the time the whole budget would take (measured, then extrapolated linearly: stated in the table); no
accuracy. ``--lra --time-steps 0`` runs the whole budget (for a GPU or a long CPU run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time

import torch
import torch.nn.functional as F

from longrange.config import ModelConfig
from longrange.model.classifier import LongRangeClassifier
from longrange.tasks.listops import SYMBOLS, encode, make_listops

MODELS = {  # name -> (attention kind, section overrides)
    "full": ("full", {}),
    "luna-16": ("luna", {"luna": {"proj_len": 16, "chunk_len": 32}}),
    "luna-128": ("luna", {"luna": {"proj_len": 128, "chunk_len": 64}}),
    "lsh-4": ("lsh", {"lsh": {"n_hashes": 4, "bucket_size": 32}}),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=None, help="feed-forward width (default 4 x d_model)")
    p.add_argument("--lra", action="store_true", help="the LRA setting (2K symbols, 6 x 512); see above")
    p.add_argument("--time-steps", type=int, default=None, help="with --lra: steps measured (default 3; 0: all)")
    p.add_argument("--time-batch", type=int, default=4, help="timing: rows per measured step (scaled to the batch)")


LRA = {  # the Long Range Arena's ListOps setting (its configs: 6 layers, 512 wide, 8 heads, MLP 1024)
    "max_len": 2000,
    "min_len": 500,
    "max_args": 10,
    "train": 96000,
    "test": 2000,
    "steps": 5000,
    "batch_size": 32,
    "d_model": 512,
    "heads": 8,
    "d_ff": 1024,
    "layers": 6,
}


def lra_settings(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with the LRA setting applied (``--lra``); timing only: as few examples as the timed steps read."""
    args = argparse.Namespace(**vars(args))
    if getattr(args, "lra", False):
        vars(args).update(LRA)
        if args.time_steps is None:
            args.time_steps = 3
    args.time_steps = getattr(args, "time_steps", None) or 0
    if args.time_steps:
        args.time_batch = min(getattr(args, "time_batch", args.batch_size), args.batch_size)
        args.train = args.time_steps * args.time_batch
        args.test = 0
    return args


def _data(args: argparse.Namespace):
    min_len = getattr(args, "min_len", args.max_len // 4)
    shape = dict(min_len=min_len, max_len=args.max_len, max_depth=10, max_args=getattr(args, "max_args", 6))
    train = encode(make_listops(args.train, **shape, seed=0), args.max_len)
    test = encode(make_listops(args.test, **shape, seed=1), args.max_len)
    return train, test


def train_one(args: argparse.Namespace, name: str, threads: int) -> dict:
    """Train and test one model in this process: accuracy, seconds per step, peak MiB, parameters."""
    torch.set_num_threads(threads)
    train, test = _data(args)
    kind, sections = MODELS[name]
    cfg = ModelConfig(
        name=name,
        vocab_size=len(SYMBOLS),
        d_model=args.d_model,
        n_heads=getattr(args, "heads", 4),
        d_ff=getattr(args, "d_ff", None),
        layers=[kind] * args.layers,
        positions="sinusoidal",
        max_len=args.max_len,
        **sections,
    )
    torch.manual_seed(0)
    model = LongRangeClassifier(cfg, n_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    steps = getattr(args, "time_steps", 0) or args.steps  # timing only: the first few steps
    # timing only: steps of `time_batch` rows (full attention at 2K x 32 rows keeps ~24 GB of attention weights
    # for the backward pass), the time scaled to the batch: cost is linear in the rows
    rows = args.time_batch if getattr(args, "time_steps", 0) else args.batch_size
    for step in range(steps):
        if step == 1:  # the first step is a warm-up
            start = time.perf_counter()
        idx = torch.randint(0, args.train, (rows,), generator=gen)
        loss = F.cross_entropy(model(train[0][idx], train[1][idx]), train[2][idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    step_s = (time.perf_counter() - start) / max(steps - 1, 1) * args.batch_size / rows
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 1024
    model.eval()
    accuracy = None
    if args.test:
        with torch.no_grad():
            predictions = torch.cat(
                [model(test[0][i : i + 64], test[1][i : i + 64]).argmax(-1) for i in range(0, args.test, 64)]
            )
        accuracy = float((predictions == test[2]).float().mean())
    return {
        "accuracy": accuracy,
        "step_s": step_s,
        "peak_mib": peak_mib,
        "final_loss": loss.item(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run(args: argparse.Namespace) -> str:
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"--models: {unknown} not in {sorted(MODELS)}")
    args = lra_settings(args)
    timing = bool(args.time_steps)
    majority = None
    if not timing:
        _, test = _data(args)
        majority = float((test[2] == test[2].mode().values).float().mean())
    rows, results = [], {}
    context = multiprocessing.get_context("spawn")  # a fresh process per model: its own peak memory
    for name in names:
        with context.Pool(1) as pool:
            result = results[name] = pool.apply(train_one, (args, name, torch.get_num_threads()))
        if timing:
            hours = result["step_s"] * args.steps / 3600
            rows.append(
                f"| {name} | {result['parameters'] / 1e6:.1f}M | {result['step_s']:.1f} | {hours:.1f} "
                f"| {result['peak_mib']:.0f} |"
            )
        else:
            rows.append(
                f"| {name} | {result['parameters'] / 1e3:.0f}K | {result['accuracy']:.1%} "
                f"| {result['step_s'] * 1000:.0f} | {result['peak_mib']:.0f} |"
            )
        print(rows[-1], flush=True)
    settings = {k: v for k, v in vars(args).items() if isinstance(v, int | float | str) and k != "func"}
    payload = {"results": results, "majority_class": majority, "settings": settings}
    (args.out / "listops.json").write_text(json.dumps(payload, indent=1))
    min_len = getattr(args, "min_len", args.max_len // 4)
    setting = (
        f"ListOps, sequences of {min_len}-{args.max_len} symbols, {args.train} training examples, "
        f"{args.steps} steps x {args.batch_size}, d_model {args.d_model}, {args.layers} layers, "
        f"{torch.get_num_threads()} thread(s)"
    )
    if timing:
        return (
            f"{setting.replace(f'{args.train} training examples', 'LRA setting')}: timing only. Each model trained "
            f"{args.time_steps} steps of {args.time_batch} rows (the first a warm-up, not timed); seconds per step of "
            f"{args.batch_size} rows = that time x {args.batch_size}/{args.time_batch}, and the whole budget = that "
            f"x {args.steps} steps: measured, then extrapolated linearly (not run). Peak memory is for "
            f"{args.time_batch} rows. No accuracy (LRA reports ~37% for full attention).\n\n"
            f"| model | parameters | s / step of {args.batch_size} rows | {args.steps} steps (hours, extrapolated) "
            f"| peak MiB ({args.time_batch} rows) |\n"
            "|---|---:|---:|---:|---:|\n" + "\n".join(rows)
        )
    return (
        f"{setting}; majority class {majority:.1%} (LRA reports ~37% for full attention at 2K, 5000 steps).\n\n"
        "| model | parameters | test accuracy | ms / step | peak MiB |\n|---|---:|---:|---:|---:|\n" + "\n".join(rows)
    )
