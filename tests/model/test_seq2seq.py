"""Seq2Seq: Luna's recurrent greedy decoding equals recomputing the whole prefix; the encoder sees the whole input."""

import pytest
import torch

from longrange.config import ModelConfig
from longrange.model.seq2seq import Seq2Seq
from longrange.tasks.transduction import BOS, EOS, IGNORE, exact_match, transduction_batch


def _model(kind: str) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=11,
        d_model=32,
        n_heads=2,
        layers=[kind] * 2,
        positions="sinusoidal",
        max_len=64,
        luna={"proj_len": 4, "chunk_len": 4},
    )
    return Seq2Seq(cfg).double().eval()


def _greedy_by_recomputation(model: Seq2Seq, source, mask, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = torch.full((source.shape[0], 1), BOS)
    logits = []
    for _ in range(steps):
        step_logits = model(source, prefix, mask)[:, -1]
        logits.append(step_logits)
        prefix = torch.cat([prefix, step_logits.argmax(-1, keepdim=True)], 1)
    return prefix[:, 1:], torch.stack(logits, 1)


def test_recurrent_greedy_decode_equals_full_recomputation():
    model = _model("luna")
    source, mask, _, _ = transduction_batch(
        "reverse", 3, 3, 12, 8, torch.Generator(torch.get_default_device()).manual_seed(0)
    )
    memory = model.encode(source, mask)
    states = [layer.attention.init_state(3, memory.device, memory.dtype) for layer in model.decoder]
    assert all(s is not None for s in states)  # the Luna decoder carries prefix sums, not the prefix
    expected_tokens, expected_logits = _greedy_by_recomputation(model, source, mask, 13)
    token, logits = torch.full((3, 1), BOS), []
    for t in range(13):  # the recurrent path, step by step, to compare the logits too
        step_logits, states = model.decode(token, memory, mask, states, offset=t)
        logits.append(step_logits[:, -1])
        token = step_logits[:, -1:].argmax(-1)
    torch.testing.assert_close(torch.stack(logits, 1), expected_logits, atol=1e-10, rtol=1e-10)
    assert torch.equal(model.greedy(source, mask, BOS, 13), expected_tokens)


def test_full_attention_greedy_recomputes_and_matches():
    model = _model("full")
    source, mask, _, _ = transduction_batch(
        "sort", 2, 3, 10, 8, torch.Generator(torch.get_default_device()).manual_seed(1)
    )
    assert torch.equal(model.greedy(source, mask, BOS, 11), _greedy_by_recomputation(model, source, mask, 11)[0])


@pytest.mark.parametrize("kind", ["luna", "full"])
def test_padding_of_the_source_changes_nothing_and_every_source_token_matters(kind):
    model = _model(kind)
    source, mask, target_in, _ = transduction_batch(
        "reverse", 2, 5, 5, 8, torch.Generator(torch.get_default_device()).manual_seed(2)
    )
    padded = torch.cat([source, torch.zeros(2, 4, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(model(padded, target_in, padded_mask), model(source, target_in, mask))
    changed = source.clone()
    changed[:, 0] = 3 + (changed[:, 0] - 3 + 1) % 8  # the first source symbol reaches the first output
    assert not torch.allclose(model(changed, target_in, mask)[:, 0], model(source, target_in, mask)[:, 0])


def test_transduction_targets():
    source, mask, target_in, target_out = transduction_batch(
        "reverse", 4, 1, 6, 5, torch.Generator(torch.get_default_device()).manual_seed(3)
    )
    for row in range(4):
        n = int(mask[row].sum())
        assert target_out[row, :n].tolist() == source[row, :n].flip(0).tolist()
        assert target_out[row, n] == EOS and (target_out[row, n + 1 :] == IGNORE).all()
        assert target_in[row, 0] == BOS and target_in[row, 1 : n + 1].tolist() == target_out[row, :n].tolist()
    assert exact_match(target_out.clamp(min=0), target_out).all()
    source, mask, _, target_out = transduction_batch(
        "sort", 4, 1, 6, 5, torch.Generator(torch.get_default_device()).manual_seed(4)
    )
    for row in range(4):
        n = int(mask[row].sum())
        assert target_out[row, :n].tolist() == sorted(source[row, :n].tolist())
    with pytest.raises(ValueError, match="task"):
        transduction_batch("copy", 1, 1, 2, 3, torch.Generator(torch.get_default_device()))
