"""Transformer-XL: segment recurrence equals one pass; FIFO memory; relative positions."""

import torch

import longrange
from longrange.attention.xl import XLAttention


def _xl_model(mem_len: int):
    return longrange.build_model(
        longrange.ModelConfig.from_name("transformer-xl-tiny", **{"xl.mem_len": mem_len})
    ).eval()


def test_segments_with_memory_covering_everything_equal_one_pass():
    model = _xl_model(mem_len=96)
    tokens = torch.randint(0, 256, (2, 96))
    one_pass = model(tokens).logits
    state, pieces = model.init_state(2), []
    for start in range(0, 96, 24):
        out = model(tokens[:, start : start + 24], state=state)
        state = out.state
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), one_pass, rtol=1e-5, atol=1e-5)


def test_short_memory_forgets_beyond_its_span():
    model = _xl_model(mem_len=8)
    tokens = torch.randint(0, 256, (1, 48))
    changed = tokens.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 256

    def last_segment(x):
        state = model.init_state(1)
        for start in range(0, 48, 16):
            out = model(x[:, start : start + 16], state=state)
            state = out.state
        return out.logits

    # two layers x 8 memory slots reach at most 16 tokens back: token 0 cannot reach segment 3
    torch.testing.assert_close(last_segment(tokens), last_segment(changed), rtol=0, atol=0)


def test_memory_is_a_fifo_of_the_newest_inputs():
    attn = XLAttention(d_model=8, n_heads=2, dropout=0.0, causal=True, layer_index=0, mem_len=5)
    state = attn.init_state(1, torch.get_default_device(), torch.float32)
    inputs = torch.arange(3 * 4 * 8, dtype=torch.float32).view(3, 1, 4, 8)
    for x in inputs:
        state = attn(x, state=state, doc_start=None).state
    expected = torch.cat(list(inputs), dim=1)[:, -5:]
    torch.testing.assert_close(state["mem"], expected)
    assert state["valid"].all()


def test_padded_tokens_never_become_memory():
    """Changing only the padded tokens of one segment leaves the next segment's output unchanged."""
    torch.manual_seed(0)
    model = _xl_model(mem_len=16)
    first, second = torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))
    pad_mask = torch.ones(2, 8, dtype=torch.bool)
    pad_mask[0, 5:] = False  # row 0 ends its first segment with 3 padding tokens
    other_padding = first.clone()
    other_padding[0, 5:] = (first[0, 5:] + 17) % 256

    def next_segment(tokens):
        state = model(tokens, state=model.init_state(2), pad_mask=pad_mask).state
        assert state.layers[0]["valid"][0, -3:].tolist() == [False] * 3 and state.layers[0]["valid"][1, -3:].all()
        return model(second, state=state).logits

    torch.testing.assert_close(next_segment(first), next_segment(other_padding), rtol=0, atol=0)


def test_t5_positions_equal_the_naive_formula_over_memory_and_segment():
    """`positions="t5"` (the Memorizing Transformer's position scheme): softmax(q.k / sqrt(E) + b[bucket(i - j)])
    over [memory ; segment], causal, with a filled memory; also equal for a model run segment by segment."""
    torch.manual_seed(0)
    d, h, t, m = 16, 2, 6, 4
    attn = XLAttention(d, h, 0.0, True, 0, mem_len=m, positions="t5").eval()
    with torch.no_grad():
        attn.rel_bias.bias.weight.normal_()  # zero at init: give the bias something to do
    x0, x1 = torch.randn(1, t, d), torch.randn(1, t, d)
    state = attn(x0, state=None).state
    out = attn(x1, state=state).out
    mem = x0[:, -m:]
    keys_in = torch.cat([mem, x1], 1)  # (1, L, D)
    q = attn.q(x1).view(1, t, h, d // h).transpose(1, 2)
    k, v = attn.kv(keys_in).chunk(2, -1)
    k, v = (z.view(1, m + t, h, d // h).transpose(1, 2) for z in (k, v))
    i = torch.arange(t)[:, None] + m  # query positions in [memory ; segment]
    j = torch.arange(m + t)[None]
    scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5 + attn.rel_bias(i - j)[None]
    scores = scores.masked_fill(j > i, float("-inf"))
    naive = attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, t, d))
    torch.testing.assert_close(out, naive, rtol=1e-5, atol=1e-5)
    model = longrange.build_model(longrange.ModelConfig.from_name("memorizing-tiny", **{"xl.positions": "t5"})).eval()
    assert any(getattr(b.attention, "positions", None) == "t5" for b in model.blocks)
