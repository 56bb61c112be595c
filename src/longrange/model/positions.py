"""Absolute position embeddings added to the token embeddings: sinusoidal, learned, axial (Reformer).

The encodings attention uses inside a layer (relative sinusoids, rotary, T5 bias) live in `attention/positions.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longrange.attention.positions import sinusoid


class AbsolutePositions(nn.Module):
    """Absolute positions added to embeddings: ``sinusoidal`` or ``learned`` (table of `max_len`).

    ``sinusoid_scale`` multiplies the sinusoids (RMS 1/sqrt 2 per element) so that they are added at the size of
    the token embeddings: in the papers (Vaswani et al. 2017; Luna's fairseq code) a token embedding of RMS 1
    (N(0, 1/d) times sqrt(d)) meets a sinusoid of RMS 1/sqrt 2. A model whose embeddings start smaller scales its
    sinusoids by the same factor (the language model: 0.02, `build_model`); unscaled, a sinusoid 35 times the
    token leaves the first layer norm mostly position, and a byte model learns far slower (0.7 bpb worse at
    luna-tiny's and transformer-tiny's budget; benchmarks/results/repro/luna-gap.md).
    """

    def __init__(self, kind: str, d_model: int, max_len: int, sinusoid_scale: float = 1.0):
        super().__init__()
        self.kind, self.d_model, self.max_len, self.sinusoid_scale = kind, d_model, max_len, sinusoid_scale
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
            return sinusoid(positions, self.d_model) * self.sinusoid_scale
        return self.table(positions)


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
