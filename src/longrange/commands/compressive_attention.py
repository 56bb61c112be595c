"""The Compressive Transformer's attention over its memories, by region (the paper's figure), for a trained run.

Example: longrange compressive-attention runs/compressive --docs 8
Reads held-out documents of the run's corpus and writes RUN/attention.json and RUN/attention.png: the mean
attention weight per slot of the compressed memory, the memory and the segment, per layer (`analyze attention RUN`
is the same command under its former name).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longrange.commands.eval import corpus_of_run
from longrange.eval.compressive_attention import attention_by_region, plot_attention_by_region
from longrange.model.io import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run or checkpoint directory of a compressive model")
    parser.add_argument("--data", default=None, help="corpus (default: the run's)")
    parser.add_argument("--docs", type=int, default=8, help="held-out documents to read")
    parser.add_argument("--buckets", type=int, default=6)
    parser.add_argument("--max-segments", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    model = load(args.run)
    documents = corpus_of_run(args.run, args.data).split("test")[: args.docs]
    result = attention_by_region(model, documents, buckets=args.buckets, max_segments=args.max_segments)
    (args.run / "attention.json").write_text(json.dumps(result, indent=1))
    plot_attention_by_region(result, args.run / "attention.png")
    for i, layer in enumerate(result["layers"]):
        print(f"layer {i}: " + "  ".join(f"{k} {sum(v) / len(v):.4f}" for k, v in layer.items()))
    print(f"-> {args.run / 'attention.json'}, {args.run / 'attention.png'}")
    return 0
