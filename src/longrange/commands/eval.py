"""Evaluate a run: bits per byte over whole held-out documents, loss by position.

Example: longrange eval runs/xl --split test
         longrange eval runs/mem --set knn.memory_size=8192      # memory ablation
The result is printed first, then written as strict JSON to RUN/eval-SPLIT.json, or with settings that change
the result (--set, --data, --docs, --segment-len, --precision) to RUN/eval-SPLIT-<hash of the settings>.json,
so an ablation never replaces the baseline; --output PATH names the file. A run folder that cannot be written
gives a warning, not an error; an --output that cannot be written is an error (exit 2; checked before the
evaluation, and a write that fails after it still prints the result first). The corpus is compared with the one
the run was trained on (corpus.json): a changed corpus is an error unless --allow-corpus-change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import torch

from longrange.commands.train import parse_overrides
from longrange.data.corpus import Corpus, PreparedCorpus, corpus_change, load_corpus, read_corpus_record
from longrange.data.tokenized_corpus import TokenizedCorpus
from longrange.data.tokenizer import load_run_tokenizer
from longrange.eval.evaluate import check_result, evaluate
from longrange.model.io import load
from longrange.runtime import add_runtime_options, resolve_device, resolve_precision
from longrange.train.run_folder import write_run_file

log = logging.getLogger(__name__)


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run or checkpoint directory")
    parser.add_argument("--data", default=None, help="corpus (default: the one the run was trained on)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--docs", type=_at_least(1), default=None, help="evaluate only the first N (>= 1) documents")
    parser.add_argument("--batch-size", type=_at_least(1), default=4)
    parser.add_argument("--segment-len", type=_at_least(1), default=None, help="default: the model's")
    parser.add_argument(
        "--set", "--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (e.g. memory)"
    )
    add_runtime_options(parser)
    parser.add_argument("--threads", type=_at_least(1), default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--output",
        "--out",
        dest="output",
        type=Path,
        default=None,
        help="JSON file (default: RUN/eval-SPLIT[-SETTINGS].json)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--allow-corpus-change",
        action="store_true",
        help="evaluate although the corpus differs from the one the run was trained on (a warning)",
    )
    parser.add_argument(
        "--allow-worse-than-uniform",
        action="store_true",
        help="report a result worse than a uniform guess (text unlike the training data) instead of refusing it",
    )


def corpus_of_run(run: Path, data: str | None, *, allow_change: bool = True) -> Corpus | PreparedCorpus:
    """The corpus to evaluate `run` on: `data`, or the one recorded in RUN/corpus.json.

    When it is the run's own corpus, its content hash is compared with the recorded one: a change (files
    added or edited move documents between splits) is a warning with `allow_change`, else a ValueError.
    """
    recorded = read_corpus_record(run) or {}
    if data is None:
        data = recorded.get("spec")
    corpus = load_corpus(data)
    if recorded and str(data or "stdlib") == str(recorded.get("spec")):
        change = corpus_change(recorded, corpus)
        if change and not allow_change:
            raise ValueError(f"{change}; pass --allow-corpus-change to evaluate anyway")
        if change:
            log.warning("warning: %s", change)
    return corpus


def settings_of(args: argparse.Namespace, precision: str) -> dict:
    """The options that change the result (not where or how fast it is computed); `precision` as decided."""
    settings = {
        "set": sorted(args.set),
        "data": args.data,
        "docs": args.docs,
        "segment_len": args.segment_len,
        "precision": None if precision == "fp32" else precision,
    }
    return {k: v for k, v in settings.items() if v}


def default_output(run: Path, split: str, settings: dict) -> Path:
    if not settings:
        return run / f"eval-{split}.json"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return run / f"eval-{split}-{digest}.json"


def check_output(path: Path | None) -> None:
    """Refuse (OSError, one line) an --output that cannot be written, before the evaluation is spent on it."""
    if path is None:
        return
    folder = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"--output {str(path)!r} is a directory; name a file")
    if not folder.is_dir():
        raise FileNotFoundError(f"--output {str(path)!r}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"--output {str(path)!r} cannot be written (permission denied)")


def run(args: argparse.Namespace) -> int:
    check_output(args.output)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = corpus_of_run(args.run, args.data, allow_change=args.allow_corpus_change)
    documents = TokenizedCorpus(corpus, load_run_tokenizer(args.run)).held_out(args.split)  # the run's tokenizer
    documents = documents[: args.docs]
    model = load(args.run, **parse_overrides(args.set)).to(device)
    precision = resolve_precision(args.precision, device, model.config)  # auto: by this device and model
    result = evaluate(
        model,
        documents,
        batch_size=args.batch_size,
        segment_len=args.segment_len,
        device=device,
        precision=precision,
        compile=args.compile,
        progress=not args.no_progress,
    )
    check_result(result, model.config.vocab_size, allow_worse_than_uniform=args.allow_worse_than_uniform)
    settings = settings_of(args, precision)
    out = args.output or default_output(args.run, args.split, settings)
    line = f"{args.split}: {result['bpb']:.4f} bits per byte over {result['bytes']:,} bytes"
    if result["tokens"] != result["bytes"]:  # a subword tokenizer: the papers' per-token perplexity too
        line += f" ({result['tokens']:,} tokens, perplexity {result['perplexity']:.2f} per token)"
    print(line, flush=True)
    try:
        text = json.dumps({**result, "split": args.split, "settings": settings}, indent=1, allow_nan=False)
        if args.output is None:  # the run folder's own name: written without following a link planted there
            write_run_file(out, text)
        else:
            out.write_text(text)
    except OSError as err:  # the result is already printed: a read-only run folder loses only the file
        if args.output is not None:  # ... but a file the user named is what was asked for: its loss is an error
            print(f"longrange eval: error: could not write --output {out}: {err.strerror or err}", file=sys.stderr)
            return 2
        print(f"longrange eval: warning: could not write {out}: {err.strerror or err}", file=sys.stderr)
        return 0
    print(f"-> {out}")
    return 0
