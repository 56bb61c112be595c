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
        # checked on the CPU only, where reading a value is free: on an accelerator (or the meta device) it would
        # synchronise with the host in every forward pass; there the embedding lookup itself refuses the index
        if self.kind != "sinusoidal" and positions.device.type == "cpu" and int(positions.max()) >= self.max_len:
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


class T5RelativeBias(nn.Module):
    """T5-style relative position bias (Raffel et al. 2020): a learned scalar per head per distance bucket.

    Distances below ``n_buckets / 2`` get a bucket each; larger ones share log-spaced buckets up to
    ``max_distance``. Causal form: only distances >= 0 (query at or after the key).
    """

    def __init__(self, n_heads: int, n_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.n_buckets, self.max_distance = n_buckets, max_distance
        self.bias = nn.Embedding(n_buckets, n_heads)
        nn.init.zeros_(self.bias.weight)

    def bucket(self, distance: Tensor) -> Tensor:
        distance = distance.clamp(min=0)
        exact = self.n_buckets // 2
        log_bucket = (
            exact
            + (
                torch.log(distance.float().clamp(min=1) / exact)
                / math.log(self.max_distance / exact)
                * (self.n_buckets - exact)
            ).long()
        )
        return torch.where(distance < exact, distance, log_bucket.clamp(max=self.n_buckets - 1))

    def forward(self, distance: Tensor) -> Tensor:
        """distance (T, L) int64 (query position - key position) -> bias (H, T, L)."""
        return self.bias(self.bucket(distance)).permute(2, 0, 1)


class AxialPositions(nn.Module):
    """Axial position embeddings (Reformer): position p of a max_len = n_1 * n_2 grid is the
    concatenation of a row embedding (n_1 x D/2) and a column embedding (n_2 x D/2), so 64K
    positions cost (256 + 256) * D/2 parameters instead of 65536 * D.

    Position p = i * n_2 + j (row-major over the grid) gets [rows[i] ; cols[j]]: the convention of
    Hugging Face's `AxialPositionEmbeddings` (its weights (n_1, 1, d_1) and (1, n_2, d_2) broadcast to
    (n_1, n_2, d_1 + d_2) and flattened). `dims` = (d_1, d_2) sets the two widths (default D/2 each)."""

    def __init__(self, d_model: int, axial_shape: list[int], dims: list[int] | None = None):
        super().__init__()
        if len(axial_shape) != 2:
            raise ValueError(f"axial_shape={axial_shape} must have two factors")
        dims = list(dims) if dims is not None else [d_model // 2, d_model - d_model // 2]
        if len(dims) != 2 or sum(dims) != d_model:
            raise ValueError(f"axial_dims={dims} must be two widths that sum to d_model={d_model}")
        self.shape = tuple(axial_shape)
        self.rows = nn.Parameter(torch.randn(self.shape[0], dims[0]) * 0.02)
        self.cols = nn.Parameter(torch.randn(self.shape[1], dims[1]) * 0.02)

    def forward(self, positions: Tensor) -> Tensor:
        """positions (B, T) int64 -> (B, T, D)"""
        # checked where it costs no device round trip and is not traced (elsewhere an out-of-grid index fails in
        # the look-up)
        eager = not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
        if positions.device.type == "cpu" and eager and int(positions.max()) >= self.shape[0] * self.shape[1]:
            raise ValueError(f"position {int(positions.max())} is beyond the axial grid {self.shape}")
        return torch.cat([self.rows[positions // self.shape[1]], self.cols[positions % self.shape[1]]], dim=-1)
