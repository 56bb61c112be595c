"""ListOps: labels checked by an independent evaluator; deterministic; encoded with padding."""

import torch

from longrange.tasks.listops import PAD, SYMBOLS, encode, make_listops


def _evaluate_with_a_stack(symbols: list[str]) -> int:
    """An independent evaluator: a shift-reduce stack machine over the flat symbol list."""
    stack: list = []
    for s in symbols:
        if s == "]":
            args = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())
            op = stack.pop()
            args.sort()
            value = {"[MAX": args[-1], "[MIN": args[0], "[MED": args[(len(args) - 1) // 2], "[SM": sum(args) % 10}[op]
            stack.append(value)
        elif s.startswith("["):
            stack.append(s)
        else:
            stack.append(int(s))
    assert len(stack) == 1
    return stack[0]


def test_labels_agree_with_an_independent_evaluator():
    examples = make_listops(300, max_len=300, max_depth=6, seed=3)
    assert all(_evaluate_with_a_stack(symbols) == label for symbols, label in examples)
    assert len({label for _, label in examples}) == 10  # every class occurs


def test_deterministic_and_lengths_within_bounds():
    a = make_listops(50, min_len=20, max_len=200, seed=7)
    assert a == make_listops(50, min_len=20, max_len=200, seed=7)
    assert all(20 <= len(symbols) <= 200 for symbols, _ in a)
    long = make_listops(3, min_len=1000, max_len=2000, seed=0)
    assert all(1000 <= len(symbols) <= 2000 for symbols, _ in long)


def test_encoding_pads_and_masks():
    examples = make_listops(4, max_len=60, seed=1)
    tokens, mask, labels = encode(examples, 64)
    assert tokens.shape == (4, 64) and labels.shape == (4,)
    assert torch.equal(mask, tokens != PAD)
    assert mask.sum(1).tolist() == [len(s) for s, _ in examples]
    assert max(tokens.flatten()) < len(SYMBOLS)
