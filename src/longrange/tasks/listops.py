"""ListOps (Long Range Arena; Nangia & Bowman 2018): nested list operations over digits.

Example: ``[MAX 2 9 [MIN 4 7 ] 0 ]`` -> 9. Operators: MAX, MIN, MED (median, the lower middle
element for even counts, as in LRA's generator which takes ``int(np.median)``... we use the lower
middle to stay in integers), SM (sum modulo 10). Ten classes (the value 0..9).

Tokens (vocabulary `VOCAB`): padding 0, digits, the four opening operators, and the closing bracket;
one token per symbol, so a 2,000-token sequence is a 2,000-symbol expression.
"""

from __future__ import annotations

import random

import torch

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
SYMBOLS = ["<pad>", *[str(d) for d in range(10)], *OPERATORS, "]"]
VOCAB = {s: i for i, s in enumerate(SYMBOLS)}
PAD = 0


def _apply(op: str, values: list[int]) -> int:
    if op == "[MAX":
        return max(values)
    if op == "[MIN":
        return min(values)
    if op == "[MED":
        return sorted(values)[(len(values) - 1) // 2]
    return sum(values) % 10


class _TooLong(Exception):
    pass


def _expression(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: list[int]):
    """A random expression; raises _TooLong as soon as it would exceed the length budget."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLong
    # a leaf with probability 1 - 1 / (mean number of arguments): a critical branching process,
    # so expression lengths spread over every scale instead of exploding (the rejection stays cheap)
    leaf_p = 1.0 - 2.0 / (2 + max_args)
    if depth >= max_depth or (depth > 0 and rng.random() < leaf_p):
        d = rng.randrange(10)
        return [str(d)], d
    op = rng.choice(OPERATORS)
    symbols, values = [op], []
    for _ in range(rng.randint(2, max_args)):
        s, v = _expression(rng, depth + 1, max_depth, max_args, budget)
        symbols += s
        values.append(v)
    budget[0] -= 1  # the closing bracket
    return symbols + ["]"], _apply(op, values)


def make_listops(
    n: int, *, min_len: int = 16, max_len: int = 2000, max_depth: int = 10, max_args: int = 10, seed: int = 0
) -> list[tuple[list[str], int]]:
    """`n` (symbols, label) pairs with min_len <= len(symbols) <= max_len; deterministic by seed."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        try:
            symbols, label = _expression(rng, 0, max_depth, max_args, [max_len])
        except _TooLong:  # abandon a tree as soon as it outgrows max_len (no wasted deep recursion)
            continue
        if min_len <= len(symbols) <= max_len:
            out.append((symbols, label))
    return out


def encode(examples: list[tuple[list[str], int]], length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens (N, length) padded with PAD, pad_mask (N, length) bool, labels (N,)."""
    tokens = torch.full((len(examples), length), PAD, dtype=torch.long)
    for i, (symbols, _) in enumerate(examples):
        ids = [VOCAB[s] for s in symbols[:length]]
        tokens[i, : len(ids)] = torch.tensor(ids)
    labels = torch.tensor([label for _, label in examples])
    return tokens, tokens != PAD, labels
