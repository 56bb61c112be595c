"""Train a small model on the built-in code corpus, evaluate bits per byte, print a sample.

Example: longrange demo --out runs/demo
The default budget (transformer-xl-small, 250 updates of 8 x 256 bytes) takes about three minutes on
a 2-core CPU. Evaluation reads the first 16 KiB of each held-out document (whole documents of the
standard library reach 1.4 MB) so the demo stays short; `longrange eval` reads them whole.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from longrange.config import ModelConfig
from longrange.data.corpus import load_corpus
from longrange.data.tokenizer import ByteTokenizer
from longrange.eval.evaluate import evaluate
from longrange.generate import generate
from longrange.train.trainer import TrainConfig, train

EVAL_BYTES = 16 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--preset", default="transformer-xl-small")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-docs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo run")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model_cfg = ModelConfig.from_name(args.preset)
    train_cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=2e-3, warmup_steps=20, checkpoint_every=50, log_every=10
    )
    print(f"training {args.preset} on the Python standard library ({torch.get_num_threads()} threads)")
    train(model_cfg, train_cfg, None, args.out, resume=args.resume)
    from longrange.model.io import load

    model = load(args.out)
    corpus = load_corpus(None)
    held_out = [d[:EVAL_BYTES] for d in corpus.split("test")[: args.eval_docs]]
    result = evaluate(model, held_out, batch_size=min(4, len(held_out)))
    (args.out / "eval-demo.json").write_text(json.dumps(result, indent=1))
    prompt = b"import os\n\n\ndef "
    sample = ByteTokenizer().decode(generate(model, list(prompt), 200, temperature=0.8, top_k=40, seed=0))
    wall = time.perf_counter() - start
    print(
        f"\nheld-out bits per byte: {result['bpb']:.3f} over {result['tokens']:,} bytes "
        f"({len(held_out)} documents, first {EVAL_BYTES // 1024} KiB each)"
    )
    print(f"wall time: {wall / 60:.1f} min\n--- sample ---\n{prompt.decode()}{sample}\n--------------")
    return 0
