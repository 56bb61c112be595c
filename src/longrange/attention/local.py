"""Chunked local attention, which the Reformer interleaves with its LSH layers.

Shape legend: B batch, T tokens (padded to Tp, a multiple of C), C chunk length, N = Tp / C chunks,
W = C * (before + 1 + after) keys per chunk, H heads, E head width, D model width.

Each chunk of C positions attends to itself and to `chunks_before` previous (and, bidirectionally,
`chunks_after` following) chunks; causal masking by position; padding (internal or the user's
`pad_mask`) is never attended. Memory O(T * W) instead of O(T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput, merge_heads, split_heads


def look_around(x: Tensor, before: int, after: int, fill: float | bool) -> Tensor:
    """x (B, H, N, C, ...) -> (B, H, N, C * (before + 1 + after), ...): each chunk with its neighbours."""
    padded = F.pad(x.movedim(2, -1), [before, after], value=fill).movedim(-1, 2)  # pad the chunk axis
    n = x.shape[2]
    return torch.cat([padded[:, :, i : i + n] for i in range(before + 1 + after)], dim=3)


class LocalAttention(AttentionModule):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        causal: bool,
        layer_index: int,
        chunk_len: int,
        chunks_before: int,
        chunks_after: int,
    ):
        super().__init__()
        if chunk_len < 1 or chunks_before < 0 or chunks_after < 0:
            raise ValueError("local.chunk_len must be >= 1 and local.chunks_before/after >= 0")
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.chunk_len, self.before, self.after = chunk_len, chunks_before, 0 if causal else chunks_after
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        b, t, d = x.shape
        c = self.chunk_len
        tp = -(-t // c) * c
        real = torch.zeros(b, tp, dtype=torch.bool, device=x.device)
        real[:, :t] = True if pad_mask is None else pad_mask
        x = F.pad(x, (0, 0, 0, tp - t))
        q, k, v = (split_heads(z, self.n_heads) for z in self.qkv(x).chunk(3, -1))  # (B, H, Tp, E)
        n, e = tp // c, q.shape[-1]
        q, k, v = (z.view(b, self.n_heads, n, c, e) for z in (q, k, v))  # (B, H, N, C, E)
        k, v = (look_around(z, self.before, self.after, 0.0) for z in (k, v))  # (B, H, N, W, E)
        pos = torch.arange(tp, device=x.device).view(1, 1, n, c)
        key_pos = look_around(pos[..., None], self.before, self.after, -1)[..., 0]  # (1, 1, N, W), -1 = outside
        key_real = look_around(real.view(b, 1, n, c, 1), self.before, self.after, False)[..., 0]  # (B, 1, N, W)
        mask = key_real[:, :, :, None, :] & (key_pos[:, :, :, None, :] >= 0)  # (B, 1, N, C, W)
        if self.causal:
            mask = mask & (key_pos[:, :, :, None, :] <= pos[..., None])
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.nan_to_num(0.0).reshape(b, self.n_heads, tp, e)[:, :, :t]  # padded queries with no keys -> 0
        return AttentionOutput(self.out(merge_heads(y)), None)
