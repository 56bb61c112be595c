"""Position encodings the attention mechanisms use: sinusoids (XL relative distances), rotary tables, T5 bias.

Absolute embeddings added to the token embeddings live above, in `model/positions.py`, and build on `sinusoid`
from here, so imports run one way (model -> attention).
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


class _ShiftRows(torch.autograd.Function):
    """The relative-position shift as a view, with a backward that writes the gradient once.

    Slicing's own backward would allocate a zero tensor the size of the whole (T, L + 1) input, then copy the
    gradient into all but its first T entries: a pass over (B, H, T, L) memory that the copy alone makes moot.
    """

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:
        *lead, t, width = rows.shape
        ctx.t = t
        return rows.view(*lead, width, t)[..., 1:, :].view(*lead, t, width - 1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        *lead, t, n_keys = grad.shape
        flat = torch.cat([grad.new_zeros(*lead, ctx.t), grad.reshape(*lead, t * n_keys)], dim=-1)
        return flat.view(*lead, t, n_keys + 1)


def shift_rows(rows: Tensor) -> Tensor:
    """rows (..., T, L + 1), column c of row i for distance L - c -> (..., T, L) with out[i, j] = rows[i, j + T - i]
    (distance P + i - j, P = L - T) wherever j <= P + i; entries of future keys hold values of the next row.

    The shift of the Transformer-XL paper's appendix B with no padding copy: the (T, L + 1) rows are read as
    (L + 1, T) and the first T entries dropped (the extra distance column plays the padding's part). A view.
    """
    return _ShiftRows.apply(rows)


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

    def shifted(self, n_prev: int, t: int, device: torch.device) -> Tensor:
        """The bias (H, T, L) of the T queries of a segment after P earlier slots over keys [earlier ; segment]
        (L = P + T): equal to ``self(relative_distance(P, T))`` on every key a query may attend to (j <= P + i);
        future keys hold arbitrary finite values that the causal mask removes.

        Looking up a (T, L) table of buckets costs an embedding backward that scatters T * L rows (it was 6% of a
        memorizing training step); here the L + 1 distances L, L - 1, ..., 0 are looked up once, repeated
        over the T rows and shifted into place (`shift_rows`). Backward is a sum over the T rows and an embedding
        backward of L + 1 rows.
        """
        n_keys = n_prev + t
        distance = torch.arange(n_keys, -1, -1, device=device)  # column c holds distance L - c
        by_distance = self.bias(self.bucket(distance)).t()  # (H, L + 1)
        h = by_distance.shape[0]
        rows = by_distance[:, None, :].expand(h, t, n_keys + 1).contiguous()  # (H, T, L + 1)
        return shift_rows(rows)  # out[i, j] = rows[i, j + T - i]: distance L - (j + T - i) = (P + i) - j
