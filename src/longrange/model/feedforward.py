"""Position-wise feed-forward and the generic chunked apply (feed-forward and LM head use it)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def apply_chunked(fn: Callable[..., Tensor], chunks: int, dim: int, *inputs: Tensor) -> Tensor:
    """Apply a position-wise `fn` to `chunks` slices of `inputs` along `dim` and concatenate.

    Equal to ``fn(*inputs)`` for any position-wise `fn`; it bounds the size of the intermediate
    activations (e.g. the (B, T, 4D) hidden layer of the feed-forward) to 1/chunks of the whole.
    """
    if chunks <= 1 or inputs[0].shape[dim] <= 1:
        return fn(*inputs)
    pieces = zip(*(x.chunk(chunks, dim=dim) for x in inputs), strict=True)
    return torch.cat([fn(*piece) for piece in pieces], dim=dim)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact (erf)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # Hugging Face's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,
}


class FeedForward(nn.Module):
    """Linear -> activation (GELU by default) -> dropout -> Linear, optionally applied in `chunks` along time."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, chunks: int = 1, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"ff_activation={activation!r} is not allowed; choose one of {sorted(ACTIVATIONS)}")
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.dropout, self.chunks, self.activation = dropout, chunks, ACTIVATIONS[activation]

    def position_wise(self, x: Tensor) -> Tensor:
        return self.down(F.dropout(self.activation(self.up(x)), self.dropout, self.training))

    def forward(self, x: Tensor) -> Tensor:
        return apply_chunked(self.position_wise, self.chunks, 1, x)
