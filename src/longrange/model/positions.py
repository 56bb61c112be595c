"""Position encodings: sinusoidal (absolute and XL relative), learned, rotary.

Absolute encodings are added to the token embeddings by the model (`AbsolutePositions`);
relative ones live inside the attention mechanisms that use them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings (Vaswani et al.) of float/int `positions` (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AbsolutePositions(nn.Module):
    """Absolute positions added to embeddings: ``sinusoidal`` or ``learned`` (table of `max_len`)."""

    def __init__(self, kind: str, d_model: int, max_len: int):
        super().__init__()
        self.kind, self.d_model, self.max_len = kind, d_model, max_len
        if kind == "learned":
            self.table = nn.Embedding(max_len, d_model)
            nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        """positions (B, T) int64 -> (B, T, D)"""
        if int(positions.max()) >= self.max_len and self.kind != "sinusoidal":
            raise ValueError(f"position {int(positions.max())} is beyond max_len={self.max_len}; raise max_len")
        if self.kind == "sinusoidal":
            return sinusoid(positions, self.d_model)
        return self.table(positions)


def rotary_tables(positions: Tensor, dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos, sin tables (T, dim/2) for rotary embedding (Su et al. 2021) at integer `positions` (T,)."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float()[:, None] * inv
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x1, x2) of the head dim of x (..., T, E) by position-dependent angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)
