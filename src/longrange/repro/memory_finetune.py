"""Memorizing Transformer: fine-tuning a pretrained model into an external memory (Wu et al. 2022).

The paper's claim: a model pretrained without memory gains from an external kNN memory after a short
fine-tuning, and the pretrained model and the fine-tuned one differ only by the memory. So the pretrained model
here is the memorizing layout trained with its memory switched off (``knn.memory_size=0``): its kNN layer is then
plain local attention over [XL cache ; segment] with the layer's T5 bias, and the gate is never used. Loading it
with the memory on changes one thing: once the store holds entries, each head mixes memory attention with that
same local attention through the gate. Before any fine-tuning this scores within a few hundredths of the
pretrained model (the table's second row; `longrange train --init-from` logs the same comparison).

Then, from the same pretrained weights, with the same data, learning rate and budget:
- fine-tuned with memory (M entries per row, FIFO, exact top-k), scored with the memory on and, with the same
  weights, off;
- continued without memory (what the extra steps alone give).
At each fine-tuning budget in ``--finetune-steps``. Held-out bits per byte on the longest test documents, state and
memory carried across their segments, the memory empty at each document's start.

``--from RUN`` starts from a given run instead: a memorizing-layout run (trained with its memory on or off), or a
transformer-xl run, whose layer at the kNN position is then swapped for the kNN layer (its q / kv / out load; the
T5 bias, gate and temperature start fresh; the XL position tensors are skipped): that load changes what the model
computes, and the table's second row says by how much.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from longrange.config import ModelConfig, _memorizing_layers
from longrange.data.corpus import load_corpus
from longrange.model.build import build_model
from longrange.model.io import load, load_config
from longrange.repro.common import held_out_bpb, write_json
from longrange.train.config import TrainConfig
from longrange.train.init_from import init_weights
from longrange.train.trainer import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", type=Path, default=None, help="a pretrained run to start from")
    p.add_argument("--preset", default="memorizing-tiny", help="memorizing preset to pretrain, memory off")
    p.add_argument("--segment-len", type=int, default=64)
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--finetune-steps", default="300,1500", help="fine-tuning budgets, comma-separated")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="pretraining peak learning rate")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--memory-size", type=int, default=1536, help="kNN memory entries per row (M)")
    p.add_argument("--eval-bytes", type=int, default=16384)
    p.add_argument("--eval-docs", type=int, default=4)


def memorizing_config(source: ModelConfig, memory_size: int) -> ModelConfig:
    """The memorizing layout of `source`'s sizes with a kNN memory of `memory_size` entries per row.

    A memorizing-layout source keeps its layers; a transformer-xl source gets the memorizing presets' layer swapped.
    """
    data = source.to_dict()
    if "knn" in source.layers:
        data["knn"] = {**data.get("knn", {}), "memory_size": memory_size}
    elif set(source.layers) == {"xl"}:
        n = len(source.layers)
        data.update(
            name=f"{source.name}-memorizing",
            layers=[_memorizing_layers(i, n) for i in range(n)],
            knn={"memory_size": memory_size, "mem_len": source.xl.mem_len},
        )
    else:
        raise ValueError(
            f"--from: a memorizing-layout run (layers with 'knn') or a transformer-xl run (layers all 'xl') is "
            f"needed, got layers {source.layers}"
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
        precision="fp32",
    )


def run(args: argparse.Namespace) -> str:
    corpus = load_corpus(None)
    long_docs = sorted(corpus.split("test"), key=len, reverse=True)[: args.eval_docs]
    test_docs = [d[: args.eval_bytes] for d in long_docs]
    budgets = [int(s) for s in str(args.finetune_steps).split(",") if s.strip()]
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    seconds = {}
    if args.source is None:
        pre_cfg = ModelConfig.from_name(
            args.preset,
            segment_len=args.segment_len,
            **{"knn.memory_size": 0, "knn.mem_len": args.segment_len, "xl.mem_len": args.segment_len},
        )
        start = time.perf_counter()
        source = train(
            pre_cfg, _train_cfg(args, args.pretrain_steps, args.lr), None, runs / "pretrained", overwrite=True
        )
        seconds["pretrain"] = time.perf_counter() - start
    else:
        source, pre_cfg = args.source, load_config(args.source)
    mem_cfg = memorizing_config(pre_cfg, args.memory_size)
    off_cfg = mem_cfg.replace(**{"knn.memory_size": 0})
    results = {"pretrained": held_out_bpb(load(source).eval(), test_docs)["bpb"]}
    print(f"pretrained: held-out bpb {results['pretrained']:.4f}", flush=True)
    loaded = build_model(mem_cfg)  # what fine-tuning starts from: the same load as `train --init-from`
    init_weights(loaded, source)
    results["memory on, not fine-tuned"] = held_out_bpb(loaded.eval(), test_docs)["bpb"]
    for steps in budgets:
        for name, cfg in ((f"memory+{steps}", mem_cfg), (f"no-memory+{steps}", off_cfg)):
            start = time.perf_counter()
            out = train(
                cfg, _train_cfg(args, steps, args.finetune_lr), None, runs / name, overwrite=True, init_from=source
            )
            seconds[name] = time.perf_counter() - start
            results[name] = held_out_bpb(load(out).eval(), test_docs)["bpb"]
            print(f"{name}: held-out bpb {results[name]:.4f} ({seconds[name]:.0f} s)", flush=True)
        off = load(runs / f"memory+{steps}", **{"knn.memory_size": 0}).eval()
        results[f"memory+{steps}, memory off"] = held_out_bpb(off, test_docs)["bpb"]
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
    before = results["pretrained"]
    pretrain = "given run" if args.source is not None else f"{args.pretrain_steps} steps, memory off"

    def row(label: str, steps: str, key: str) -> str:
        return f"| {label} | {steps} | {results[key]:.4f} | {results[key] - before:+.4f} |"

    rows = [
        f"| pretrained ({pretrain}) | - | {before:.4f} | - |",
        row(
            f"the same weights, memory on (M = {args.memory_size}), before fine-tuning",
            "0",
            "memory on, not fine-tuned",
        ),
    ]
    for steps in budgets:
        rows += [
            row("fine-tuned with memory", f"+{steps}", f"memory+{steps}"),
            row("the same weights, memory off", f"+{steps}", f"memory+{steps}, memory off"),
            row("continued without memory", f"+{steps}", f"no-memory+{steps}"),
        ]
    gains = ", ".join(f"{results[f'no-memory+{s}'] - results[f'memory+{s}']:+.4f} after {s} steps" for s in budgets)
    return (
        f"{mem_cfg.name} ({len(mem_cfg.layers)} layers {mem_cfg.layers}, d_model {mem_cfg.d_model}, segments of "
        f"{mem_cfg.segment_len}) pretrained on the built-in code corpus, then fine-tuned x {args.batch_size} rows at "
        f"lr {args.finetune_lr}; held-out bits per byte on the {len(test_docs)} longest test documents (first "
        f"{args.eval_bytes // 1024} KiB each), state and memory carried.\n\n"
        "| model | fine-tuning steps | held-out bpb | vs pretrained |\n|---|---:|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nWhat the memory buys (continued without memory minus fine-tuned with memory, same budget): {gains}."
    )
