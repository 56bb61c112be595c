"""Plain masked-softmax LSH attention over sorted chunks: the reference the fused kernels are tested against.

Shape legend: B batch, H heads, Tp padded tokens, R hash rounds, S = R * Tp sorted items, C chunk length,
N = S / C chunks, W = C * (before + 1 + after) keys per chunk, E head width, G (batch x head) rows of one group.

It serves attention dropout in training and every device the fused CPU kernels do not (CUDA, meta), and is their
test twin (``LSHAttention.fused = False``). The (N, C, W) score blocks are the memory: they are computed a few
heads at a time and recomputed in the backward pass (checkpointing), so only one group's blocks exist at once.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from longrange.attention.local import look_around
from longrange.attention.lsh.scores import MASKED, SELF_SCORE

GROUP_ELEMENTS = 2**24  # score-block elements (batch x head rows x S x W) computed at once


def plain_lsh_attention(
    qk: Tensor,
    v: Tensor,
    buckets: Tensor,
    round_bucket: Tensor,
    order: Tensor,
    *,
    c: int,
    window: tuple[int, int],
    causal: bool,
    dedup: bool,
    dropout: float,
) -> Tensor:
    """qk, v (B, H, Tp, E); buckets (B, H, R, Tp); round_bucket (B, H, S) (round, bucket) ids in time order;
    order (B, H, S) the sort -> out (B, H, Tp, E), the rounds merged by their logsumexp weights."""
    b, h, tp, e = qk.shape
    r = buckets.shape[2]
    n_chunks = r * tp // c
    item_pos = order % tp  # original position of each sorted item
    undo = order.argsort(dim=-1)

    def gather(z: Tensor) -> Tensor:  # (B, H, Tp, E) -> sorted chunks (B, H, N, C, E)
        return z.gather(2, item_pos[..., None].expand(-1, -1, -1, z.shape[-1])).view(b, h, -1, c, z.shape[-1])

    q_s = gather(qk)
    v_s = gather(v)
    bucket_s = round_bucket.gather(2, order).view(b, h, n_chunks, c)  # (B, H, N, C)
    by_pos = (buckets.transpose(2, 3), item_pos.view_as(bucket_s)) if dedup and r > 1 else None

    groups = max(1, min(b * h, (b * h * n_chunks * c * c * 2) // GROUP_ELEMENTS))
    outs, lses = [], []
    flat = [z.flatten(0, 1) for z in (q_s, v_s, bucket_s)]
    by_pos_flat = [z.flatten(0, 1) for z in by_pos] if by_pos is not None else None
    fn = partial(_sorted_chunk_attention, c=c, window=window, causal=causal, dropout=dropout)
    for idx in torch.arange(b * h, device=qk.device).tensor_split(groups):
        args = [z[idx] for z in flat] + ([z[idx] for z in by_pos_flat] if by_pos_flat else [None, None])
        if torch.is_grad_enabled():
            out_g, lse_g = checkpoint(fn, *args, use_reentrant=False)
        else:
            out_g, lse_g = fn(*args)
        outs.append(out_g)
        lses.append(lse_g)
    out_s = torch.cat(outs).view(b, h, n_chunks, c, e)
    lse = torch.cat(lses).view(b, h, n_chunks, c, 1)

    # unsort, then merge the rounds by their logsumexp weights
    out = out_s.view(b, h, -1, e).gather(2, undo[..., None].expand(-1, -1, -1, e))
    lse = lse.view(b, h, -1).gather(2, undo)
    out, lse = out.view(b, h, r, tp, e), lse.view(b, h, r, tp)
    return (out * lse.softmax(dim=2)[..., None]).sum(dim=2)


def _sorted_chunk_attention(
    q_s: Tensor,
    v_s: Tensor,
    bucket_s: Tensor,
    by_pos: Tensor | None,
    pos_s: Tensor | None,
    *,
    c: int,
    window: tuple[int, int],
    causal: bool,
    dropout: float,
) -> tuple[Tensor, Tensor]:
    """Attention inside sorted chunks for G (batch x head) rows.

    q_s, v_s (G, N, C, E) sorted items; bucket_s (G, N, C) their (round, bucket) ids. Keys are the
    unit-norm queries of the item's own chunk and its `window` neighbours (W keys). A key is visible
    when it is in the query's bucket and at most C items away in sorted order (and not after it when
    causal). Returns out (G, N, C, E) and the logsumexp of the scores (G, N, C, 1).
    by_pos (G, Tp, R) / pos_s (G, N, C): every round's bucket of each position, for the dedup correction.
    """
    before, after = window
    k_w = look_around(F.normalize(q_s, dim=-1)[:, None], before, after, 0.0)[:, 0]  # (G, N, W, E)
    v_w = look_around(v_s[:, None], before, after, 0.0)[:, 0]
    kb_w = look_around(bucket_s[:, None, ..., None], before, after, -1)[:, 0, ..., 0]  # (G, N, W)
    n = q_s.shape[1]
    index = torch.arange(n * c, device=q_s.device, dtype=torch.int32).view(1, n, c)  # sorted index of queries
    ki_w = look_around(index[:, None, ..., None], before, after, -1)[:, 0, ..., 0]  # (1, N, W), -1 outside
    qi, ki = index[..., None], ki_w[..., None, :]  # (1, N, C, 1), (1, N, 1, W)
    visible = (kb_w[..., None, :] == bucket_s[..., None]) & (ki >= qi - c) & (ki >= 0)
    visible = visible & (ki <= qi) if causal else visible & (ki <= qi + c)
    scores = (q_s @ k_w.transpose(-1, -2)) * q_s.shape[-1] ** -0.5  # (G, N, C, W)
    scores = scores.masked_fill(~visible, MASKED).masked_fill(ki == qi, SELF_SCORE)
    if by_pos is not None:
        pos_k = look_around(pos_s[:, None, ..., None], before, after, 0)[:, 0, ..., 0]
        scores = scores - _duplicate_log_counts(by_pos, pos_s, pos_k, scores.dtype)
    lse = scores.logsumexp(dim=-1, keepdim=True)
    weights = F.dropout((scores - lse).exp(), dropout, dropout > 0)
    return weights @ v_w, lse


def _duplicate_log_counts(by_pos: Tensor, pos_q: Tensor, pos_k: Tensor, dtype: torch.dtype) -> Tensor:
    """log(number of rounds in which query and key share a bucket), (G, N, C, W), in `dtype`.

    by_pos (G, Tp, R) buckets of each position in every round; pos_q (G, N, C), pos_k (G, N, W). The logarithm
    is taken in the scores' dtype, as the fused kernels do (in float32 a float64 layer would differ by 1e-8).
    """
    r = by_pos.shape[-1]

    def rounds_of(p: Tensor) -> Tensor:  # positions (G, ...) -> their buckets in every round (G, ..., R)
        return by_pos.gather(1, p.flatten(1)[..., None].expand(-1, -1, r)).view(*p.shape, r)

    shared = (rounds_of(pos_q)[..., :, None, :] == rounds_of(pos_k)[..., None, :, :]).sum(-1)
    return shared.clamp(min=1).to(dtype).log()
