"""LSH attention in the Hugging Face `transformers` convention (``lsh.convention: hf``).

This reproduces `LSHSelfAttention` of transformers' Reformer (itself a port of trax), so that a
converted Hugging Face checkpoint (``longrange convert hf-reformer``) gives the same logits. It
differs from the default (``longrange``) convention of `longrange.attention.lsh.layer` in these points:

* Rotations: one set per head, drawn as ``torch.randn((H, E, R, sum(K_i) / 2))`` from a generator
  seeded with ``hash_seed`` on the input's device (transformers reseeds the global RNG with
  ``torch.manual_seed(hash_seed)`` right before the same draw, so the numbers are identical; we
  leave the global RNG alone). ``hash_seed`` None: drawn from the global RNG on every call, as
  transformers does.
* Buckets: ``argmax([x Rot_i ; -x Rot_i])`` per factor of ``n_buckets`` (an int, or a list of even
  factors [K1, K2, ...] combined as ``b1 + K1 * b2 + K1 * K2 * b3 ...``); padding gets an extra bucket.
* Keys: the shared query/key vector divided by its root-mean-square (eps 1e-6) and by sqrt(E), so
  keys have unit length; scores are ``q . k`` with no further scaling.
* Window: the paper's: each sorted chunk attends to every item of itself and of ``chunks_before``
  previous / ``chunks_after`` following chunks, whatever their bucket, across hash-round boundaries,
  wrapping around circularly (the first chunk of the first round looks back at the last chunk of
  the last round). Masks by original position only: causal, padding (-1e9), and a token's own
  position (-1e5, a last resort; this also hits copies of itself from other rounds).
* A sequence no longer than one chunk skips hashing: plain shared-QK attention, one round.
* Rounds are merged with weights softmax(logsumexp of each round), as in the default convention.

Padding: for a length that is not a multiple of the chunk lengths, transformers pads the whole model
input to the least common multiple of the LSH and local chunk lengths with (masked) pad tokens; converted
models do the same at the model level (ModelConfig.eval_pad_multiple, set by the converter), so this layer
then sees whole chunks. Called on its own with another length, it pads to its own chunk length.

Shape legend: B batch, H heads, Tp padded tokens, E head width, R rounds, S = R * Tp sorted items,
C chunk length, N = S / C chunks, W = C * (before + 1 + after) keys per chunk, G batch x head rows.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from longrange.attention.lsh.hashing import product

SELF_SCORE = -1e5
MASKED = -1e9
GROUP_ELEMENTS = 2**24  # score-block elements computed at once (as in the default convention)


def rotations(n_heads: int, dim: int, n_hashes: int, n_rotations: int, seed: int | None, device, dtype) -> Tensor:
    """Random rotations (H, E, R, n_rotations), drawn exactly as transformers draws them."""
    shape = (n_heads, dim, n_hashes, n_rotations)
    if seed is None:
        return torch.randn(shape, device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=dtype)


@torch.no_grad()
def hash_buckets(qk: Tensor, factors: list[int], n_hashes: int, seed: int | None) -> Tensor:
    """qk (B, H, Tp, E) -> buckets (B, H, R, Tp) in [0, prod(factors))."""
    rot = rotations(qk.shape[1], qk.shape[-1], n_hashes, sum(factors) // 2, seed, qk.device, qk.dtype)
    rotated = torch.einsum("bhte,herk->bhrtk", qk, rot)  # (B, H, R, Tp, sum K_i / 2)
    buckets, scale, start = 0, 1, 0
    for f in factors:
        part = rotated[..., start : start + f // 2]
        buckets = buckets + scale * torch.cat([part, -part], dim=-1).argmax(dim=-1)
        scale, start = scale * f, start + f // 2
    return buckets


def unit_keys(qk: Tensor) -> Tensor:
    """Keys from shared query/key vectors: x / rms(x) / sqrt(E) (transformers' length + dim norm)."""
    return qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + 1e-6) / qk.shape[-1] ** 0.5


def look_around_circular(x: Tensor, before: int, after: int) -> Tensor:
    """x (G, N, C, ...) -> (G, N, C * (before + 1 + after), ...): chunk j with chunks j-before..j+after mod N."""
    return torch.cat([x.roll(-i, dims=1) for i in range(-before, after + 1)], dim=2)


def hf_lsh_attention(
    qk: Tensor,
    v: Tensor,
    real: Tensor,
    *,
    factors: list[int],
    n_hashes: int,
    chunk: int,
    before: int,
    after: int,
    causal: bool,
    seed: int | None,
    dropout: float,
) -> Tensor:
    """qk, v (B, H, Tp, E), real (B, Tp) bool -> attention output (B, H, Tp, E).

    Tp must be a multiple of `chunk` unless Tp <= chunk (then: plain attention, one round).
    """
    b, h, tp, e = qk.shape
    pos = torch.arange(tp, device=qk.device)
    if tp <= chunk:  # transformers' "standard self-attention": no hashing, one round
        scores = qk @ unit_keys(qk).transpose(-1, -2)  # (B, H, Tp, Tp)
        visible = real[:, None, None, :] & ((pos[None, :] <= pos[:, None]) if causal else True)
        scores = scores.masked_fill(~visible, MASKED).masked_fill(
            torch.eye(tp, dtype=torch.bool, device=qk.device), SELF_SCORE
        )
        return F.dropout(scores.softmax(-1), dropout, dropout > 0) @ v
    if tp % chunk:
        raise ValueError(f"hf LSH attention needs a length that is a multiple of bucket_size={chunk}, got {tp}")
    r, n_buckets = n_hashes, product(factors)
    buckets = hash_buckets(qk, factors, r, seed).masked_fill(~real[:, None, None, :], n_buckets)  # pad: own bucket
    rounds = torch.arange(r, device=qk.device)[:, None]
    # sort by (round, bucket, position), as transformers' stable argsort of round-offset buckets does
    order = (((rounds * (n_buckets + 1) + buckets) * tp + pos).flatten(2)).argsort(dim=-1)  # (B, H, S)
    item_pos = order % tp
    undo = order.argsort(dim=-1)

    def gather(z: Tensor) -> Tensor:  # (B, H, Tp, E) -> sorted chunks (G, N, C, E)
        return z.gather(2, item_pos[..., None].expand(-1, -1, -1, z.shape[-1])).view(b * h, -1, chunk, z.shape[-1])

    q_s, v_s = gather(qk), gather(v)
    pos_s = item_pos.view(b * h, -1, chunk)  # (G, N, C)
    real_s = real[:, None].expand(b, h, tp).gather(2, item_pos).view(b * h, -1, chunk)
    fn = partial(_chunk_attention, before=before, after=after, causal=causal, dropout=dropout)
    n_chunks = q_s.shape[1]
    groups = max(1, min(b * h, (b * h * n_chunks * chunk * chunk * (before + 1 + after)) // GROUP_ELEMENTS))
    outs, lses = [], []
    for idx in torch.arange(b * h, device=qk.device).tensor_split(groups):
        args = (q_s[idx], v_s[idx], pos_s[idx], real_s[idx])
        out_g, lse_g = checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)
        outs.append(out_g)
        lses.append(lse_g)
    out = torch.cat(outs).view(b, h, -1, e).gather(2, undo[..., None].expand(-1, -1, -1, e))  # unsort (B, H, S, E)
    lse = torch.cat(lses).view(b, h, -1).gather(2, undo)
    out, lse = out.view(b, h, r, tp, e), lse.view(b, h, r, tp)
    weights = (lse - lse.logsumexp(dim=2, keepdim=True)).exp()  # merge the rounds; this order of float
    return (out * weights[..., None]).sum(dim=2)  # operations keeps a lone token (score -1e5) equal to HF's


def _chunk_attention(
    q_s: Tensor, v_s: Tensor, pos_s: Tensor, real_s: Tensor, *, before: int, after: int, causal: bool, dropout: float
) -> tuple[Tensor, Tensor]:
    """q_s, v_s (G, N, C, E), pos_s, real_s (G, N, C) -> out (G, N, C, E), logsumexp (G, N, C, 1)."""
    k_w = look_around_circular(unit_keys(q_s), before, after)  # (G, N, W, E)
    v_w = look_around_circular(v_s, before, after)
    pos_w = look_around_circular(pos_s, before, after)[..., None, :]  # (G, N, 1, W)
    visible = look_around_circular(real_s, before, after)[..., None, :]
    if causal:
        visible = visible & (pos_w <= pos_s[..., None])
    scores = (q_s @ k_w.transpose(-1, -2)).masked_fill(~visible, MASKED)  # (G, N, C, W)
    scores = scores.masked_fill(pos_w == pos_s[..., None], SELF_SCORE)
    lse = scores.logsumexp(dim=-1, keepdim=True)
    weights = F.dropout((scores - lse).exp(), dropout, dropout > 0)
    return weights @ v_w, lse
