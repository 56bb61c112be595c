"""Sample from a run, streaming a (long) prompt through every memory first.

Example: longrange generate runs/xl --prompt-file notes.txt --max-new-tokens 200 --top-p 0.9 --seed 0
The prompt is echoed (unless --no-echo), then each token is printed as soon as it is sampled.
Several --prompt-file options sample every prompt at once (rows of one batch, each with its own memories; prompt
i seeded --seed + i) and print each completion after a ``==> FILE <==`` line once all are done.
Prompts are encoded and samples decoded with the run's tokenizer (RUN/tokenizer.json, else bytes).
Ctrl-C stops sampling: the text printed so far stays, and the command exits 130.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

import torch

from longrange.data.tokenizer import load_run_tokenizer
from longrange.generate import check_sampling, generate_batch, stream_generate
from longrange.model.io import load
from longrange.runtime import add_runtime_options, resolve_device

MAX_PROMPT_BYTES = 1 << 30  # a prompt file larger than this is a mistake (a device, a dump), not a prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run or checkpoint directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--prompt-file",
        type=Path,
        action="append",
        help="file whose text is the prompt; repeat it to sample several prompts at once",
    )
    source.add_argument("--prompt", default="\n", help="prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to sample (>= 0)")
    parser.add_argument("--temperature", type=float, default=1.0, help=">= 0; 0 is greedy (always the likeliest)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (>= 1)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling: probability mass in (0, 1]")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-echo", action="store_true", help="print only the sampled text, not the prompt")
    add_runtime_options(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def read_prompt(path: Path) -> bytes:
    """The bytes of a prompt file; ValueError (one line) for a directory, a missing or an oversized file."""
    if path.is_dir():
        raise ValueError(f"--prompt-file {str(path)!r} is a directory; give a text file")
    if not path.exists():
        raise FileNotFoundError(f"--prompt-file {str(path)!r} does not exist")
    with open(path, "rb") as f:  # capped, so /dev/zero or an endless pipe stops instead of exhausting memory
        data = f.read(MAX_PROMPT_BYTES + 1)
    if len(data) > MAX_PROMPT_BYTES:
        raise ValueError(f"--prompt-file {str(path)!r} is larger than {MAX_PROMPT_BYTES:,} bytes")
    return data


def run(args: argparse.Namespace) -> int:
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)  # before the model is loaded
    device = resolve_device(args.device)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_run_tokenizer(args.run)
    files = args.prompt_file or []
    prompts = [read_prompt(f) for f in files] if files else [args.prompt.encode()]
    model = load(args.run).to(device)
    options = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, precision=args.precision, compile=args.compile
    )
    if len(prompts) > 1:
        samples = generate_batch(
            model, [tokenizer.encode(p) for p in prompts], args.max_new_tokens, seed=args.seed, **options
        )
        for file, prompt, tokens in zip(files, prompts, samples, strict=True):
            sys.stdout.write(f"==> {file} <==\n")
            _write(prompt, tokens, tokenizer, echo=not args.no_echo)
        return 0
    tokens = stream_generate(model, tokenizer.encode(prompts[0]), args.max_new_tokens, seed=args.seed, **options)
    _write(prompts[0], tokens, tokenizer, echo=not args.no_echo)
    return 0


def _write(prompt: bytes, tokens, tokenizer, *, echo: bool) -> None:
    """Print the prompt (with `echo`) and each token as it comes, decoding bytes to text incrementally: a
    character split across tokens is printed once it is complete. An id the tokenizer has no bytes for (a
    converted model's head is larger than 256) prints as U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if echo:
        sys.stdout.write(prompt.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    try:
        for token in tokens:
            data = tokenizer.id_to_bytes(token)
            sys.stdout.write(decoder.decode(data) if data else "\ufffd")
            sys.stdout.flush()
    finally:  # also on Ctrl-C: what was printed stays, the line is ended (the CLI then exits 130)
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
        sys.stdout.flush()
