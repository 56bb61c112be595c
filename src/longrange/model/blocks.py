"""Residual blocks: the pre-norm block used by every mechanism.

x = x + Dropout(Attention(LayerNorm(x)))
x = x + Dropout(FeedForward(LayerNorm(x)))
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput
from longrange.model.feedforward import FeedForward


class Block(nn.Module):
    def __init__(
        self,
        attention: AttentionModule,
        d_model: int,
        d_ff: int,
        dropout: float,
        ff_chunks: int = 1,
        activation: str = "gelu",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.attention = attention
        self.ff_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.ff = FeedForward(d_model, d_ff, dropout, ff_chunks, activation)
        self.dropout = dropout

    def forward(
        self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None
    ) -> tuple[Tensor, AttentionOutput]:
        """x (B, T, D) -> (x (B, T, D), the attention's output with its next state, aux loss, carry)."""
        a = self.attention(self.attn_norm(x), state=state, doc_start=doc_start, pad_mask=pad_mask, carry=carry)
        x = x + F.dropout(a.out, self.dropout, self.training)
        x = x + F.dropout(self.ff(self.ff_norm(x)), self.dropout, self.training)
        return x, a


def run_blocks(blocks, h: Tensor, states: list, doc_start, pad_mask) -> tuple[Tensor, list, dict[str, Tensor]]:
    """Run `blocks` in order, threading each layer's state and the attention carry (Luna's P)."""
    layer_states, aux_losses, carry = [], {}, None
    for i, (block, layer_state) in enumerate(zip(blocks, states, strict=True)):
        h, a = block(h, state=layer_state, doc_start=doc_start, pad_mask=pad_mask, carry=carry)
        layer_states.append(a.state)
        carry = a.carry
        if a.aux_loss is not None:
            aux_losses[f"layer{i}/{type(block.attention).__name__}"] = a.aux_loss
    return h, layer_states, aux_losses
