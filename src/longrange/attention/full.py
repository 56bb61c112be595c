"""Exact softmax attention through `scaled_dot_product_attention`: the baseline and the test oracle.

Shape legend: B batch, T tokens, D model width, H heads, E head width.
Stateless: every segment is attended on its own (the vanilla Transformer baseline of the papers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput, merge_heads, split_heads
from longrange.attention.positions import apply_rotary, rotary_tables


class FullAttention(AttentionModule):
    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool, layer_index: int, rotary: bool):
        super().__init__()
        self.n_heads, self.causal, self.dropout, self.rotary = n_heads, causal, dropout, rotary
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, E)
        if self.rotary:
            cos, sin = rotary_tables(torch.arange(x.shape[1], device=x.device), q.shape[-1])
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask = None
        if pad_mask is not None:
            mask = pad_mask[:, None, None, :]  # (B, 1, 1, T): padded keys are never attended
            if self.causal:
                mask = mask & torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=self.causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return AttentionOutput(self.out(merge_heads(y)), None)
