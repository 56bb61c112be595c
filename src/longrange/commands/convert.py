"""Import a checkpoint of another library: `convert hf-reformer SRC OUT`.

Example: longrange convert hf-reformer path/to/hf-reformer-checkpoint runs/reformer-hf
SRC is a Hugging Face ReformerModelWithLMHead directory (config.json + model.safetensors or
pytorch_model.bin, read weights-only); OUT receives model.safetensors + config.yaml, loadable with
`longrange eval`/`generate` or `longrange.load`. The LSH layers use `lsh.convention: hf`, so logits
match the Hugging Face model's in eval mode when its `hash_seed` is set (or given with --hash-seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longrange.convert.hf_reformer import convert_hf_reformer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["hf-reformer"], help="source format")
    parser.add_argument("src", type=Path, help="source checkpoint directory")
    parser.add_argument("out", type=Path, help="output checkpoint directory")
    parser.add_argument(
        "--hash-seed", type=int, default=None, help="LSH rotation seed (default: the checkpoint's hash_seed)"
    )


def run(args: argparse.Namespace) -> int:
    out = convert_hf_reformer(args.src, args.out, hash_seed=args.hash_seed)
    print(f"-> {out} (model.safetensors + config.yaml)")
    return 0
