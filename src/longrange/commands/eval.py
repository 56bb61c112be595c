"""Evaluate a run: bits per byte over whole held-out documents, loss by position.

Example: longrange eval runs/xl --split test --out runs/xl/eval.json
         longrange eval runs/mem --set knn.memory_size=8192      # memory ablation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from longrange.commands.train import parse_overrides
from longrange.data.corpus import load_corpus
from longrange.eval.evaluate import evaluate
from longrange.model.io import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run or checkpoint directory")
    parser.add_argument("--data", default=None, help="corpus (default: the one the run was trained on)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--docs", type=int, default=None, help="evaluate only the first N documents")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--segment-len", type=int, default=None)
    parser.add_argument(
        "--set", "--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (e.g. memory)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: RUN/eval-SPLIT.json)")


def corpus_of_run(run: Path, data: str | None):
    if data is None and (run / "corpus.json").is_file():
        data = json.loads((run / "corpus.json").read_text())["spec"]
    return load_corpus(data)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.run, **parse_overrides(args.set)).to(args.device)
    documents = corpus_of_run(args.run, args.data).split(args.split)[: args.docs]
    result = evaluate(model, documents, batch_size=args.batch_size, segment_len=args.segment_len, device=args.device)
    out = args.out or (args.run / f"eval-{args.split}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"{args.split}: {result['bpb']:.4f} bits per byte over {result['tokens']:,} bytes -> {out}")
    return 0
