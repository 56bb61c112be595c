"""Reformer generation: decode caches vs recomputing the whole sequence for every new token.

Greedy decoding from an untrained preset model (the cost does not depend on the weights). For
each prompt length: milliseconds per new token with `longrange.generate.generate` (prompt read in
one pass, then one token at a time through the LSH/local decode caches: the median time between
successive single-token calls) and with a plain loop
that re-runs the model over prompt + generated tokens for every token; their ratio; and whether
both produced the same tokens (they must: the caches are exact).

    python benchmarks/generate_reformer.py --preset reformer-tiny --lengths 1024,4096,16384 --new 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import longrange
from longrange.generate import carries_state, generate


def recompute(model, prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="reformer-tiny")
    parser.add_argument("--lengths", default="512,2048", help="prompt lengths, comma-separated")
    parser.add_argument("--new", type=int, default=32, help="new tokens per measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name(args.preset)).eval()
    if not carries_state(model):
        raise SystemExit(f"{args.preset} keeps no decode caches (lsh.n_buckets null?); nothing to compare")
    rows = []
    print("| prompt | cached ms/token | recompute ms/token | speed-up | same tokens |")
    print("| ---: | ---: | ---: | ---: | :---: |")
    for length in (int(x) for x in args.lengths.split(",")):
        prompt = torch.randint(0, 256, (length,)).tolist()
        stamps: list[float] = []  # time of every model call: the prompt pass, then one per new token
        hook = model.embed.register_forward_pre_hook(lambda m, a, s=stamps: s.append(time.perf_counter()))
        cached = generate(model, prompt, args.new + 1, temperature=0, segment_len=length + args.new)[: args.new]
        hook.remove()
        steps = torch.tensor(stamps[1:]).diff()  # one cached step (forward + sampling) each
        t_cached = float(steps.median()) * 1e3
        start = time.perf_counter()
        plain = recompute(model, prompt, args.new)
        t_plain = (time.perf_counter() - start) / args.new * 1e3
        row = dict(prompt=length, cached_ms=t_cached, recompute_ms=t_plain, same=cached == plain)
        rows.append(row)
        print(f"| {length} | {t_cached:.1f} | {t_plain:.1f} | {t_plain / t_cached:.1f}x | {cached == plain} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"preset": args.preset, "new_tokens": args.new, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
