"""Sample from a run, streaming a (long) prompt through every memory first.

Example: longrange generate runs/xl --prompt-file notes.txt --max-new-tokens 200 --top-p 0.9 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from longrange.data.tokenizer import ByteTokenizer
from longrange.generate import generate
from longrange.model.io import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run or checkpoint directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt-file", type=Path, help="file whose text is the prompt")
    source.add_argument("--prompt", default="\n", help="prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = ByteTokenizer()
    prompt = args.prompt_file.read_bytes() if args.prompt_file else args.prompt.encode()
    model = load(args.run).to(args.device)
    tokens = generate(
        model,
        tokenizer.encode(prompt),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    print(tokenizer.decode(tokens))
    return 0
