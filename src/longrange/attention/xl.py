"""Transformer-XL attention (Dai et al. 2019): segment recurrence with relative positions.

Shape legend: B batch, T tokens of the segment, M memory slots (= mem_len), L = M + T keys,
D model width, H heads, E head width.

Each layer attends over [memory ; segment], where the memory holds the layer's inputs from the
previous segments (the newest `mem_len` of them, FIFO). Scores follow the paper's decomposition

    A[i, j] = (q_i + u) . k_j  +  (q_i + v) . W_R R[i - j]

with R sinusoidal encodings of the distance and u, v learned per head; ``positions="t5"`` replaces the
position term by a learned bias per head and distance bucket (T5; the Memorizing Transformer's choice for
every layer): A[i, j] = q_i . k_j / sqrt(E) + b[bucket(i - j)]. The trainer detaches the
state between segments (the paper's stop-gradient on the memory). Memory slots carry a validity
mask so a per-row document reset empties exactly that row's memory, and padded tokens (``pad_mask``)
are stored as invalid slots, so no later segment attends to padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from longrange.attention.base import (
    AttentionModule,
    AttentionOutput,
    empty_memory,
    fifo_append,
    fifo_live,
    merge_heads,
    newest,
)
from longrange.attention.memory_attention import (
    RelativePositionScores,
    explicit_attention,
    explicit_relative_attention,
    memory_segment_mask,
    project,
    shifted_position_scores,
)
from longrange.attention.positions import T5RelativeBias
from longrange.memory.state import LayerState


@dataclass
class XLConfig:
    """Transformer-XL segment recurrence (Dai et al. 2019)."""

    mem_len: int = 256  # hidden states of the previous segments each layer attends to
    # "xl": sinusoidal relative positions with u, v biases (Dai et al.); "t5": a learned bias per head and distance
    # bucket (Raffel et al.), what the Memorizing Transformer uses in every layer (`--set xl.positions=t5`)
    positions: Literal["xl", "t5"] = "xl"

    def reach(self) -> tuple[int, str]:
        """Each XL layer lets a prediction see `mem_len` more tokens back (Dai et al. 2019: O(N x L))."""
        return self.mem_len, "mem_len"

    def flops(self, d_model: int, segment_len: int) -> float:
        """Training FLOPs per token (`longrange.bench.mfu`): K = mem_len + (T + 1) / 2 keys, plus the relative
        position scores (q + v) . R over the same keys (another ``6 d K``), plus W_R applied to the L + 1 distances
        of a segment: ``6 d^2 (L + 1) / T`` with L = mem_len + T; with ``positions: t5`` a looked-up bias replaces
        both (``12 d K`` only)."""
        d, t = d_model, segment_len
        k = self.mem_len + (t + 1) / 2
        if self.positions == "t5":
            return 12 * d * k
        return 18 * d * k + 6 * d * d * (self.mem_len + t + 1) / t


class XLAttention(AttentionModule):
    stateful = True
    causal_only = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        causal: bool,
        layer_index: int,
        mem_len: int,
        positions: str = "xl",
    ):
        super().__init__()
        if mem_len < 0:
            raise ValueError(f"xl.mem_len={mem_len} must be >= 0")
        self.positions = positions
        self.n_heads, self.causal, self.dropout, self.mem_len, self.d_model = (
            n_heads,
            causal,
            dropout,
            mem_len,
            d_model,
        )
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        if positions == "t5":
            self.rel_bias = T5RelativeBias(n_heads)
        else:
            self.u_bias = nn.Parameter(torch.zeros(n_heads, d_model // n_heads))
            self.rel = RelativePositionScores(d_model, n_heads)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        return LayerState(empty_memory(batch_size, self.mem_len, self.d_model, device, dtype), live={"mem": 0})

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        mem, valid = state["mem"].to(x.dtype), state["valid"]
        # attend to the newest n_mem slots only: older ones were never written (masked: scoring them is waste)
        t, n_mem = x.shape[1], state.live_slots("mem")
        q, k, v = project(self.q, self.kv, x, newest(mem, n_mem), self.n_heads)  # (B, H, T, E), (B, H, L, E) x 2
        mask = memory_segment_mask(newest(valid, n_mem), n_mem, t, x.device, pad_mask)
        dropout = self.dropout if self.training else 0.0
        if self.positions == "t5":
            bias = self.rel_bias.shifted(n_mem, t, x.device)[None].to(q.dtype)  # (1, H, T, L)
            y, _ = explicit_attention(q, k, v, bias, mask, dropout, self.training, q.shape[-1] ** -0.5)
        else:
            position = shifted_position_scores(self.rel, q, n_mem, q.shape[-1] ** -0.5)  # (B, H, T, L), scaled
            y, _ = explicit_relative_attention(
                q, k, v, position, mask, self.u_bias, dropout, self.training, rel_scaled=True
            )
        # padded tokens enter the memory as invalid slots: the next segment must not attend to them
        new_valid = pad_mask.bool() if pad_mask is not None else None
        new_mem, new_valid = fifo_append(mem, valid, x, self.mem_len, new_valid)
        next_state = state.replace({"mem": fifo_live(n_mem, t, self.mem_len)}, mem=new_mem, valid=new_valid)
        return AttentionOutput(self.out(merge_heads(y)), next_state)
