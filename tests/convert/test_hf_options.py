"""The config options added for Hugging Face Reformer checkpoints, on their own (no transformers needed)."""

import pytest
import torch

import longrange
from longrange.attention.lsh import LSHAttention
from longrange.config import ConfigError
from tests.model.gradients import loss_and_grads as _grads

HF_STYLE = {
    "layers": ["local", "lsh", "local"],
    "segment_len": 64,
    "reversible_readout": "concat",
    "head_bias": True,
    "ff_activation": "relu",
    "norm_eps": 1e-12,
    "axial_dims": [24, 40],
    "lsh.convention": "hf",
    "lsh.dedup": False,
    "lsh.n_buckets": [2, 4],
}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_concat_readout_reversible_equals_plain_twin(dropout):
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name("reformer-tiny", dropout=dropout, **HF_STYLE))
    assert model.norm.normalized_shape == (128,) and model.head.bias is not None
    tokens = torch.randint(0, 256, (2, 64))
    loss_rev, grads_rev = _grads(model, tokens, seed=5)  # dropout + fresh rotations (hash_seed None)
    model.reversible_backward = False
    loss_plain, grads_plain = _grads(model, tokens, seed=5)
    torch.testing.assert_close(loss_rev, loss_plain, rtol=0, atol=0)
    for name, grad in grads_plain.items():
        scale = grad.abs().max().clamp(min=1e-8)
        assert (grads_rev[name] - grad).abs().max() / scale <= 1e-5, name


def test_hf_options_round_trip_through_a_checkpoint(tmp_path):
    model = longrange.build_model(
        longrange.ModelConfig.from_name("reformer-tiny", **HF_STYLE, **{"lsh.hash_seed": 7})
    ).eval()
    longrange.save(model, tmp_path / "ckpt")
    again = longrange.load(tmp_path / "ckpt").eval()
    assert again.config.lsh.n_buckets == [2, 4] and again.config.reversible_readout == "concat"
    tokens = torch.randint(0, 256, (1, 48))
    with torch.no_grad():
        torch.testing.assert_close(again(tokens).logits, model(tokens).logits)


def test_hf_lsh_output_has_no_gradient_from_later_positions():
    """The paper's window (no same-bucket restriction) masks keys by position: no later key contributes.

    (Which earlier keys share a chunk still depends on where later tokens hash; the gradient path does not.)
    """
    torch.manual_seed(0)
    attn = LSHAttention(32, 2, 0.0, True, 0, 2, 4, [2, 4], 1, 0, False, 3, convention="hf").eval()
    x = torch.randn(1, 32, 32, requires_grad=True)
    out = attn(x).out
    assert torch.isfinite(out).all()
    for t in (0, 5, 17):
        (grad,) = torch.autograd.grad(out[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1 :].abs().max() == 0 and grad[:, : t + 1].abs().max() > 0


def test_bucket_list_in_the_default_convention_hashes_to_the_product():
    attn = LSHAttention(32, 2, 0.0, True, 0, 2, 4, [2, 4], 1, 0, True, 0).eval()
    qk = torch.randn(1, 2, 32, 16)
    buckets = attn.hash(qk, attn.buckets_for(32))
    assert attn.buckets_for(32) == 8 and buckets.min() >= 0 and buckets.max() < 8 and buckets.unique().numel() > 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_buckets": [2, 3]}, "even"),
        ({"convention": "hf", "dedup": True}, "dedup"),
        ({"convention": "hf", "n_buckets": 1}, "even number of buckets"),
        ({"convention": "trax"}, "convention"),
    ],
)
def test_lsh_refuses_bad_settings(kwargs, message):
    args = dict(n_hashes=2, bucket_size=4, n_buckets=4, chunks_before=1, chunks_after=0, dedup=False, hash_seed=0)
    with pytest.raises(ValueError, match=message):
        LSHAttention(32, 2, 0.0, True, 0, **{**args, **kwargs})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reversible": False, "reversible_readout": "concat"}, "needs reversible"),
        ({"reversible_readout": "concat", "tie_embeddings": True}, "tie_embeddings"),
        ({"axial_dims": [10, 10]}, "axial_dims"),
        ({"ff_activation": "tanh"}, "ff_activation"),
    ],
)
def test_config_refuses_inconsistent_options(overrides, message):
    with pytest.raises(ConfigError, match=message):
        longrange.ModelConfig.from_name("reformer-tiny", **overrides)
