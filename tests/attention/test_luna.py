"""Luna: chunked prefix sums == naive formula == recurrent steps; causality; equivariance; padding."""

import math

import pytest
import torch

import longrange
from longrange.attention import luna as luna_module
from longrange.attention.luna import LunaAttention
from longrange.generate import generate

D, H, L, T = 16, 2, 4, 24


def _luna(causal=True, chunk_len=5, activation="elu", share=True, proj_len=L):
    torch.manual_seed(0)
    return LunaAttention(
        D, H, 0.0, causal, 0, proj_len=proj_len, activation=activation, share_projections=share, chunk_len=chunk_len
    ).eval()


def _naive_causal(attn: LunaAttention, x: torch.Tensor) -> torch.Tensor:
    """The causal formula evaluated position by position with explicit sums (O(T^2)).

    Projections are read off the weight blocks: in_proj = [unpack query | pack key | pack values], where the
    pack values are c (keys = values, shared) or the unpack keys and the unpack values (untied).
    """
    b, t, _ = x.shape
    e, n_p = D // H, attn.proj_len
    p = attn.p_init + attn.p_pos
    pq = attn.pack_q(p).view(n_p, H, e).transpose(0, 1)  # (H, l, E)
    blocks = [(x @ w.T).view(b, t, H, e) for w in attn.in_proj.weight.split(D)]
    q, k = blocks[0], blocks[1]
    keys, values = (blocks[2], blocks[2]) if attn.share else (blocks[2], blocks[3])
    out = torch.zeros(b, t, H, e)
    for i in range(t):
        for h in range(H):
            a = attn._phi(k[:, : i + 1, h] @ pq[h].T / e**0.5)  # (B, i+1, l)
            packed_k = (a.transpose(1, 2) @ keys[:, : i + 1, h]) / a.sum(1)[..., None]  # (B, l, E)
            packed_v = (a.transpose(1, 2) @ values[:, : i + 1, h]) / a.sum(1)[..., None]  # (B, l, E)
            w = ((q[:, i, h, None, :] * packed_k).sum(-1) / e**0.5).softmax(-1)  # (B, l)
            out[:, i, h] = (w[..., None] * packed_v).sum(1)
    return attn.out(out.reshape(b, t, D))


@pytest.mark.parametrize(
    ("activation", "share", "proj_len"),
    [("elu", True, L), ("softplus", True, L), ("elu", False, L), ("elu", True, 8), ("elu", False, 8)],
)
def test_chunked_parallel_equals_naive_equals_recurrent(activation, share, proj_len):
    """proj_len 4: pack scores as x (W_k P^T) (H * l < D); proj_len 8: as (x W_k) P^T."""
    attn = _luna(activation=activation, share=share, proj_len=proj_len)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        parallel = attn(x, state=None, doc_start=None).out
        naive = _naive_causal(attn, x)
        state, steps = attn.init_state(2, x.device, x.dtype), []
        for i in range(T):
            result = attn(x[:, i : i + 1], state=state, doc_start=None)
            state = result.state
            steps.append(result.out)
    torch.testing.assert_close(parallel, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), parallel, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_chunk_length_does_not_change_the_result_or_the_gradients(share):
    x = torch.randn(1, T, D)
    results = []
    for chunk_len in (3, 8, 100):  # ragged last chunk, exact multiple, one chunk
        attn = _luna(chunk_len=chunk_len, share=share)
        attn(x, state=None, doc_start=None).out.square().sum().backward()
        results.append([attn(x, state=None, doc_start=None).out] + [p.grad for p in attn.parameters()])
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("block_tokens", [1, 8, 10])
def test_blocks_of_the_prefix_sums_do_not_change_the_result_or_the_gradients(monkeypatch, share, block_tokens):
    """The causal sums run in blocks of BLOCK_TOKENS carrying num/den: one block per chunk (1), two
    chunks (8 with chunk 3 and 4), a ragged last block (10) all equal the naive formula and one block."""
    x = torch.randn(2, T, D, requires_grad=True)
    results = []
    for block in (10_000, block_tokens):
        monkeypatch.setattr(luna_module, "BLOCK_TOKENS", block)
        attn = _luna(chunk_len=3 if block_tokens == 10 else 4, share=share)
        out = attn(x, state=None, doc_start=None).out
        out.square().sum().backward()
        results.append([out.detach(), x.grad.clone()] + [p.grad for p in attn.parameters()])
        x.grad = None
    with torch.no_grad():
        torch.testing.assert_close(results[1][0], _naive_causal(attn, x), rtol=1e-5, atol=1e-5)
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("proj_len", [L, 8])
def test_gradients_match_a_double_precision_finite_difference(proj_len):
    attn = _luna(chunk_len=4, share=False, proj_len=proj_len).double()
    x = torch.randn(1, 10, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: attn(z, state=None, doc_start=None).out, (x,))


@pytest.mark.parametrize("causal", [True, False])
def test_sharing_ties_keys_and_values_and_saves_one_projection_of_x(causal):
    shared, untied = _luna(causal=causal, share=True), _luna(causal=causal, share=False)
    assert shared.in_proj.weight.shape[0] == untied.in_proj.weight.shape[0] - D
    n_shared, n_untied = (sum(p.numel() for p in m.parameters()) for m in (shared, untied))
    assert n_untied - n_shared == (D * D if causal else 2 * D * D)


@pytest.mark.parametrize("share", [True, False])
def test_bidirectional_is_permutation_equivariant(share):
    attn = _luna(causal=False, share=share)
    x = torch.randn(2, T, D)
    perm = torch.randperm(T)
    out = attn(x, state=None, doc_start=None)
    permuted = attn(x[:, perm], state=None, doc_start=None)
    torch.testing.assert_close(permuted.out, out.out[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(permuted.carry, out.carry, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_padding_leaves_real_positions_unchanged(causal):
    attn = _luna(causal=causal, share=False)
    x = torch.randn(1, T, D)
    padded = torch.cat([x, torch.randn(1, 6, D)], 1)
    pad_mask = torch.cat([torch.ones(1, T), torch.zeros(1, 6)], 1).bool()
    real = attn(x, state=None, doc_start=None).out
    with_pad = attn(padded, state=None, doc_start=None, pad_mask=pad_mask).out[:, :T]
    torch.testing.assert_close(with_pad, real, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 7, 50])
def test_packed_sequence_has_shape_b_l_d_for_any_length(n):
    assert _luna(causal=False)(torch.randn(3, n, D), state=None, doc_start=None).carry.shape == (3, L, D)


def test_later_layers_need_the_carry():
    attn = LunaAttention(D, H, 0.0, True, 1, proj_len=L, activation="elu", share_projections=True, chunk_len=8)
    with pytest.raises(ValueError, match="carry"):
        attn(torch.randn(1, 4, D), state=None, doc_start=None)


def test_streaming_generation_equals_recomputation():
    model = longrange.build_model(longrange.ModelConfig.from_name("luna-tiny", segment_len=16)).eval()
    prompt = torch.randint(0, 256, (37,)).tolist()
    tokens = generate(model, prompt, 8, temperature=0)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0]
    assert tokens == logits[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_tiny_luna_lm_loss_falls():
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name("luna-tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text = torch.tensor(list(b"luna packs and unpacks. " * 30))
    losses = []
    for step in range(40):
        s = (step * 7) % 300
        out = model(text[s : s + 64][None], targets=text[s + 1 : s + 65][None])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


@pytest.mark.parametrize("share", [True, False])
def test_bidirectional_equals_the_reference_formula(share):
    """fairseq-apollo's LunarMultiheadAttention: Y_p = softmax(P Wpq (X Wpk)^T) X Wpv with no output projection
    of its own, out = softmax(X Wq (Y_p Wk)^T) Y_p Wv Wo, next P = LayerNorm(Y_p + P); tied: Wpk = Wpv, Wk = Wv."""
    attn = _luna(causal=False, share=share)
    torch.nn.init.normal_(attn.p_norm.weight)
    x, e = torch.randn(2, T, D), D // H
    p = attn.p_init + attn.p_pos  # (l, D)

    def heads(z):  # (B, N, D) -> (B, H, N, E)
        return z.view(z.shape[0], -1, H, e).transpose(1, 2)

    def attend(q, k, v):
        return ((heads(q) @ heads(k).transpose(-1, -2)) / e**0.5).softmax(-1) @ heads(v)

    w = attn.in_proj.weight.split(D)  # [unpack query | pack key | pack value (untied)]
    pack_k, pack_v = x @ w[1].T, x @ w[-1].T
    packed = attend(attn.pack_q(p).expand(2, -1, -1), pack_k, pack_v).transpose(1, 2).reshape(2, L, D)
    u = attn.unpack_kv.weight.split(D)  # [unpack key | unpack value (untied)]
    out = attend(x @ w[0].T, packed @ u[0].T, packed @ u[-1].T).transpose(1, 2).reshape(2, T, D)
    got = attn(x, state=None, doc_start=None)
    with torch.no_grad():
        torch.testing.assert_close(got.out, attn.out(out), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.carry, attn.p_norm(packed + p), rtol=1e-5, atol=1e-5)


def test_causal_pack_weights_are_elu_plus_one_or_the_references_softplus():
    """elu + 1 by default (the reference's first causal layer); softplus as the reference has it now, beta ln 2:
    log2(1 + 2^x), which is 1 at 0 as elu + 1 is."""
    assert longrange.ModelConfig.from_name("luna-tiny").luna.activation == "elu"
    scores = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(_luna(activation="elu")._phi(scores), torch.nn.functional.elu(scores) + 1)
    torch.testing.assert_close(_luna(activation="softplus")._phi(scores), torch.log2(1 + 2**scores))


def _reference_causal(attn: LunaAttention, x: torch.Tensor) -> torch.Tensor:
    """fairseq-apollo's causal Luna (``LunarCausalAttention``, biases zero) written from its equations, O(T^2):

        A_s[j] = softplus_{beta ln 2}(pq_j . k_s / sqrt(E)),  K_t[j] = (1 / t) sum_{s <= t} A_s[j] c_s,
        y_t = sum_j softmax_j(q_t . K_t[j] / sqrt(E)) K_t[j],  out = y W_o,

    per head, with pq = P W_pq, q = x W_q, k = x W_pk, c = x W_c (tied unpack keys and values)."""
    b, t, _ = x.shape
    e, n_p = D // H, attn.proj_len
    pq = attn.pack_q(attn.p_init + attn.p_pos).view(n_p, H, e)
    q, k, c = ((x @ w.T).view(b, t, H, e) for w in attn.in_proj.weight.split(D))
    out = torch.zeros(b, t, H, e, dtype=x.dtype)
    for i in range(t):
        for h in range(H):
            a = torch.nn.functional.softplus(k[:, : i + 1, h] @ pq[:, h].T / e**0.5, beta=math.log(2))  # (B, i+1, l)
            packed = a.transpose(1, 2) @ c[:, : i + 1, h] / (i + 1)  # (B, l, E)
            w = ((packed @ q[:, i, h, :, None]).squeeze(-1) / e**0.5).softmax(-1)  # (B, l)
            out[:, i, h] = (w[..., None] * packed).sum(1)
    return attn.out(out.reshape(b, t, D))


@pytest.mark.parametrize("chunk_len", [3, 8, 100])
def test_length_normalised_softplus_is_the_references_causal_luna_in_float64(monkeypatch, chunk_len):
    """normalize: length with activation: softplus computes the reference's function: chunked (ragged, exact,
    one chunk), in blocks of the prefix sums (BLOCK_TOKENS 8), and one token at a time from the recurrent state."""
    monkeypatch.setattr(luna_module, "BLOCK_TOKENS", 8)
    torch.manual_seed(0)
    attn = LunaAttention(
        D, H, 0.0, True, 0, L, "softplus", share_projections=True, chunk_len=chunk_len, normalize="length"
    ).double()
    for p in attn.parameters():  # weights large enough that the pack weights vary far from 1
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, T, D, dtype=torch.float64)
    with torch.no_grad():
        want = _reference_causal(attn, x)
        got = attn(x, state=None, doc_start=None).out
        state, steps = attn.init_state(2, x.device, x.dtype), []
        for i in range(T):
            result = attn(x[:, i : i + 1], state=state, doc_start=None)
            state, steps = result.state, [*steps, result.out]
        weighted = LunaAttention(D, H, 0.0, True, 0, L, "softplus", True, chunk_len).double()
        weighted.load_state_dict(attn.state_dict())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat(steps, 1), want, rtol=1e-12, atol=1e-12)
    # the default normalisation (by the sum of the weights) is another function
    assert (weighted(x, state=None, doc_start=None).out - want).abs().max() > 1e-2


@pytest.mark.parametrize("normalize", ["weights", "length"])
def test_padding_before_the_tokens_is_not_counted(normalize):
    """Left padding packs nothing and, divided by the length, does not count in t."""
    attn = LunaAttention(D, H, 0.0, True, 0, L, "elu", share_projections=False, chunk_len=5, normalize=normalize)
    x = torch.randn(1, T, D)
    padded = torch.cat([torch.randn(1, 6, D), x], 1)
    pad_mask = torch.cat([torch.zeros(1, 6), torch.ones(1, T)], 1).bool()
    with torch.no_grad():
        real = attn(x, state=None, doc_start=None).out
        with_pad = attn(padded, state=None, doc_start=None, pad_mask=pad_mask).out[:, 6:]
    torch.testing.assert_close(with_pad, real, rtol=1e-5, atol=1e-5)


def test_an_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="luna.normalize"):
        LunaAttention(D, H, 0.0, True, 0, L, "elu", True, 8, normalize="sum")
