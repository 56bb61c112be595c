"""Reformer LSH and local attention against exact shared-QK attention."""

import pytest
import torch
import torch.nn.functional as F

from longrange.attention.local import LocalAttention
from longrange.attention.lsh import SELF_SCORE, LSHAttention

D, H = 32, 2


def _lsh(n_hashes=1, bucket_size=64, n_buckets=None, causal=True, dedup=True, seed=0):
    torch.manual_seed(0)
    return LSHAttention(
        D,
        H,
        0.0,
        causal,
        0,
        n_hashes=n_hashes,
        bucket_size=bucket_size,
        n_buckets=n_buckets,
        chunks_before=1,
        chunks_after=1,
        dedup=dedup,
        hash_seed=seed,
    ).eval()


def exact_shared_qk(attn: LSHAttention, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Full attention with the Reformer's shared QK: unit-norm keys, self only as a last resort."""
    b, t, _ = x.shape
    qk = attn.qk(x).view(b, t, H, D // H).transpose(1, 2)
    v = attn.v(x).view(b, t, H, D // H).transpose(1, 2)
    scores = qk @ F.normalize(qk, dim=-1).transpose(-1, -2) * (D // H) ** -0.5
    if causal:
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    scores = scores.masked_fill(torch.eye(t, dtype=torch.bool), SELF_SCORE)
    return attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, D))


@pytest.mark.parametrize("causal", [True, False])
def test_one_bucket_and_one_chunk_equals_exact_shared_qk_attention(causal):
    attn = _lsh(bucket_size=64, n_buckets=1, causal=causal)
    x = torch.randn(2, 40, D)  # padded internally to one chunk of 64
    torch.testing.assert_close(
        attn(x, state=None, doc_start=None).out, exact_shared_qk(attn, x, causal), rtol=1e-5, atol=1e-5
    )


def test_more_hash_rounds_approach_full_attention():
    x = torch.randn(4, 128, D)
    errors = []
    for n_hashes in (1, 2, 4, 8):
        attn = _lsh(n_hashes=n_hashes, bucket_size=16, n_buckets=4)
        with torch.no_grad():
            exact = exact_shared_qk(attn, x)
            errors.append((attn(x, state=None, doc_start=None).out - exact).square().mean().item())
    assert errors[-1] < errors[0] and errors[2] < errors[0], errors


def test_future_tokens_change_no_past_output_even_through_the_hashing():
    attn = _lsh(n_hashes=2, bucket_size=8, n_buckets=4)
    x = torch.randn(2, 64, D)
    for _ in range(5):
        y = x.clone()
        y[:, 40:] = torch.randn(2, 24, D)
        a, b = attn(x, state=None, doc_start=None).out, attn(y, state=None, doc_start=None).out
        torch.testing.assert_close(a[:, :40], b[:, :40], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["lsh", "local"])
def test_padding_and_roll_by_a_chunk_leave_real_outputs_unchanged(kind):
    attn = (
        _lsh(n_hashes=2, bucket_size=8, n_buckets=4)
        if kind == "lsh"
        else LocalAttention(D, H, 0.0, True, 0, chunk_len=8, chunks_before=1, chunks_after=0)
    )
    x = torch.randn(1, 30, D)
    base = attn(x, state=None, doc_start=None).out
    padded = torch.cat([x, torch.randn(1, 10, D)], 1)  # user padding at the end
    mask = torch.arange(40)[None] < 30
    torch.testing.assert_close(
        attn(padded, state=None, doc_start=None, pad_mask=mask).out[:, :30], base, rtol=1e-5, atol=1e-5
    )
    if kind == "local":  # a chunk of padding in front shifts every chunk by one: same outputs
        front = torch.cat([torch.randn(1, 8, D), x], 1)
        front_mask = torch.arange(38)[None] >= 8
        torch.testing.assert_close(
            attn(front, state=None, doc_start=None, pad_mask=front_mask).out[:, 8:], base, rtol=1e-5, atol=1e-5
        )


def test_local_attention_with_a_window_covering_everything_equals_full_causal_attention():
    attn = LocalAttention(D, H, 0.0, True, 0, chunk_len=16, chunks_before=1, chunks_after=0)
    x = torch.randn(2, 16, D)
    q, k, v = (z.view(2, 16, H, D // H).transpose(1, 2) for z in attn.qkv(x).chunk(3, -1))
    expected = attn.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 16, D))
    torch.testing.assert_close(attn(x, state=None, doc_start=None).out, expected, rtol=1e-5, atol=1e-5)


def test_rotations_are_fixed_by_the_seed_in_evaluation_and_fresh_in_training():
    attn = _lsh(n_hashes=2, bucket_size=8, n_buckets=8, seed=3)
    x = torch.randn(1, 64, D)
    assert torch.equal(attn(x, state=None, doc_start=None).out, attn(x, state=None, doc_start=None).out)
    attn.train()
    assert not torch.equal(attn(x, state=None, doc_start=None).out, attn(x, state=None, doc_start=None).out)


def test_lsh_gradient_check_on_a_tiny_double_shape():
    attn = (
        LSHAttention(
            8,
            2,
            0.0,
            True,
            0,
            n_hashes=2,
            bucket_size=4,
            n_buckets=2,
            chunks_before=1,
            chunks_after=0,
            dedup=True,
            hash_seed=1,
        )
        .double()
        .eval()
    )
    x = torch.randn(1, 12, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: attn(z, state=None, doc_start=None).out, (x,))
