"""Compression functions of the Compressive Transformer (Rae et al. 2020).

Shape legend: B batch, N evicted states, D model width, c compression rate.

``Compressor(kind, d_model, rate)(states (B, N, D), usage (B, N) | None) -> (B, N // c, D)``

- ``max`` / ``mean``: pooling over groups of c consecutive states (no parameters);
- ``conv``: 1-D convolution, kernel = stride = c (the paper's best); computed as one matrix product over
  whole groups (the same parameters as ``nn.Conv1d``, a test checks the two agree), which is faster
  on CPU than the convolution kernel;
- ``dilated_conv``: 1-D convolution with 2 taps ``c // 2`` apart and stride c: each slot mixes two
  states of its group that are half a group apart (a sparse, wider-spaced kernel at the same cost);
- ``most_used``: keep the N // c states that received the most attention (average attention weight
  while they were in memory, `usage`), in their original order (no parameters).

N must be a multiple of c: the attention layer keeps evicted states that do not yet fill a group
in a small pending buffer until they do, so no state is dropped or padded with invented data.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("max", "mean", "conv", "dilated_conv", "most_used")


class Compressor(nn.Module):
    def __init__(self, kind: str, d_model: int, rate: int):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"compressive.compression={kind!r} is not one of {list(KINDS)}")
        if rate < 1:
            raise ValueError(f"compressive.rate={rate} must be >= 1")
        self.kind, self.rate = kind, rate
        if kind == "conv":
            self.conv = nn.Conv1d(d_model, d_model, kernel_size=rate, stride=rate)
        elif kind == "dilated_conv":
            taps, dilation = (2, rate // 2) if rate >= 2 else (1, 1)
            self.conv = nn.Conv1d(d_model, d_model, kernel_size=taps, stride=rate, dilation=dilation)

    @property
    def learned(self) -> bool:
        return self.kind in ("conv", "dilated_conv")

    def forward(self, states: Tensor, usage: Tensor | None = None) -> Tensor:
        b, n, d = states.shape
        if n % self.rate:
            raise ValueError(f"{n} states cannot be compressed by rate {self.rate}; pass whole groups")
        if n == 0:
            return states
        if self.kind == "most_used":
            if usage is None:
                raise ValueError("most_used compression needs the attention each state received")
            keep = usage.topk(n // self.rate, dim=1).indices.sort(dim=1).values  # (B, N/c), original order
            return states.gather(1, keep[..., None].expand(-1, -1, d))
        if self.kind == "conv":  # kernel = stride = c: one matmul over whole groups, (B, N/c, c*D) @ (c*D, D)
            weight = self.conv.weight.permute(0, 2, 1).reshape(d, self.rate * d)  # (D_out, c*D_in), tap-major
            return F.linear(states.reshape(b, n // self.rate, self.rate * d), weight, self.conv.bias)
        x = states.transpose(1, 2)  # (B, D, N)
        if self.kind == "max":
            y = F.max_pool1d(x, self.rate)
        elif self.kind == "mean":
            y = F.avg_pool1d(x, self.rate)
        else:
            y = self.conv(x)
        return y.transpose(1, 2)  # (B, N/c, D)
