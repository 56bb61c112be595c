"""The attention contract every mechanism implements (`AttentionModule`), and helpers they share.

Shape legend: B batch, T tokens of the current segment, M memory slots, D model width,
H heads, E head width (D = H * E).

Contract (see docs/architecture.md, "The attention contract"):

    forward(x (B, T, D), *, state, doc_start, pad_mask=None, carry=None) -> AttentionOutput

- ``state`` is this layer's `LayerState` (None for stateless mechanisms). The model has already
  cleared the rows in ``doc_start`` before calling; mechanisms must not reset again.
- ``pad_mask`` (B, T) bool, True for real tokens (encoders, padded batches). None: all real.
- ``carry`` is a tensor handed from one layer's attention to the next layer's (Luna's packed
  sequence P); None for every other mechanism. Returned as ``AttentionOutput.carry``.
- ``aux_loss`` is a scalar trained alongside the LM loss (the Compressive reconstruction loss).

Constructors take plain keyword arguments: ``d_model, n_heads, dropout, causal, layer_index`` and
the fields of the mechanism's config section (a dataclass in the mechanism's module). Mechanisms declare
``stateful``, ``decode_cache``, ``causal_only``, ``length_multiple`` and raise `ValueError` naming the setting to
change when asked for something they cannot do.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from longrange.memory.state import LayerState

# Shared query-key attention (Reformer; `FullConfig.shared_qk`, every LSH path): a token's score for its own key,
# so that it attends to itself only when nothing else is visible (the paper's -1e5, not -inf)
SELF_SCORE = -1e5


class AttentionOutput(NamedTuple):
    out: Tensor  # (B, T, D)
    state: LayerState | None  # next state (None for stateless mechanisms)
    aux_loss: Tensor | None = None  # scalar
    carry: Tensor | None = None  # handed to the next layer's attention (Luna's P)


class AttentionModule(nn.Module):
    """Base of every mechanism: the contract's declarations and their defaults; mechanisms override what differs."""

    stateful = False  # carries memory across training segments (XL, Compressive, kNN)
    decode_cache = False  # its state is only a cache for streaming generation (LSH/local, Luna)
    causal_only = False
    length_multiple = 1

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState | None:
        return None

    def check_input(self, x: Tensor, causal: bool) -> None:
        """Refuse what this mechanism cannot do, saying which setting to change."""
        name = type(self).__name__
        if self.causal_only and not causal:
            raise ValueError(f"{name} is causal only; use another attention kind for a bidirectional encoder")
        if x.dim() != 3:
            raise ValueError(f"{name} expects x of shape (batch, tokens, d_model), got {tuple(x.shape)}")


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, H*E) -> (B, H, T, E)"""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, E) -> (B, T, H*E)"""
    b, h, t, e = x.shape
    return x.transpose(1, 2).reshape(b, t, h * e)


def pad_to_length(x: Tensor, pad_mask: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
    """Right-pad x (B, T, D) to `length`; returns (x (B, length, D), real (B, length) bool).

    `real` marks positions that hold a real token: the user's `pad_mask` (True = real) over the first T
    positions, False for the padding added here. Chunked mechanisms pad to their chunk multiple with it.
    """
    b, t, _ = x.shape
    real = torch.zeros(b, length, dtype=torch.bool, device=x.device)
    real[:, :t] = True if pad_mask is None else pad_mask
    if length == t:  # nothing to add: x itself (padding by 0 would copy it, and its gradient)
        return x, real
    return torch.nn.functional.pad(x, (0, 0, 0, length - t)), real


def empty_memory(batch_size: int, slots: int, width: int, device, dtype) -> dict[str, Tensor]:
    """An empty FIFO memory: ``mem`` (B, M, D) zeros and ``valid`` (B, M) all False."""
    return {
        "mem": torch.zeros(batch_size, slots, width, device=device, dtype=dtype),
        "valid": torch.zeros(batch_size, slots, dtype=torch.bool, device=device),
    }


def newest(memory: Tensor, n: int) -> Tensor:
    """The newest n slots of a FIFO memory (B, M, ...) (slots are ordered oldest first): (B, n, ...)."""
    return memory[:, memory.shape[1] - n :]


def fifo_live(n_live: int, t: int, capacity: int) -> int:
    """`LayerState.live` count of a FIFO memory after `fifo_append` of t entries: its newest n_live + t slots
    may hold states, at most its `capacity`."""
    return min(capacity, n_live + t)


def zero_gradient_anchor(parameters) -> Tensor:
    """A scalar 0 that depends on `parameters`: added to an output when a shortcut skips the computation that uses
    them, so they still get the gradient 0 they would get from it (DDP and AdamW see the same parameters used)."""
    return 0.0 * sum(p.sum() for p in parameters)


def fifo_append(
    memory: Tensor, valid: Tensor, new: Tensor, capacity: int, new_valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Append `new` (B, T, ...) to a FIFO `memory` (B, M, ...) keeping the newest `capacity` slots.

    Returns (memory, valid) with ``valid`` (B, capacity) bool. Slots are ordered oldest first.
    ``new_valid`` (B, T) bool marks which new entries are real (default: all).
    """
    if new_valid is None:
        new_valid = torch.ones(new.shape[:2], dtype=torch.bool, device=new.device)
    merged = torch.cat([memory, new], dim=1)[:, -capacity:] if capacity > 0 else memory[:, :0]
    merged_valid = torch.cat([valid, new_valid], dim=1)[:, -capacity:] if capacity > 0 else valid[:, :0]
    return merged, merged_valid
