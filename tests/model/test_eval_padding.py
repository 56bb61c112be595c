"""ModelConfig.eval_pad_multiple: evaluation inputs padded (masked) to a multiple, as transformers' Reformer does."""

import pytest
import torch

import longrange as lr
from longrange.config import ConfigError


def _model(**overrides):
    torch.manual_seed(0)
    cfg = lr.ModelConfig.from_name("transformer-tiny", segment_len=32, **overrides)
    return lr.build_model(cfg).eval()


def test_padding_is_dropped_and_changes_no_causal_output():
    plain, padded = _model(), _model(eval_pad_multiple=8, eval_pad_min=4, pad_token=3)
    tokens = torch.randint(0, 256, (2, 13))
    calls = []
    padded.blocks[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    with torch.no_grad():
        a, b = plain(tokens, targets=tokens), padded(tokens, targets=tokens)
    assert calls == [16]  # the blocks saw 13 tokens + 3 pad tokens
    assert b.logits.shape == (2, 13, 256) and b.state.pos.tolist() == [13, 13]
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["training", "short", "multiple", "with state"])
def test_no_padding_in_training_for_short_inputs_whole_multiples_or_with_a_state(case):
    model = _model(eval_pad_multiple=8, eval_pad_min=4)
    length = {"short": 4, "multiple": 16}.get(case, 13)
    model.train(case == "training")
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    state = model.init_state(1) if case == "with state" else None
    model(torch.randint(0, 256, (1, length)), state=state)
    assert calls == [length]


def test_bad_padding_settings_are_refused():
    with pytest.raises(ConfigError, match="pad_token"):
        lr.ModelConfig(vocab_size=16, pad_token=16)
    with pytest.raises(ConfigError, match="eval_pad_multiple"):
        lr.ModelConfig(eval_pad_multiple=0)
    with pytest.raises(ConfigError, match="eval_pad_min"):
        lr.ModelConfig(eval_pad_min=-1)
