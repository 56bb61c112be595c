"""Train and evaluate several systems on the same documents, rows and token budget; write a report.

Example: longrange compare --size tiny --steps 100 --rows 8 --seeds 3 --out runs/compare
Every system reads ROWS rows of ROW_TOKENS tokens per update (each in its own segments, memories carried
along the row), SEEDS times. Writes OUT/report.md and a standalone OUT/report.html (table: parameters,
held-out bits per byte as mean ± std [min, max] over seeds, tokens/s, peak memory, wall time, reach; which
differences exceed the spread; whether the sizes are equal; training curves; loss by position in the
document; memory ablations; the command and configs). Rerunning the same command continues a killed comparison,
reusing every finished system.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from longrange.compare import SYSTEMS, CompareConfig, compare
from longrange.runtime import add_runtime_options, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--steps", type=int, default=200, help="updates per system and seed")
    parser.add_argument("--rows", type=int, default=8, help="rows (documents read in parallel) per update")
    parser.add_argument(
        "--row-tokens", type=int, default=None, help="tokens per row per update (default: the longest segment)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="train each system with seeds 0 .. N-1")
    parser.add_argument(
        "--whole-row",
        default=None,
        help="systems that read a row in one pass (segment = row tokens); others read it in their own segments "
        "(default: those whose mechanisms are registered as built for one pass: reformer, luna)",
    )
    parser.add_argument("--param-tolerance", type=float, default=0.10, help="parameter counts equal within this")
    parser.add_argument("--data", default=None, help="corpus spec (default: built-in stdlib code)")
    parser.add_argument("--eval-docs", type=int, default=8)
    parser.add_argument("--eval-bytes", type=int, default=16 * 1024, help="bytes read per held-out doc (0: all)")
    add_runtime_options(parser)
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="do not spawn a process per system")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cc = CompareConfig(
        systems=[s.strip() for s in args.systems.split(",") if s.strip()],
        size=args.size,
        steps=args.steps,
        rows=args.rows,
        row_tokens=args.row_tokens,
        seeds=args.seeds,
        whole_row=None if args.whole_row is None else [s.strip() for s in args.whole_row.split(",") if s.strip()],
        param_tolerance=args.param_tolerance,
        data=args.data,
        eval_docs=args.eval_docs,
        eval_bytes=args.eval_bytes,
        device=str(resolve_device(args.device)),
        precision=args.precision,
        compile=args.compile,
        ablations=not args.no_ablations,
        command="longrange " + shlex.join(sys.argv[1:]),
    )
    start = time.perf_counter()
    out = compare(cc, args.out, isolate=not args.in_process)
    print((out / "summary.md").read_text())
    print(f"report: {out / 'report.md'} and {out / 'report.html'} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0
