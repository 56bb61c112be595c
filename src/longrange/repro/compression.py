"""Compressive Transformer vs Transformer-XL at the same attention span in tokens.

Transformer-XL keeps a memory of n_m states; each Compressive variant keeps n_m / 2 states plus
n_m / 2 compressed slots of rate c (so it reaches n_m / 2 * (1 + c) tokens back). Every model is
trained on the same data for the same steps; reported: held-out bits per byte on the built-in
code corpus, the final compression loss per layer, and accuracy on the long-range recall task
(facts, then a gap longer than the XL span but within the compressed span, then queries).
"""

from __future__ import annotations

import argparse

from longrange.config import ModelConfig
from longrange.data.corpus import load_corpus
from longrange.repro.common import held_out_bpb, train_model, write_json
from longrange.tasks.recall import make_recall_documents, recall_accuracy

VARIANTS = {  # name -> (compression, loss)
    "max": ("max", "attention"),
    "mean": ("mean", "attention"),
    "conv": ("conv", "attention"),
    "dilated_conv": ("dilated_conv", "attention"),
    "most_used": ("most_used", "attention"),
    "conv+autoencoding": ("conv", "autoencoding"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mem-len", type=int, default=64, help="n_m of Transformer-XL")
    p.add_argument("--rate", type=int, default=4)
    p.add_argument("--segment-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--recall-steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-bytes", type=int, default=8192, help="bytes of each held-out document evaluated")
    p.add_argument("--eval-docs", type=int, default=8)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))


def configs(args) -> dict[str, ModelConfig]:
    base = {"segment_len": args.segment_len}
    out = {"transformer-xl": ModelConfig.from_name("transformer-xl-tiny", **base, **{"xl.mem_len": args.mem_len})}
    for name in args.variants.split(","):
        compression, loss = VARIANTS[name]
        out[f"compressive/{name}"] = ModelConfig.from_name(
            "compressive-tiny",
            **base,
            compressive={
                "mem_len": args.mem_len // 2,
                "cmem_len": args.mem_len // 2,
                "rate": args.rate,
                "compression": compression,
                "loss": loss,
            },
        )
    return out


def run(args: argparse.Namespace) -> str:
    corpus = load_corpus(None)
    train_docs = corpus.split("train")
    test_docs = [d[: args.eval_bytes] for d in corpus.split("test")[: args.eval_docs]]
    xl_span = args.mem_len * 2  # 2 layers, each reaching mem_len back
    gap = int(xl_span * 1.5)  # beyond XL, within compressive: 2 * (n_m / 2) * (1 + c) tokens
    recall_train = make_recall_documents(400, 4, gap, seed=0)
    recall_test = make_recall_documents(40, 4, gap, seed=1)
    rows, results = [], {}
    for name, cfg in configs(args).items():
        model, history = train_model(
            cfg, train_docs, args.out / "runs" / name.replace("/", "-"), steps=args.steps, batch_size=args.batch_size
        )
        bpb = held_out_bpb(model, test_docs)
        compression_loss = {k.split("/")[0]: v for k, v in history[-1].items() if "Attention" in k}
        recall_model, _ = train_model(
            cfg,
            recall_train,
            args.out / "runs" / (name.replace("/", "-") + "-recall"),
            steps=args.recall_steps,
            batch_size=args.batch_size,
        )
        accuracy = recall_accuracy(recall_model, recall_test)
        results[name] = {
            "bpb": bpb["bpb"],
            "compression_loss": compression_loss,
            "recall_accuracy": accuracy,
            "by_position": bpb["by_position"],
        }
        losses = ", ".join(f"{k} {v:.4f}" for k, v in compression_loss.items()) or "-"
        rows.append(f"| {name} | {bpb['bpb']:.3f} | {losses} | {accuracy:.1%} |")
        print(rows[-1], flush=True)
    write_json(
        args.out / "compression.json",
        {
            "args": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str)},
            "results": results,
            "recall_gap": gap,
        },
    )
    return (
        f"Same data and steps ({args.steps} on code, {args.recall_steps} on recall documents); XL memory "
        f"{args.mem_len}, compressive memory {args.mem_len // 2} + {args.mem_len // 2} x rate {args.rate}; "
        f"recall gap {gap} bytes (XL reaches ~{xl_span}).\n\n"
        "| model | held-out bpb | final compression loss per layer | recall accuracy |\n|---|---:|---|---:|\n"
        + "\n".join(rows)
    )
