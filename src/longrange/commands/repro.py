"""Reproduce the papers' claims at a small budget; each writes its table to a file.

Examples:
  longrange repro duplication            # Reformer Table 2: LSH train x eval hashes
  longrange repro listops                # Luna / LRA: full vs Luna-16 / Luna-128 vs LSH classifiers
  longrange repro compression            # Compressive: XL vs compressed memories, recall task
  longrange repro memory-size            # Memorizing: bits per byte as the kNN memory grows
  longrange repro reformer-ablations     # Reformer: shared QK, reversible layers, hash rounds vs full
  longrange repro luna-seq2seq           # Luna encoder-decoder vs full attention on a whole-input task
  longrange repro memory-finetune        # Memorizing: a trained transformer-xl fine-tuned into a kNN memory
  longrange repro long-context           # every memory system against the Transformer, by position (~1 h)
  longrange repro all                    # every one in sequence
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from longrange.repro import (
    compression,
    duplication,
    listops,
    long_context,
    luna_seq2seq,
    memory_finetune,
    memory_size,
    reformer_ablations,
)

# name -> (add_arguments, run(args) -> Markdown table)
REPROS = {
    "duplication": duplication,
    "listops": listops,
    "compression": compression,
    "memory-size": memory_size,
    "reformer-ablations": reformer_ablations,
    "luna-seq2seq": luna_seq2seq,
    "memory-finetune": memory_finetune,
    "long-context": long_context,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="repro", required=True, metavar="NAME")
    for name, module in {**REPROS, "all": None}.items():
        doc = (module.__doc__ if module else "Run every reproduction in sequence at its default budget.").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        p.add_argument("--out", type=Path, default=Path("runs/repro") / name)
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        if module:
            module.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(REPROS) if args.repro == "all" else [args.repro]
    sections = []
    for name in names:
        module = REPROS[name]
        sub_args = args
        if args.repro == "all":  # defaults of that reproduction
            sub_parser = argparse.ArgumentParser()
            module.add_arguments(sub_parser)
            sub_args = sub_parser.parse_args([])
            sub_args.out = args.out / name
        sub_args.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        table = module.run(sub_args)
        minutes = (time.perf_counter() - start) / 60
        (sub_args.out / "table.md").write_text(table + "\n")
        print(f"\n## {name} ({minutes:.1f} min)\n\n{table}\n-> {sub_args.out}/table.md", flush=True)
        sections.append(f"## {name}\n\n{table}\n\n({minutes:.1f} min on {torch.get_num_threads()} threads)\n")
    if args.repro == "all":
        (args.out / "all.md").write_text("\n".join(sections))
        (args.out / "all.json").write_text(json.dumps({"sections": names}))
    return 0
