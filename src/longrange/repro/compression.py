"""Compressive Transformer vs Transformer-XL: memory of n_m states vs n_m / 2 states + n_m / 2 slots of rate c.

Transformer-XL keeps a memory of n_m states per layer; each Compressive variant keeps n_m / 2 states plus
n_m / 2 compressed slots of rate c, so it attends over the same number of slots but reaches
n_m / 2 * (1 + c) tokens back (Rae et al. 2020, section 5). Every model is trained on the same data for the
same steps; reported: held-out bits per byte on the built-in code corpus, the final compression loss per
layer, and accuracy on the long-range recall task (`longrange.tasks.recall`).

The recall geometry. A document is ``47K;`` (one fact), a gap of filler, then the query ``K47;``; segments
of T tokens start at document starts. The gap puts the query at distance
``((n_m + T) + n_m / 2 * (1 + c)) / 2`` from the fact, between the farthest key XL's attention reaches in
one layer (n_m + T - 1) and the nearest the compressed memory covers (n_m / 2 * (1 + c)), so one attention
hop from the query reaches the fact only through the compressed memory. (A 2-layer XL could still relay
the fact through the states of the filler, which a model must learn to do; the table shows whether it did.)
Recall training is a two-stage curriculum, the same for every model: half the steps on gaps drawn uniformly
from [0, --curriculum-gap] (the fact is still in every model's uncompressed memory: the retrieval is learned
there), then half on gaps from [0, gap] (the retrieval must go through the memory). Without the first stage
a model whose fact is mostly compressed never learned the retrieval at all (at 1500 steps: compressive/conv
and XL-64 at chance even on short gaps, the reference XL 55%). ``short recall`` (gap 8) checks that every
model learned the retrieval, ``recall`` (the full gap, held-out documents) shows whether memory carried the
fact. Chance is 10% per digit. One fact per document:
with 4 facts a tiny model did not learn the key matching in a few thousand steps (~12%, chance, even with
full attention), with one fact it does (~85% at 1000 steps with full attention).

A reference XL with an uncompressed memory of n_m / 2 * (1 + c) states (the same reach, more slots) is the
upper bound for what compression can keep.
"""

from __future__ import annotations

import argparse

from longrange.config import ModelConfig
from longrange.data.corpus import load_corpus
from longrange.repro.common import held_out_bpb, train_model, train_recall, write_json
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
    p.add_argument("--steps", type=int, default=300, help="training steps on the code corpus (bits per byte)")
    p.add_argument("--recall-steps", type=int, default=2000, help="training steps on recall documents (2 stages)")
    p.add_argument("--curriculum-gap", type=int, default=40, help="largest gap of the first recall stage")
    p.add_argument("--recall-facts", type=int, default=1, help="facts per recall document")
    p.add_argument("--recall-lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-bytes", type=int, default=8192, help="bytes of each held-out document evaluated")
    p.add_argument("--eval-docs", type=int, default=8)
    p.add_argument("--variants", default="conv,mean", help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--no-reference", action="store_true", help="skip the uncompressed XL of the same reach")


def configs(args) -> dict[str, ModelConfig]:
    base = {"segment_len": args.segment_len}
    reach = args.mem_len // 2 * (1 + args.rate)
    out = {f"transformer-xl (mem {args.mem_len})": _xl(base, args.mem_len)}
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise ValueError(f"--variants: {name!r} is not one of {list(VARIANTS)}")
        compression, loss = VARIANTS[name]
        out[f"compressive/{name} ({args.mem_len // 2} + {args.mem_len // 2} x {args.rate})"] = ModelConfig.from_name(
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
    if not args.no_reference:
        out[f"reference: transformer-xl (mem {reach})"] = _xl(base, reach)
    return out


def _xl(base: dict, mem_len: int) -> ModelConfig:
    return ModelConfig.from_name("transformer-xl-tiny", **base, **{"xl.mem_len": mem_len})


def recall_gap(mem_len: int, rate: int, segment_len: int, n_facts: int) -> int:
    """Filler length that puts the first query between XL's one-hop reach and the compressed memory's."""
    distance = ((mem_len + segment_len) + mem_len // 2 * (1 + rate)) // 2
    return max(0, distance - 4 * n_facts - 3)  # facts ("47K;" each), "\n" before the gap, "\n?" after


def run(args: argparse.Namespace) -> str:
    corpus = load_corpus(None)
    train_docs = corpus.split("train")
    test_docs = [d[: args.eval_bytes] for d in corpus.split("test")[: args.eval_docs]]
    gap = recall_gap(args.mem_len, args.rate, args.segment_len, args.recall_facts)
    recall_stage1 = make_recall_documents(4000, args.recall_facts, min(gap, args.curriculum_gap), seed=5, min_gap=0)
    recall_train = make_recall_documents(4000, args.recall_facts, gap, seed=0, min_gap=0)
    recall_test = make_recall_documents(64, args.recall_facts, gap, seed=1)
    recall_short = make_recall_documents(64, args.recall_facts, 8, seed=2)
    rows, results = [], {}
    for name, cfg in configs(args).items():
        run_name = name.split(" ")[0].replace("/", "-") + ("-reference" if name.startswith("reference") else "")
        model, history = train_model(
            cfg, train_docs, args.out / "runs" / run_name, steps=args.steps, batch_size=args.batch_size
        )
        bpb = held_out_bpb(model, test_docs)
        compression_loss = {k.split("/")[0]: v for k, v in history[-1].items() if "Attention" in k}
        half = args.recall_steps // 2
        recall_model = train_recall(
            cfg,
            [(recall_stage1, half), (recall_train, args.recall_steps - half)],
            args.out / "runs" / run_name,
            batch_size=args.batch_size,
            lr=args.recall_lr,
        )
        accuracy, short = recall_accuracy(recall_model, recall_test), recall_accuracy(recall_model, recall_short)
        results[name] = {
            "bpb": bpb["bpb"],
            "compression_loss": compression_loss,
            "recall_accuracy": accuracy,
            "short_recall_accuracy": short,
            "by_position": bpb["by_position"],
        }
        losses = ", ".join(f"{k} {v:.4f}" for k, v in compression_loss.items()) or "-"
        rows.append(f"| {name} | {bpb['bpb']:.3f} | {losses} | {accuracy:.1%} | {short:.1%} |")
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
        f"Same data and steps ({args.steps} on code, {args.recall_steps} on recall documents: half with gaps "
        f"<= {min(gap, args.curriculum_gap)}, half with gaps <= {gap}; batch "
        f"{args.batch_size}, segments of {args.segment_len}); XL memory {args.mem_len}, compressive memory "
        f"{args.mem_len // 2} + {args.mem_len // 2} x rate {args.rate} (reach {args.mem_len // 2 * (1 + args.rate)}"
        f" tokens per layer); recall: {args.recall_facts} fact(s), gap {gap} bytes (the query "
        f"~{gap + 4 * args.recall_facts + 3} tokens after the fact; XL's one-layer reach "
        f"<= {args.mem_len + args.segment_len - 1}); chance 10%.\n\n"
        "| model | held-out bpb | final compression loss per layer | recall (full gap) | recall (gap 8) |\n"
        "|---|---:|---|---:|---:|\n" + "\n".join(rows)
    )
