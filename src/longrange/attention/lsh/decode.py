"""Cached (streaming) form of the causal LSH attention of `longrange.attention.lsh.layer`.

Shape legend: B batch, H heads, L cached items, T new tokens, Q queries of one block, N = L + T
keys (cache then segment, in time order), R hash rounds, E head width.

The causal LSH layer is exact: in round r a query sees the keys of its own bucket among the C items
before it in (round, bucket, position) order, i.e. the last <= C earlier keys of its bucket, plus
itself at score -1e5 (a last resort). In evaluation the rotations are fixed by ``hash_seed`` and the
bucket count is fixed (``lsh.n_buckets``), so a key's buckets never change once computed. The cache
therefore keeps every past (unit-norm key, value, buckets per round, valid) and a new query:

1. scores every earlier key once (q . k / sqrt(E), shared by the rounds);
2. per round, keeps the keys of its bucket that are among the last C earlier ones of that bucket
   (a reversed running count, no loop over cached tokens), its own key at -1e5, the rest masked;
3. subtracts log(number of rounds the pair shares a bucket) when ``dedup`` is on;
4. merges the rounds with weights softmax(logsumexp of each round), as the one pass does.

Cost per new token O(L * (E + R)) instead of re-running the whole sequence; the cache grows by one
item per token (LSH can look arbitrarily far back, so nothing can be evicted).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longrange.attention.lsh.scores import MASKED, SELF_SCORE

BLOCK_ELEMENTS = 2**24  # (B x H x R x Q x N) mask elements per query block


def cached_lsh_attention(
    q: Tensor,
    q_buckets: Tensor,
    keys: Tensor,
    values: Tensor,
    key_buckets: Tensor,
    key_valid: Tensor,
    *,
    chunk: int,
    dedup: bool,
) -> Tensor:
    """Outputs (B, H, T, E) of T new queries against [cache ; segment].

    q (B, H, T, E) raw shared query/key vectors; q_buckets (B, H, T, R); keys (B, H, N, E) unit-norm,
    values (B, H, N, E), key_buckets (B, H, N, R) and key_valid (B, N) for N = L + T items, the
    last T of which are the new tokens themselves (query i is item L + i).
    """
    b, h, t, e = q.shape
    n, r = keys.shape[2], q_buckets.shape[-1]
    first = n - t  # item index of the first new token
    block = max(1, BLOCK_ELEMENTS // max(1, b * h * r * n))
    outs = []
    for s in range(0, t, block):  # query blocks bound the (B, H, R, Q, N) masks
        stop = min(t, s + block)
        m = first + stop  # items after the block's last query are never visible to it
        q_item = torch.arange(first + s, first + stop, device=q.device)[:, None]  # (Q, 1)
        k_item = torch.arange(m, device=q.device)[None, :]  # (1, M)
        earlier = key_valid[:, None, None, None, :m] & (k_item < q_item)  # (B, 1, 1, Q, M)
        same = key_buckets[:, :, None, :m, :] == q_buckets[:, :, s:stop, None, :]  # (B, H, Q, M, R)
        in_bucket = same.permute(0, 1, 4, 2, 3) & earlier  # (B, H, R, Q, M)
        count = in_bucket.int().cumsum(-1)  # earlier keys of the bucket up to and including each key
        visible = in_bucket & (count > count[..., -1:] - chunk)  # the last <= C of them
        scores = (q[:, :, s:stop] @ keys[:, :, :m].transpose(-1, -2)) * e**-0.5  # (B, H, Q, M)
        scores = scores[:, :, None].masked_fill(~visible, MASKED).masked_fill(k_item == q_item, SELF_SCORE)
        if dedup and r > 1:
            # the log count in the scores' dtype (float32 would cost a float64 layer 1e-8 against the one pass)
            scores = scores - same.sum(-1).clamp(min=1).to(scores.dtype).log()[:, :, None]
        lse = scores.logsumexp(-1, keepdim=True)  # (B, H, R, Q, 1)
        weights = ((scores - lse).exp() * lse.softmax(dim=2)).sum(2)  # rounds merged: (B, H, Q, M)
        outs.append(weights @ values[:, :, :m])
    return torch.cat(outs, 2)
