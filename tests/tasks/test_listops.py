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


def test_reproduction_trains_each_model_in_its_own_process_and_writes_the_table(tmp_path):
    import argparse
    import json

    from longrange.repro import listops

    args = argparse.Namespace(
        max_len=32, train=16, test=8, steps=2, batch_size=4, d_model=16, layers=1, lr=1e-3, models="luna-16"
    )
    args.out = tmp_path
    table = listops.run(args)
    assert "| model | parameters | test accuracy | ms / step | peak MiB |" in table and "| luna-16 |" in table
    result = json.loads((tmp_path / "listops.json").read_text())["results"]["luna-16"]
    assert 0.0 <= result["accuracy"] <= 1.0 and result["step_s"] > 0 and result["peak_mib"] >= 0


def test_reproduction_refuses_an_unknown_model(tmp_path):
    import argparse

    import pytest

    from longrange.repro import listops

    with pytest.raises(ValueError, match="--models"):
        listops.run(argparse.Namespace(models="full,nope", out=tmp_path))
