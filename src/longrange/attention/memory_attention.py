"""Attention over [memory ; segment], the part the XL, Compressive and kNN layers share.

Shape legend: B batch, T tokens of the segment, M memory slots (for the Compressive layer: compressed and plain
memory together), L = M + T keys, D model width, H heads, E head width.

Each of the three layers reads queries from the segment and keys/values from [memory ; segment] (`project`),
masks memory slots that hold no state (after a document reset, or padding stored as invalid) and is causal within
the segment (`memory_segment_mask`), and scores positions by the distance (M + i) - j of query i to key j. XL and
Compressive add the Transformer-XL relative position term and the content bias u; kNN a T5 bias
(`positions.T5RelativeBias.shifted`). The layers run the fast forms: the position term for the L + 1 distances,
shifted into place (`shifted_position_scores`), and the attention built explicitly in place
(`explicit_attention`, `explicit_relative_attention`). The plain forms they are tested against are kept here:
the position term gathered per (query, key) distance (`RelativePositionScores.forward`, `relative_distance`) and
``F.scaled_dot_product_attention`` with the terms as its mask (`relative_attention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import split_heads
from longrange.attention.positions import shift_rows, sinusoid


def project(q_proj: nn.Module, kv_proj: nn.Module, x: Tensor, memory: Tensor, n_heads: int):
    """Queries of the segment x (B, T, D) and keys/values of [memory (B, M, D) ; x]:
    q (B, H, T, E), k and v (B, H, L, E). ``kv_proj`` maps D to 2D (keys then values).

    Memory and segment are projected separately and the projections joined: projecting ``cat([memory, x])``
    would make backward compute the input gradient of the memory rows too (a (M x 2D) @ (2D x D) product per
    layer), only to drop it, since the memory is detached.
    """
    q = split_heads(q_proj(x), n_heads)
    kv = kv_proj(x) if memory.shape[1] == 0 else torch.cat([kv_proj(memory), kv_proj(x)], dim=1)
    k, v = (split_heads(z, n_heads) for z in kv.chunk(2, dim=-1))
    return q, k, v


def relative_distance(n_mem: int, t: int, device: torch.device) -> Tensor:
    """(T, M + T) int64: distance (M + i) - j from query i of the segment to key j of [memory ; segment]
    (negative for future keys, which the causal mask removes)."""
    return (n_mem + torch.arange(t, device=device))[:, None] - torch.arange(n_mem + t, device=device)


def memory_segment_mask(
    valid: Tensor | None, n_mem: int, t: int, device: torch.device, pad_mask: Tensor | None = None
) -> Tensor:
    """Boolean mask (B or 1, 1, T, M+T), True = may attend: every valid memory slot, causal within segment.

    ``valid`` (B, M) bool marks memory slots that hold real states (False after a document reset);
    ``pad_mask`` (B, T) bool (True = real) hides padded keys of the segment.
    """
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    if n_mem == 0:
        mask = causal.view(1, 1, t, t)
    else:
        mem = torch.ones(1, 1, t, n_mem, dtype=torch.bool, device=device)
        if valid is not None:
            mem = valid[:, None, None, :].expand(-1, 1, t, n_mem)
        mask = torch.cat([mem, causal.view(1, 1, t, t).expand(mem.shape[0], 1, t, t)], dim=-1)
    if pad_mask is not None:
        mask = mask & torch.cat([valid, pad_mask], dim=1)[:, None, None, :]
    return mask


class RelativePositionScores(nn.Module):
    """The position term (q + v) . W_R R[i - j] of XL attention, for a segment after a memory."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_model = n_heads, d_model
        self.r_proj = nn.Linear(d_model, d_model, bias=False)  # W_R
        self.v_bias = nn.Parameter(torch.zeros(n_heads, d_model // n_heads))  # v

    def forward(self, q: Tensor, n_mem: int) -> Tensor:
        """q (B, H, T, E) -> scores (B, H, T, M+T) for keys [memory ; segment], unscaled."""
        b, h, t, e = q.shape
        n_keys = n_mem + t
        rel = sinusoid(torch.arange(n_keys, device=q.device), self.d_model).to(q.dtype)  # (L, D), distance d
        r = self.r_proj(rel).view(n_keys, h, e).permute(1, 2, 0)  # (H, E, L)
        by_distance = (q + self.v_bias[:, None, :]) @ r  # (B, H, T, L): score of query i at distance d
        # key j sits at distance d = (M + i) - j from query i; future keys (d < 0) are masked later
        index = relative_distance(n_mem, t, q.device).clamp(min=0).expand(b, h, t, n_keys)
        return by_distance.gather(-1, index)


def relative_attention(
    q: Tensor, k: Tensor, v: Tensor, rel_scores: Tensor, mask: Tensor, u_bias: Tensor, dropout: float
) -> Tensor:
    """Softmax attention with content bias u and additive relative scores.

    q (B, H, T, E), k/v (B, H, L, E), rel_scores (B, H, T, L) unscaled, mask (B|1, 1, T, L) bool.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    bias = (rel_scores * scale).masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q + u_bias[:, None, :], k, v, attn_mask=bias, dropout_p=dropout)


def shifted_position_scores(rel: RelativePositionScores, q: Tensor, n_prev: int, scale: float = 1.0) -> Tensor:
    """The XL position term (q + v) . W_R R[i - j] for keys [previous slots ; segment], times ``scale``
    (B, H, T, L); the scale is applied to q + v (B, H, T, E), not to the L times larger scores.

    Equal to ``rel(q, n_prev)`` (`RelativePositionScores`, the same parameters) on every key a query may attend
    to; entries of future keys (j > P + i) hold arbitrary finite values that the causal mask removes. Instead of
    gathering each query's distances (an index tensor, and a scatter-add over (B, H, T, L) backward), the scores
    are computed for the L + 1 distances L, L - 1, ..., 0 and shifted into place (`positions.shift_rows`).
    """
    _, h, t, e = q.shape
    n_keys = n_prev + t
    distance = torch.arange(n_keys, -1, -1, device=q.device)  # column c holds distance L - c
    r = rel.r_proj(sinusoid(distance, rel.d_model).to(q.dtype)).view(n_keys + 1, h, e).permute(1, 2, 0)  # (H, E, L+1)
    q_v = q + rel.v_bias[:, None, :]
    by_distance = (q_v * scale if scale != 1.0 else q_v) @ r  # (B, H, T, L + 1)
    # out[i, j] = by_distance[i, j + T - i], i.e. distance L - (j + T - i) = (P + i) - j, for every j <= P + i
    return shift_rows(by_distance)


def explicit_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    position: Tensor,
    mask: Tensor,
    dropout: float,
    training: bool,
    scale: float,
    position_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Softmax attention with an additive position term, computed explicitly: (out (B, H, T, E), weights (B, H, T, L)
    before dropout).

    q (B, H, T, E), k/v (B, H, L, E), ``position`` (B|1, H, T, L), mask (B|1, 1, T, L) bool; scores are
    ``scale`` q.k + ``position_scale`` position.
    ``F.scaled_dot_product_attention`` with a bias that needs a gradient falls back on CPU to its math path, which
    copies and checks the (B, H, T, L) scores several times; here the scores are built once and edited in place
    (content + position, mask bias), which is faster, and the weights come for free (most-used compression and the
    attention analysis read them). Masked keys get the dtype's lowest finite value rather than -inf: equal
    weights (exactly 0) wherever a query may attend to some key, and finite ones (uniform, not NaN) for a query that
    may attend to none (a padded query whose memory is empty), whose output no loss reads.
    """
    scores = (q * scale if scale != 1.0 else q) @ k.transpose(-1, -2)  # (B, H, T, L)
    # the mask as an additive bias: (B|1, 1, T, L), H times smaller than the scores, and its backward is free
    bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    bias.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    weights = scores.add_(position, alpha=position_scale).add_(bias).softmax(-1)
    dropped = F.dropout(weights, dropout) if training and dropout > 0 else weights
    return dropped @ v, weights


def explicit_relative_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    mask: Tensor,
    u_bias: Tensor,
    dropout: float,
    training: bool,
    rel_scaled: bool = False,
) -> tuple[Tensor, Tensor]:
    """XL attention computed explicitly (`explicit_attention`): the same function as `relative_attention`, with
    the content bias u and the relative scores ``rel`` (B, H, T, L), unscaled or, with ``rel_scaled``, already
    times 1/sqrt(E) (`shifted_position_scores(..., scale)`: scaling there saves a pass over the scores in
    backward); returns (out, weights)."""
    scale = q.shape[-1] ** -0.5
    rel_scale = 1.0 if rel_scaled else scale
    return explicit_attention(q + u_bias[:, None, :], k, v, rel, mask, dropout, training, scale, rel_scale)
