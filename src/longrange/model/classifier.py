"""`LongRangeClassifier`: a bidirectional encoder + pooling + linear head (Long Range Arena tasks).

Shape legend: B batch, T tokens, D model width, K classes.
Works with every attention kind that has a bidirectional form (full, lsh, local, luna); padding
masks keep padded positions out of attention and out of the pooled vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.config import ModelConfig
from longrange.model.blocks import run_blocks
from longrange.model.build import build_blocks, build_positions


class LongRangeClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, n_classes: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "first"):
            raise ValueError(f"pooling={pooling!r} is not one of ['mean', 'first']")
        self.config, self.pooling = cfg, pooling
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = build_positions(cfg)
        self.blocks = nn.ModuleList(build_blocks(cfg, causal=False))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, n_classes)

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """tokens (B, T), pad_mask (B, T) bool (True = real) -> logits (B, K)."""
        b, t = tokens.shape
        h = self.embed(tokens)
        if self.positions is not None:
            h = h + self.positions(torch.arange(t, device=tokens.device).expand(b, t)).to(h.dtype)
        h = F.dropout(h, self.config.dropout, self.training)
        h, _, _ = run_blocks(self.blocks, h, [None] * len(self.blocks), None, pad_mask)
        h = self.norm(h)
        if self.pooling == "first":
            return self.head(h[:, 0])
        weights = pad_mask.float() if pad_mask is not None else torch.ones(b, t, device=h.device)
        pooled = (h * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)
