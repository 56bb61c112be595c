"""Memorizing Transformer: fine-tuning a pretrained model into an external memory (Wu et al. 2022).

A `transformer-xl` run is trained on the built-in code corpus (or taken from ``--from RUN``); then two runs start
from its weights (`train(..., init_from=RUN)`, the command line's ``longrange train --init-from RUN``) with the
same fine-tuning budget, data and learning rate:
- memorizing: the same sizes with the kNN layer of the memorizing presets swapped in (its q / kv / out load from
  the XL layer; its gate, temperature and T5 bias start fresh, the XL layer's relative-position tensors are
  skipped), memory of ``--memory-size`` entries;
- XL continued: the XL model trained on for the same steps (what fine-tuning alone gives).
Held-out bits per byte on the longest test documents, state (and the kNN memory) carried across their segments:
before fine-tuning (the XL model, and the memorizing model with the XL weights loaded), after each run, and the
memorizing run with its memory switched off (M = 0: the same weights), which separates what the memory adds from
what the extra steps add. Paper's claim: a model pretrained without memory gains from an external memory after
a short fine-tuning (a small fraction of its pretraining steps). Defaults: 4,000 pretraining steps and 500
fine-tuning steps of transformer-xl-tiny, 1.5 minutes on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from longrange.config import ModelConfig, _memorizing_layers
from longrange.data.corpus import load_corpus
from longrange.model.build import build_model
from longrange.model.io import checkpoint_dir, load, load_config, load_weights
from longrange.repro.common import held_out_bpb, write_json
from longrange.train.trainer import TrainConfig, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", type=Path, default=None, help="a trained transformer-xl run to start from")
    p.add_argument("--preset", default="transformer-xl-tiny", help="XL preset to pretrain (without --from)")
    p.add_argument("--segment-len", type=int, default=64)
    p.add_argument("--pretrain-steps", type=int, default=4000)
    p.add_argument("--finetune-steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="pretraining peak learning rate")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--memory-size", type=int, default=1536, help="kNN memory entries per row (M)")
    p.add_argument("--eval-bytes", type=int, default=16384)
    p.add_argument("--eval-docs", type=int, default=4)


def memorizing_config(xl: ModelConfig, memory_size: int) -> ModelConfig:
    """The memorizing preset's layout built from the XL config's sizes: one layer swapped for kNN."""
    if set(xl.layers) != {"xl"}:
        raise ValueError(f"--from: a transformer-xl run is needed (layers all 'xl'), got layers {xl.layers}")
    n = len(xl.layers)
    data = xl.to_dict()
    data.update(
        name=f"{xl.name}-memorizing",
        layers=[_memorizing_layers(i, n) for i in range(n)],
        knn={"memory_size": memory_size, "mem_len": xl.xl.mem_len},
    )
    return ModelConfig.from_dict(data)


def _train_cfg(args: argparse.Namespace, steps: int, lr: float) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=min(50, steps // 10),
        checkpoint_every=steps,
        log_every=max(1, steps // 10),
        progress=False,
        eval_segments=1,
        device="cpu",
    )


def run(args: argparse.Namespace) -> str:
    corpus = load_corpus(None)
    long_docs = sorted(corpus.split("test"), key=len, reverse=True)[: args.eval_docs]
    test_docs = [d[: args.eval_bytes] for d in long_docs]
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    seconds = {}
    if args.source is None:
        xl_cfg = ModelConfig.from_name(args.preset, segment_len=args.segment_len, **{"xl.mem_len": args.segment_len})
        start = time.perf_counter()
        source = train(xl_cfg, _train_cfg(args, args.pretrain_steps, args.lr), None, runs / "xl", overwrite=True)
        seconds["pretrain"] = time.perf_counter() - start
    else:
        source, xl_cfg = args.source, load_config(args.source)
    mem_cfg = memorizing_config(xl_cfg, args.memory_size)
    finetune = _train_cfg(args, args.finetune_steps, args.finetune_lr)
    before = held_out_bpb(load(source).eval(), test_docs)["bpb"]
    print(f"pretrained transformer-xl: held-out bpb {before:.4f}", flush=True)
    swapped = build_model(mem_cfg)  # the fine-tuning's starting point: XL weights, fresh gate and T5 bias
    load_weights(swapped, checkpoint_dir(source), strict=False)
    results = {"before": before, "memorizing, not fine-tuned": held_out_bpb(swapped.eval(), test_docs)["bpb"]}
    for name, cfg in {"xl-continued": xl_cfg, "memorizing": mem_cfg}.items():
        start = time.perf_counter()
        out = train(cfg, finetune, None, runs / name, overwrite=True, init_from=source)
        seconds[name] = time.perf_counter() - start
        results[name] = held_out_bpb(load(out).eval(), test_docs)["bpb"]
        print(f"{name}: held-out bpb {results[name]:.4f} ({seconds[name]:.0f} s)", flush=True)
    results["memorizing, memory off"] = held_out_bpb(
        load(runs / "memorizing", **{"knn.memory_size": 0}).eval(), test_docs
    )["bpb"]
    write_json(
        args.out / "memory_finetune.json",
        {
            "args": {  # the options (the command line adds its handler function: not JSON)
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if v is None or isinstance(v, int | float | str | Path)
            },
            "bpb": results,
            "seconds": seconds,
            "source": str(source),
        },
    )
    pretrain = "given run" if args.source is not None else f"{args.pretrain_steps} steps"
    rows = [
        f"| pretrained transformer-xl ({pretrain}) | - | {before:.4f} | - |",
        f"| memorizing, XL weights loaded, not fine-tuned | 0 | {results['memorizing, not fine-tuned']:.4f} | "
        f"{results['memorizing, not fine-tuned'] - before:+.4f} |",
        f"| XL continued | +{args.finetune_steps} | {results['xl-continued']:.4f} | "
        f"{results['xl-continued'] - before:+.4f} |",
        f"| memorizing (kNN M = {args.memory_size}), fine-tuned | +{args.finetune_steps} | "
        f"{results['memorizing']:.4f} | {results['memorizing'] - before:+.4f} |",
        f"| same weights, memory off (M = 0) | +{args.finetune_steps} | {results['memorizing, memory off']:.4f} | "
        f"{results['memorizing, memory off'] - before:+.4f} |",
    ]
    return (
        f"{xl_cfg.name} ({len(xl_cfg.layers)} layers, d_model {xl_cfg.d_model}, segments of {xl_cfg.segment_len}) "
        f"pretrained on the built-in code corpus, then fine-tuned {args.finetune_steps} steps x {args.batch_size} "
        f"rows at lr {args.finetune_lr}; held-out bits per byte on the {len(test_docs)} longest test documents "
        f"(first {args.eval_bytes // 1024} KiB each), state and memory carried.\n\n"
        "| model | fine-tuning steps | held-out bpb | vs before |\n|---|---:|---:|---:|\n" + "\n".join(rows)
    )
