"""Compression functions of the Compressive Transformer (Rae et al. 2020).

Shape legend: B batch, N evicted states, D model width, c compression rate.

``Compressor(kind, d_model, rate)(states (B, N, D), usage (B, N) | None) -> (B, N // c, D)``;
``Compressor.compress(states, valid (B, N), usage)`` also returns which slots are valid (B, N // c).

- ``max`` / ``mean``: pooling over groups of c consecutive states (no parameters);
- ``conv``: 1-D convolution, kernel = stride = c (the paper's best); computed as one matrix product over
  whole groups (the same parameters as ``nn.Conv1d``, a test checks the two agree), which is faster
  on CPU than the convolution kernel;
- ``dilated_conv``: a stack of 2-tap 1-D convolutions (WaveNet-style) with dilations 1, 2, 4, ...,
  the last one shortened so the receptive field is exactly the group (1 + sum of dilations = c, for
  any c: 3 -> 1, 1; 5 -> 1, 2, 1; 8 -> 1, 2, 4), applied to each group of c on its own: every state of
  a group reaches its slot and none of another group does (rate 1: one 1-tap layer, a linear map).
  Deliberate choices, the paper naming only "dilated convolutions": no nonlinearity between the
  layers (like ``conv``, a linear map of the group, here factored into 2-tap layers), and no state
  shared across groups (a dilated stack run over the whole sequence would mix neighbouring groups);
- ``most_used``: keep the N // c states that received the most attention (average attention weight
  while they were in memory, `usage`), in their original order (no parameters).

N must be a multiple of c: the attention layer keeps evicted states that do not yet fill a group
in a small pending buffer until they do, so no state is dropped or padded with invented data.
"""

from __future__ import annotations

import torch
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
            shapes = [(2, dilation) for dilation in dilated_stack(rate)] or [(1, 1)]  # (taps, dilation) per layer
            self.layers = nn.ModuleList(nn.Conv1d(d_model, d_model, taps, dilation=dl) for taps, dl in shapes)

    @property
    def learned(self) -> bool:
        return self.kind in ("conv", "dilated_conv")

    def compress(
        self, states: Tensor, valid: Tensor, usage: Tensor | None = None, n_groups: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(compressed (B, N/c, D), valid (B, N/c)): a slot is valid when every state it was made from was valid;
        for most-used that is the one state it keeps (selected across all N, not per group of c).

        ``n_groups`` (B,): only the last n_groups[r] * c states of row r are real; the slots in front of its
        n_groups[r] real ones are invalid fillers (rows of one batch may have different numbers of groups).
        """
        b, n, _ = states.shape
        n_slots = n // self.rate
        slot = torch.arange(n_slots, device=states.device)
        if self.kind == "most_used":
            if n_groups is None:
                keep = self._most_used(states, usage)
                return self._gather(states, keep), valid.gather(1, keep)
            # the n_groups[r] most used real states, in their original order, after n_slots - n_groups[r] fillers
            real = torch.arange(n, device=states.device) >= n - n_groups[:, None] * self.rate  # (B, N)
            rank = usage.masked_fill(~real, float("-inf")).topk(n_slots, dim=1).indices  # (B, N/c) most used first
            chosen = slot < n_groups[:, None]
            order = torch.where(chosen, rank, -1).sort(dim=1).indices  # fillers (-1) first, then document order
            keep, chosen = rank.gather(1, order), chosen.gather(1, order)
            return self._gather(states, keep), valid.gather(1, keep) & chosen
        compressed_valid = valid.reshape(b, n_slots, self.rate).all(-1)
        if n_groups is not None:
            compressed_valid = compressed_valid & (slot >= n_slots - n_groups[:, None])
        return self(states, usage), compressed_valid

    def _most_used(self, states: Tensor, usage: Tensor | None) -> Tensor:
        """Indices (B, N/c) of the states that received the most attention, in their original order."""
        b, n, _ = states.shape
        if n % self.rate:
            raise ValueError(f"{n} states cannot be compressed by rate {self.rate}; pass whole groups")
        if usage is None:
            raise ValueError("most_used compression needs the attention each state received")
        return usage.topk(n // self.rate, dim=1).indices.sort(dim=1).values

    @staticmethod
    def _gather(states: Tensor, keep: Tensor) -> Tensor:
        return states.gather(1, keep[..., None].expand(-1, -1, states.shape[-1]))

    def forward(self, states: Tensor, usage: Tensor | None = None) -> Tensor:
        b, n, d = states.shape
        if n % self.rate:
            raise ValueError(f"{n} states cannot be compressed by rate {self.rate}; pass whole groups")
        if n == 0:
            return states
        if self.kind == "most_used":
            return self._gather(states, self._most_used(states, usage))
        if self.kind == "conv":  # kernel = stride = c: one matmul over whole groups, (B, N/c, c*D) @ (c*D, D)
            weight = self.conv.weight.permute(0, 2, 1).reshape(d, self.rate * d)  # (D_out, c*D_in), tap-major
            return F.linear(states.reshape(b, n // self.rate, self.rate * d), weight, self.conv.bias)
        if self.kind == "dilated_conv":  # each group alone: (B * N/c, D, c) -> ... -> (B * N/c, D, 1)
            y = states.reshape(b * (n // self.rate), self.rate, d).transpose(1, 2)
            for layer in self.layers:  # valid (unpadded) convolutions: the length shrinks by the dilation
                y = layer(y)
            return y.view(b, n // self.rate, d)
        x = states.transpose(1, 2)  # (B, D, N)
        y = F.max_pool1d(x, self.rate) if self.kind == "max" else F.avg_pool1d(x, self.rate)
        return y.transpose(1, 2)  # (B, N/c, D)


def dilated_stack(rate: int) -> list[int]:
    """Dilations 1, 2, 4, ... of the 2-tap layers whose receptive field is exactly `rate` (1 + sum = rate)."""
    dilations, left, step = [], rate - 1, 1
    while left > 0:
        dilations.append(min(step, left))
        left -= dilations[-1]
        step *= 2
    return dilations
