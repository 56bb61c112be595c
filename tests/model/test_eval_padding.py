"""ModelConfig.eval_pad_multiple: evaluation inputs padded (masked) to a multiple, as transformers' Reformer does."""

import pytest
import torch

import longrange
from longrange.config import ConfigError


def _model(**overrides):
    torch.manual_seed(0)
    cfg = longrange.ModelConfig.from_name("transformer-tiny", segment_len=32, **overrides)
    return longrange.build_model(cfg).eval()


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


def test_a_given_padding_mask_is_extended_and_a_chunked_head_loss_is_the_same():
    plain = _model(head_chunks=2)
    padded = _model(head_chunks=2, eval_pad_multiple=8, eval_pad_min=4)
    tokens = torch.randint(0, 256, (2, 13))
    real = torch.arange(13)[None] < torch.tensor([[13], [9]])
    targets = tokens.masked_fill(~real, -100)
    with torch.no_grad():
        a = plain(tokens, targets=targets, pad_mask=real)
        b = padded(tokens, targets=targets, pad_mask=real)
        c = padded(tokens, pad_mask=real)
    assert b.logits is None and b.state.pos.tolist() == [13, 9]  # the chunked head returns no logits
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.logits[real], plain(tokens, pad_mask=real).logits[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["training", "short", "multiple", "with state", "model with memories"])
def test_no_padding_in_training_for_short_inputs_whole_multiples_with_a_state_or_memories(case):
    preset = "transformer-xl-tiny" if case == "model with memories" else "transformer-tiny"
    torch.manual_seed(0)
    model = longrange.build_model(
        longrange.ModelConfig.from_name(preset, segment_len=32, eval_pad_multiple=8, eval_pad_min=4)
    )
    length = {"short": 4, "multiple": 16}.get(case, 13)
    model.train(case == "training")
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    state = model.init_state(1) if case == "with state" else None
    model(torch.randint(0, 256, (1, length)), state=state)
    assert calls == [length]  # memories would otherwise keep the padding


def test_bad_padding_settings_are_refused():
    with pytest.raises(ConfigError, match="pad_token"):
        longrange.ModelConfig(vocab_size=16, pad_token=16)
    with pytest.raises(ConfigError, match="eval_pad_multiple"):
        longrange.ModelConfig(eval_pad_multiple=0)
    with pytest.raises(ConfigError, match="eval_pad_min"):
        longrange.ModelConfig(eval_pad_min=-1)
