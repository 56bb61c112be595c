"""Luna: linear unified nested attention (Ma et al. 2021).

Shape legend: B batch, T tokens (n in the paper), l packed length (proj_len), D model width,
H heads, E head width, C chunk length of the prefix sums.

Each layer takes the input X (B, T, D) and an extra sequence P (B, l, D):
- pack: P attends to X, giving the packed context Y_p (B, l, D);
- unpack: X attends to Y_p, giving the output (B, T, D). Cost linear in T.

Bidirectional form (encoders): softmax in both attentions; the next layer's P is
P' = LayerNorm(Y_p + P), handed on as the attention ``carry``.

Causal form (language modelling): position t may pack only X[:t] (inclusive). Pack weights use a
non-negative activation phi (elu + 1 or softplus) instead of exp, so the packed context of every
position is a ratio of prefix sums,

    Y_p^t[j] = sum_{s<=t} phi(p_j . k_s) v_s  /  sum_{s<=t} phi(p_j . k_s),

and unpack is a softmax over the l packed slots of Y_p^t. Positions are processed in chunks of C:
sums inside a chunk become (C x C) and (C x l) matrix products and sums across chunks a prefix
sum over chunk totals, all chunks at once (see `causal_luna`), so neither a T x T matrix nor the
(T, l, E) packed contexts are formed: memory O(T * (C + l) * H).

Deliberate deviations, for causality and linear cost:
- In the causal form the unpack key/value projections are per head (block-diagonal, E x E), so
  the unpack scores are computed from the prefix sums directly without materialising projected
  keys per position. The bidirectional form uses full D x D projections as in the paper.
- In the causal form P is not replaced by the packed output between layers: Y_p^t differs per
  position, and feeding it on would either leak the future or break the prefix sums. Every layer
  packs with the same learned P (each through its own pack-query projection); the carry passes P on.
The first layer (``layer_index == 0``) owns the learned P and its position embedding, so no other
layer holds unused parameters (DDP requires every parameter to get a gradient).

Recurrent form: the prefix sums are a fixed-size state (numerator (B, H, l, E), denominator
(B, H, l)), so streaming generation costs O(1) per token in the sequence length and equals the
one-pass computation (``decode_cache``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput, merge_heads, split_heads
from longrange.memory.state import LayerState


class LunaAttention(AttentionModule):
    decode_cache = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        causal: bool,
        layer_index: int,
        proj_len: int,
        activation: str,
        share_projections: bool,
        chunk_len: int,
    ):
        super().__init__()
        if proj_len < 1 or chunk_len < 1:
            raise ValueError(f"luna.proj_len={proj_len} and luna.chunk_len={chunk_len} must be >= 1")
        if activation not in ("elu", "softplus"):
            raise ValueError(f"luna.activation={activation!r} is not one of ['elu', 'softplus']")
        self.n_heads, self.d_model, self.d_head = n_heads, d_model, d_model // n_heads
        self.causal, self.dropout, self.proj_len, self.chunk_len = causal, dropout, proj_len, chunk_len
        self.activation, self.share = activation, share_projections
        if layer_index == 0:  # the learned initial P and its own position embedding
            self.p_init = nn.Parameter(torch.randn(proj_len, d_model) * d_model**-0.5)
            self.p_pos = nn.Parameter(torch.randn(proj_len, d_model) * 0.02)
        self.pack_q = nn.Linear(d_model, d_model, bias=False)  # from P
        self.pack_kv = nn.Linear(d_model, 2 * d_model, bias=False)  # from X
        self.unpack_q = None if share_projections else nn.Linear(d_model, d_model, bias=False)  # from X
        if causal:  # per-head unpack key / value projections (E x E per head)
            self.unpack_k = nn.Parameter(torch.eye(self.d_head).repeat(n_heads, 1, 1))
            self.unpack_v = nn.Parameter(torch.eye(self.d_head).repeat(n_heads, 1, 1))
        else:
            self.pack_out = nn.Linear(d_model, d_model, bias=False)
            self.unpack_kv = nn.Linear(d_model, 2 * d_model, bias=False)
            self.p_norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState | None:
        if not self.causal:
            return None
        h, l, e = self.n_heads, self.proj_len, self.d_head
        return LayerState(
            {
                "num": torch.zeros(batch_size, h, l, e, device=device, dtype=torch.float32),  # sum phi(p.k) v
                "den": torch.zeros(batch_size, h, l, device=device, dtype=torch.float32),  # sum phi(p.k)
            }
        )

    def _phi(self, scores: Tensor) -> Tensor:
        return F.elu(scores) + 1.0 if self.activation == "elu" else F.softplus(scores)

    def _p(self, carry: Tensor | None, batch: int) -> Tensor:
        if carry is not None:
            return carry
        if not hasattr(self, "p_init"):
            raise ValueError("a Luna layer after the first needs the previous layer's P (carry)")
        return (self.p_init + self.p_pos).expand(batch, -1, -1)

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        b, t, _ = x.shape
        p = self._p(carry, b)  # (B, l, D)
        pq = split_heads(self.pack_q(p), self.n_heads)  # (B, H, l, E)
        k, v = (split_heads(z, self.n_heads) for z in self.pack_kv(x).chunk(2, -1))  # (B, H, T, E)
        q = split_heads((self.unpack_q or self.pack_kv)(x)[..., : self.d_model], self.n_heads)  # (B, H, T, E)
        if self.causal:
            if state is None:
                state = self.init_state(b, x.device, x.dtype)
            y, state = self._causal(q, k, v, pq, pad_mask, state)
            return AttentionOutput(self.out(merge_heads(y)), state, None, p)
        return self._bidirectional(q, k, v, pq, p, pad_mask)

    # ------------------------------------------------------------------ bidirectional
    def _bidirectional(self, q, k, v, pq, p, pad_mask) -> AttentionOutput:
        drop = self.dropout if self.training else 0.0
        mask = pad_mask[:, None, None, :] if pad_mask is not None else None  # padded tokens pack nothing
        packed = merge_heads(F.scaled_dot_product_attention(pq, k, v, attn_mask=mask, dropout_p=drop))
        packed = self.pack_out(packed)  # Y_p (B, l, D)
        uk, uv = (split_heads(z, self.n_heads) for z in self.unpack_kv(packed).chunk(2, -1))  # (B, H, l, E)
        y = F.scaled_dot_product_attention(q, uk, uv, dropout_p=drop)  # (B, H, T, E)
        return AttentionOutput(self.out(merge_heads(y)), None, None, self.p_norm(packed + p))

    # ------------------------------------------------------------------ causal
    def _causal(self, q, k, v, pq, pad_mask, state: LayerState):
        scale = self.d_head**-0.5
        a = self._phi((k @ pq.transpose(-1, -2)) * scale).float()  # (B, H, T, l) pack weights, >= 0
        if pad_mask is not None:
            a = a * pad_mask[:, None, :, None]
        uq = torch.einsum("bhte,hfe->bhtf", q, self.unpack_k).float() * scale  # q W_k^T per head: (B, H, T, E)
        y, num, den = causal_luna(uq, a, v.float(), state["num"], state["den"], self.chunk_len)
        y = torch.einsum("bhte,hef->bhtf", y.to(q.dtype), self.unpack_v)  # per-head unpack value projection
        return F.dropout(y, self.dropout, self.training), state.replace(num=num, den=den)


def causal_luna(uq: Tensor, a: Tensor, v: Tensor, num: Tensor, den: Tensor, chunk: int):
    """Causal pack + unpack by chunked prefix sums, every chunk at once (no loop over tokens or chunks).

    uq (B, H, T, E) unpack queries times W_k^T; a (B, H, T, l) pack weights; v (B, H, T, E) pack values;
    num (B, H, l, E) / den (B, H, l) sums over earlier segments. Returns y (B, H, T, E) and the new sums.

    With packed_t[j] = num_t[j] / den_t[j] and num_t[j] = num_before_chunk[j] + sum_{s<=t in chunk} a_s[j] v_s:
        score_t[j] = uq_t . packed_t[j] = ((G a)[t, j] + uq_t . num_before[j]) / den_t[j],  G = tril(uq v^T)
        y_t = sum_j w_t[j] packed_t[j] = (tril(w' a^T) v)_t + (w' num_before)_t,  w' = softmax(score) / den
    so only (C x C) and (C x l) blocks are formed, never the (T, l, E) packed contexts.
    """
    b, h, t, e = uq.shape
    n = -(-t // chunk)
    pad = n * chunk - t  # zero pack weights and values: padding packs nothing
    uq, a, v = (F.pad(z, (0, 0, 0, pad)) for z in (uq, a, v))
    uq, v = uq.view(b, h, n, chunk, e), v.view(b, h, n, chunk, e)  # (B, H, N, C, E)
    a = a.view(b, h, n, chunk, -1)  # (B, H, N, C, l)
    chunk_num = a.transpose(-1, -2) @ v  # (B, H, N, l, E) sums inside each chunk
    chunk_den = a.sum(3)  # (B, H, N, l)
    num_before = num[:, :, None] + chunk_num.cumsum(2) - chunk_num  # exclusive prefix over chunks
    den_before = den[:, :, None] + chunk_den.cumsum(2) - chunk_den
    den_t = (den_before[:, :, :, None] + a.cumsum(3)).clamp(min=1e-6)  # (B, H, N, C, l)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=a.device).tril()
    g = (uq @ v.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
    scores = (g @ a + uq @ num_before.transpose(-1, -2)) / den_t  # (B, H, N, C, l)
    w = scores.softmax(dim=-1) / den_t
    m = (w @ a.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
    y = (m @ v + w @ num_before).view(b, h, n * chunk, e)[:, :, :t]
    return y, num_before[:, :, -1] + chunk_num[:, :, -1], den_before[:, :, -1] + chunk_den[:, :, -1]
