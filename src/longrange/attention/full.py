"""Exact softmax attention through `scaled_dot_product_attention`: the baseline and the test oracle.

Shape legend: B batch, T tokens, D model width, H heads, E head width.
Stateless: every segment is attended on its own (the vanilla Transformer baseline of the papers).

``shared_qk``: the Reformer's shared-QK full attention (Kitaev et al. 2020, section 2): one projection gives the
queries, the keys are those queries normalised to unit length, and a token attends to itself only when no other
target is visible (its score lowered by 1e5, the LSH layer's constant), so it is LSH attention with one bucket and
one chunk, computed exactly. `longrange repro reformer-ablations` compares it with separate Q and K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import SELF_SCORE, AttentionModule, AttentionOutput, merge_heads, split_heads
from longrange.attention.positions import apply_rotary, rotary_tables


@dataclass
class FullConfig:
    """Exact softmax attention (SDPA): the baseline and the test oracle."""

    rotary: bool = True  # rotary position embedding on q/k (positions restart every segment)
    shared_qk: bool = False  # Reformer's shared-QK: keys = unit-norm queries, a token attends to itself last

    def flops(self, d_model: int, segment_len: int) -> float:
        """Training FLOPs per token (`longrange.bench.mfu`): causal, K = (T + 1) / 2 keys on average (nanoGPT
        counts K = T, which doubles this term); ``12 d K`` for the scores and the weighted sum of values."""
        return 12 * d_model * (segment_len + 1) / 2


class FullAttention(AttentionModule):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        causal: bool,
        layer_index: int,
        rotary: bool,
        shared_qk: bool = False,
    ):
        super().__init__()
        self.n_heads, self.causal, self.dropout, self.rotary, self.shared_qk = (
            n_heads,
            causal,
            dropout,
            rotary,
            shared_qk,
        )
        if shared_qk:  # the LSH layer's names, so its weights load here (and back)
            self.qk = nn.Linear(d_model, d_model, bias=False)
            self.v = nn.Linear(d_model, d_model, bias=False)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        if self.shared_qk:
            q, v = split_heads(self.qk(x), self.n_heads), split_heads(self.v(x), self.n_heads)  # (B, H, T, E)
            k = q
        else:
            q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, E)
        if self.rotary:
            cos, sin = rotary_tables(torch.arange(x.shape[1], device=x.device), q.shape[-1])
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask = None
        if pad_mask is not None:
            mask = pad_mask[:, None, None, :]  # (B, 1, 1, T): padded keys are never attended
            if self.causal:
                mask = mask & torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
        if self.shared_qk:
            k = F.normalize(k, dim=-1)  # a rotation keeps the norm: normalising after rotary is the same
            t = x.shape[1]
            visible = torch.ones(t, t, dtype=torch.bool, device=x.device)
            visible = visible.tril() if self.causal else visible
            if mask is not None:
                visible = visible & mask
            # (T, T) or (B, 1, T, T) additive bias: hidden keys -inf, its own key SELF_SCORE (a last resort)
            self_bias = torch.eye(t, dtype=q.dtype, device=x.device) * SELF_SCORE
            mask = self_bias.masked_fill(~visible, float("-inf"))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=self.causal and mask is None,  # shared_qk always passes its mask
            dropout_p=self.dropout if self.training else 0.0,
        )
        return AttentionOutput(self.out(merge_heads(y)), None)
