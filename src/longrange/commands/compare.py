"""Train and evaluate several systems on the same corpus and token budget; write a report.

Example: longrange compare --size tiny --steps 100 --out runs/compare
Writes OUT/report.md and a standalone OUT/report.html (table: parameters, held-out bits per byte,
tokens/s, peak memory, wall time; training curves; loss by position in the document; memory
ablations; the command and configs). Rerunning the same command continues a killed comparison,
reusing every finished system.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from longrange.compare import SYSTEMS, CompareConfig, compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--steps", type=int, default=200, help="updates per system")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="default: max(8 x segment, longest)")
    parser.add_argument("--data", default=None, help="corpus spec (default: built-in stdlib code)")
    parser.add_argument("--eval-docs", type=int, default=8)
    parser.add_argument("--eval-bytes", type=int, default=16 * 1024, help="bytes read per held-out doc (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="do not spawn a process per system")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cc = CompareConfig(
        systems=[s.strip() for s in args.systems.split(",") if s.strip()],
        size=args.size,
        steps=args.steps,
        tokens_per_step=args.tokens_per_step,
        data=args.data,
        eval_docs=args.eval_docs,
        eval_bytes=args.eval_bytes,
        device=args.device,
        ablations=not args.no_ablations,
        command="longrange " + shlex.join(sys.argv[1:]),
    )
    start = time.perf_counter()
    out = compare(cc, args.out, isolate=not args.in_process)
    print((out / "summary.md").read_text())
    print(f"report: {out / 'report.md'} and {out / 'report.html'} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0
