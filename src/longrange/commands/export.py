"""Export a run for another library: `export hf RUN OUT`.

Example: longrange export hf runs/xl exports/xl-hf
OUT receives config.json + model.safetensors (+ generation_config.json, and the run's tokenizer.json when it has
one), loadable with `AutoModelForCausalLM.from_pretrained(OUT)` once `import longrange.hf` has run (no remote
code), and by `longrange eval/generate OUT`, `longrange.load(OUT)` and `longrange train --init-from OUT`.
Needs the optional `transformers` package (pip install 'longrange[hf]').
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["hf"], help="target format: hf (Hugging Face transformers)")
    parser.add_argument("run", type=Path, help="run or checkpoint directory")
    parser.add_argument("out", type=Path, help="output directory (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT (an earlier export)")


def run(args: argparse.Namespace) -> int:
    try:
        from longrange.hf import export_hf  # longrange.hf needs the optional transformers package
    except ImportError as err:
        raise ValueError(
            f"export hf needs the optional transformers package (pip install 'longrange[hf]'): {err}"
        ) from err
    out = export_hf(args.run, args.out, overwrite=args.overwrite)
    print(f"-> {out} (config.json + model.safetensors; load with `import longrange.hf` and AutoModelForCausalLM)")
    return 0
