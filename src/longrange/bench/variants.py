"""Attention variants the benchmarks time: name -> builder(d_model, n_heads, causal) -> (module, run).

``run(module, x)`` performs the forward pass the way a user would on a sequence x (B, L, D) and
returns the output; mechanisms add their own entries here (one line each).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from longrange.attention.full import FullAttention
from longrange.attention.xl import XLAttention

XL_SEGMENT = 512  # XL reads a long sequence in segments of this length, memory of the same length


def _one_pass(module: nn.Module, x: Tensor) -> Tensor:
    return module(x, state=None, doc_start=None).out


def _segments(segment: int) -> Callable[[nn.Module, Tensor], Tensor]:
    """Run a stateful mechanism segment by segment over x, carrying (detached) state."""

    def run(module: nn.Module, x: Tensor) -> Tensor:
        state, outs = module.init_state(x.shape[0], x.device, x.dtype), []
        for start in range(0, x.shape[1], segment):
            out = module(x[:, start : start + segment], state=state, doc_start=None)
            state = out.state.detach()
            outs.append(out.out)
        return torch.cat(outs, dim=1)

    return run


Builder = Callable[[int, int, bool], tuple[nn.Module, Callable[[nn.Module, Tensor], Tensor]]]

VARIANTS: dict[str, Builder] = {
    "full": lambda d, h, causal: (FullAttention(d, h, 0.0, causal, 0, rotary=False), _one_pass),
    "xl": lambda d, h, causal: (XLAttention(d, h, 0.0, True, 0, mem_len=XL_SEGMENT), _segments(XL_SEGMENT)),
}
