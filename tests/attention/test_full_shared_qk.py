"""Full attention with the Reformer's shared QK (`full.shared_qk`): LSH with one bucket, computed exactly."""

import pytest
import torch

from longrange.attention.full import FullAttention
from longrange.attention.lsh import LSHAttention
from longrange.config import ModelConfig
from longrange.model.build import build_model


@pytest.mark.parametrize("causal", [True, False])
def test_shared_qk_equals_lsh_with_one_bucket_and_one_chunk(causal):
    torch.manual_seed(0)
    d, h, t = 32, 2, 24
    full = FullAttention(d, h, 0.0, causal, 0, rotary=False, shared_qk=True).double()
    lsh = LSHAttention(d, h, 0.0, causal, 0, 1, t, 1, 1, 1, dedup=True, hash_seed=0).double()
    lsh.load_state_dict(full.state_dict())  # same parameter names: qk, v, out
    full.eval(), lsh.eval()
    x = torch.randn(2, t, d, dtype=torch.float64, requires_grad=True)
    pad = torch.ones(2, t, dtype=torch.bool)
    pad[1, -5:] = False
    for pad_mask in (None, pad):
        a, b = full(x, pad_mask=pad_mask).out, lsh(x, pad_mask=pad_mask).out
        keep = pad if pad_mask is not None else pad.new_ones(pad.shape)
        torch.testing.assert_close(a[keep], b[keep], atol=1e-10, rtol=1e-10)
        (ga,) = torch.autograd.grad(a[keep].sum(), x)
        (gb,) = torch.autograd.grad(b[keep].sum(), x)
        torch.testing.assert_close(ga, gb, atol=1e-9, rtol=1e-9)


def test_a_token_attends_to_itself_only_when_nothing_else_is_visible():
    torch.manual_seed(0)
    d = 8
    attn = FullAttention(d, 1, 0.0, True, 0, rotary=False, shared_qk=True).double()
    with torch.no_grad():  # make a token's own key dominate: q = k direction, large norm
        attn.qk.weight.copy_(torch.eye(d) * 50)
    x = torch.randn(1, 2, d, dtype=torch.float64)
    v = attn.out(attn.v(x))  # (1, 2, D): each token's value, projected out
    y = attn(x).out
    torch.testing.assert_close(y[0, 0], v[0, 0])  # the first token sees only itself
    torch.testing.assert_close(y[0, 1], v[0, 0])  # the second one never picks itself while token 0 is visible


def test_shared_qk_from_the_config_has_no_key_projection():
    cfg = ModelConfig.from_name("transformer-tiny", full={"shared_qk": True})
    model = build_model(cfg)
    names = {n.split(".", 2)[-1] for n, _ in model.named_parameters() if ".attention." in n}
    assert "attention.qk.weight" in names and not any("qkv" in n for n in names)
    out = model(torch.randint(0, 256, (2, 16)))
    assert out.logits.shape == (2, 16, 256)


def test_full_attention_does_not_load_the_lsh_package():
    """The plain Transformer's attention shares only the self score with LSH, from the neutral `attention.base`."""
    import ast
    import inspect

    import longrange.attention.full as full_module

    tree = ast.parse(inspect.getsource(full_module))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "longrange.attention.base" in imported
    assert not [m for m in imported if m and m.startswith("longrange.attention.lsh")]
