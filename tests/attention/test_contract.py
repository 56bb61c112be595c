"""Contract tests parametrised over the attention registry (every mechanism, with full attention as oracle)."""

import pytest
import torch

from longrange.attention import REGISTRY
from longrange.config import ModelConfig
from longrange.model.build import build_attention

D, H, B, T = 32, 2, 2, 16
KINDS = sorted(REGISTRY)


def _attention_config(kind: str) -> ModelConfig:
    cfg = ModelConfig(d_model=D, n_heads=H, layers=[kind], segment_len=T)
    for section, key, value in [
        ("xl", "mem_len", T),
        ("compressive", "mem_len", 8),
        ("compressive", "cmem_len", 8),
        ("knn", "mem_len", T),
        ("knn", "memory_size", 64),
        ("knn", "topk", 4),
        ("lsh", "bucket_size", 4),
        ("lsh", "n_buckets", 2),
        ("local", "chunk_len", 4),
        ("luna", "proj_len", 4),
    ]:
        if hasattr(getattr(cfg, section), key):
            setattr(getattr(cfg, section), key, value)
    return cfg


def _attention(kind: str, causal: bool = True):
    return build_attention(_attention_config(kind), kind, layer_index=0, causal=causal).eval()


def _run(attn, x, state):
    return attn(x, state=state, doc_start=None)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_no_nan_and_gradients_reach_input_and_parameters(kind):
    attn = _attention(kind).train()
    x = torch.randn(B, T, D, requires_grad=True)
    state = attn.init_state(B, x.device, x.dtype)
    if attn.stateful:  # fill the memories first, so every memory path is exercised
        state = attn(torch.randn(B, T, D), state=state, doc_start=None).state.detach()
    out = attn(x, state=state, doc_start=None)
    assert out.out.shape == (B, T, D)
    assert torch.isfinite(out.out).all()
    loss = out.out.square().mean() + (out.aux_loss if out.aux_loss is not None else 0)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient for {name}"


@pytest.mark.parametrize("kind", KINDS)
def test_causal_future_tokens_change_no_past_output(kind):
    attn = _attention(kind)
    torch.manual_seed(1)
    x = torch.randn(B, T, D)
    y = x.clone()
    y[:, T // 2 :] = torch.randn(B, T - T // 2, D)
    # a fresh state per call: an external store (kNN) is written by every forward
    a, b = (_run(attn, z, attn.init_state(B, z.device, z.dtype)).out for z in (x, y))
    torch.testing.assert_close(a[:, : T // 2], b[:, : T // 2], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, T // 2 :], b[:, T // 2 :])


@pytest.mark.parametrize("kind", KINDS)
def test_no_state_equals_fresh_state(kind):
    attn = _attention(kind)
    x = torch.randn(B, T, D)
    fresh = _run(attn, x, attn.init_state(B, x.device, x.dtype)).out
    torch.testing.assert_close(_run(attn, x, None).out, fresh, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", [k for k in KINDS if REGISTRY[k].stateful])
def test_stateful_memory_is_used_and_reset_rows_forget_it(kind):
    attn = _attention(kind)
    first, second = torch.randn(2, B, T, D)

    def after_first():  # rebuilt per use: an external store (kNN) is written by every forward
        return _run(attn, first, attn.init_state(B, first.device, first.dtype)).state

    with_memory = _run(attn, second, after_first()).out
    fresh = _run(attn, second, None).out
    assert not torch.allclose(with_memory, fresh), "the memory of the previous segment is not used"
    where = torch.tensor([True, False])
    reset = _run(attn, second, after_first().reset(where)).out
    torch.testing.assert_close(reset[0], fresh[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(reset[1], with_memory[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", [k for k in KINDS if not REGISTRY[k].causal_only])
def test_bidirectional_form_sees_the_future(kind):
    attn = _attention(kind, causal=False)
    x = torch.randn(B, T, D)
    y = x.clone()
    y[:, 1:] = torch.randn(B, T - 1, D)  # every later token changes
    assert not torch.allclose(_run(attn, x, None).out[:, 0], _run(attn, y, None).out[:, 0])


@pytest.mark.parametrize("kind", [k for k in KINDS if REGISTRY[k].causal_only])
def test_causal_only_mechanisms_refuse_bidirectional_use(kind):
    with pytest.raises(ValueError, match="causal only"):
        _attention(kind, causal=False)(torch.randn(B, T, D), state=None, doc_start=None)


@pytest.mark.parametrize("kind", [k for k in KINDS if REGISTRY[k].stateful])
def test_stateful_causality_holds_in_a_segment_that_reads_memory(kind):
    attn = _attention(kind)
    first, x = torch.randn(2, B, T, D)
    y = x.clone()
    y[:, T // 2 :] = torch.randn(B, T - T // 2, D)

    def after_first():
        return _run(attn, first, attn.init_state(B, first.device, first.dtype)).state

    a, b = (_run(attn, z, after_first()).out for z in (x, y))
    torch.testing.assert_close(a[:, : T // 2], b[:, : T // 2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", [k for k in KINDS if REGISTRY[k].stateful])
def test_model_doc_start_rows_begin_with_an_empty_memory(kind):
    """`LongRangeLM` resets the `doc_start` rows of every memory (external stores included)."""
    from longrange.model.build import build_model

    cfg = _attention_config(kind)
    model = build_model(cfg).eval()
    first, second = torch.randint(0, 256, (2, B, T))
    with torch.no_grad():
        state = model(first, state=model.init_state(B)).state
        out = model(second, state=state, doc_start=torch.tensor([True, False])).logits
        fresh = model(second).logits
        state = model(first, state=model.init_state(B)).state
        carried = model(second, state=state).logits
    torch.testing.assert_close(out[0], fresh[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], carried[1], rtol=0, atol=1e-5)
    assert not torch.allclose(carried[0], fresh[0])


@pytest.mark.parametrize("kind", [k for k in KINDS if getattr(REGISTRY[k], "decode_cache", False)])
def test_decode_cache_streaming_equals_one_pass(kind):
    """Prefix in one call, then one token at a time through the cache == the whole input at once."""
    attn = _attention(kind)
    x = torch.randn(B, T, D)
    whole = _run(attn, x, None).out
    cut = T // 2
    state = attn.init_state(B, x.device, x.dtype)
    result = _run(attn, x[:, :cut], state)
    outs, state = [result.out], result.state
    for t in range(cut, T):
        result = _run(attn, x[:, t : t + 1], state)
        outs.append(result.out)
        state = result.state
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-4, atol=1e-5)
