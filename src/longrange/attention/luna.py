"""Luna: linear unified nested attention (Ma et al. 2021).

Shape legend: B batch, T tokens (n in the paper), l packed length (proj_len), D model width,
H heads, E head width, N chunks, C chunk length of the prefix sums (T padded to N * C).

Each layer takes the input X (B, T, D) and an extra sequence P (B, l, D):
- pack: P attends to X, giving the packed context Y_p (B, l, D);
- unpack: X attends to Y_p, giving the output (B, T, D). Cost linear in T.

Bidirectional form (encoders): softmax in both attentions; the next layer's P is
P' = LayerNorm(Y_p + P), handed on as the attention ``carry``. As in the reference implementation
(fairseq-apollo, ``LunarMultiheadAttention``), Y_p is the pack attention's output itself: packed
values of a projection of X, with no output projection of its own (the unpack keys / values are
projections of Y_p, and the layer's one output projection follows the unpack attention).

Causal form (language modelling): position t may pack only X[:t] (inclusive). Pack weights use a
non-negative activation phi instead of exp, so the packed context of every position is a ratio of
prefix sums,

    Y_p^t[j] = sum_{s<=t} phi(p_j . k_s) c_s  /  sum_{s<=t} phi(p_j . k_s),

and unpack is a softmax over the l packed slots of Y_p^t, whose keys and values are Y_p^t itself.
Positions are processed in chunks of C: sums inside a chunk become (C x C) and (C x l) matrix
products and sums across chunks a prefix sum over chunk totals, all chunks at once (see
`causal_luna`), so neither a T x T matrix nor the (T, l, E) packed contexts are formed:
memory O(T * (C + l) * H + (T / C) * l * D). The chunks go through `causal_luna` in blocks of
``BLOCK_TOKENS`` (a loop over blocks, carrying the sums as the recurrent form does): each block's
temporaries, and those of its backward pass, then stay cache-sized, so the cost per token does not
grow with T (figures in benchmarks/README.md, "attention/luna.py"). The chunks are laid out chunk-major (N, B, H, C, .)
so that a block is one contiguous slab and no matmul copies (and saves) its block.

Projections. Every per-token projection of X is one GEMM (``in_proj``): unpack queries, pack keys
and the pack values c (causal), or unpack queries, pack keys and pack values (bidirectional).
``share_projections`` is the paper's parameter sharing (Section 3.4, following Linformer; the
reference implementation's ``tie_kv``): each attention uses one projection for its keys and
values, so X needs one projection fewer and the layer has about a standard Transformer's
parameter count. It is on by default, as in the paper's experiments. In the causal form the pack
key projection is only ever used in the pack scores x W_k P^T, so when H * l < D (l = 16: 128 < 512)
they are computed as x (W_k P^T), a (D, H * l) matrix built per forward: the same function, with a
quarter of a (D x D) GEMM instead of a whole one (the parameters are unchanged).

Deliberate deviations, each with its reason:
- phi is elu + 1 by default: the reference's causal layer (``LunarCausalAttention``) used elu + 1 until
  it changed to softplus with beta ln 2 (phi(0) = 1), which is ``activation: softplus`` here. Both are
  positive, smooth, ~e^x for very negative scores and ~x for large ones, and train alike (ablation:
  benchmarks/results/repro/luna-gap.md); elu + 1 is the linear-attention feature map of Katharopoulos
  et al. (2020) that the paper's causal form follows.
- The causal form has no separate unpack key / value projections of Y_p^t: a projection of
  Y_p^t per head equals packing projected tokens (packing is linear), so it is folded into c's
  projection (tied keys = values, as in the reference's causal layer); untied
  (``share_projections: false``) the unpack keys and values pack two different projections of X.
  The reference normalises the causal prefix sums by t (``normalize: length``); here by default by
  the running sum of the pack weights (``normalize: weights``), so Y_p^t is a weighted mean of the c_s
  (the causal analogue of the softmax pack) and a slot whose tokens have not come yet does not read as
  a vector shrunk by 1/t. The two train alike (luna-gap.md). With ``normalize: length`` and
  ``activation: softplus`` the causal layer computes the reference's function (the reference adds
  biases to its projections; none here).
- In the causal form P is not replaced by the packed output between layers: Y_p^t differs per
  position, and feeding it on would either leak the future or break the prefix sums. Every layer
  packs with the same learned P (each through its own pack-query projection); the carry passes P on.
The first layer (``layer_index == 0``) owns the learned P and its position embedding, so no other
layer holds unused parameters (DDP requires every parameter to get a gradient).

Recurrent form: the prefix sums are a fixed-size state (numerators (B, H, l, E), denominator
(B, H, l)), so streaming generation costs O(1) per token in the sequence length and equals the
one-pass computation (``decode_cache``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput, merge_heads, split_heads
from longrange.memory.state import LayerState

BLOCK_TOKENS = 256  # tokens of the causal prefix sums computed at once


@dataclass
class LunaConfig:
    """Luna: linear unified nested attention (Ma et al. 2021)."""

    proj_len: int = 16  # l, length of the extra sequence P
    activation: Literal["elu", "softplus"] = "elu"  # non-negative pack weights of the causal form
    share_projections: bool = True  # keys = values in pack and unpack (the paper's sharing, its parameter budget)
    chunk_len: int = 32  # block of the causal prefix sums; fastest near sqrt(proj_len * head width): 32 for l=16
    # causal prefix sums divided by the running sum of the pack weights (a weighted mean), or by the number of
    # tokens t as the reference does
    normalize: Literal["weights", "length"] = "weights"

    def flops(self, d_model: int, segment_len: int) -> float:
        """Training FLOPs per token (`longrange.bench.mfu`), causal: pack (l slots over the prefix) and unpack (the
        token over l packed slots): K = 2 l; the pack queries' projection runs on the l slots of P per segment
        (``6 d^2 l / T``)."""
        return 12 * d_model * 2 * self.proj_len + 6 * d_model * d_model * self.proj_len / segment_len


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
        normalize: str = "weights",
    ):
        super().__init__()
        if proj_len < 1 or chunk_len < 1:
            raise ValueError(f"luna.proj_len={proj_len} and luna.chunk_len={chunk_len} must be >= 1")
        if activation not in ("elu", "softplus"):
            raise ValueError(f"luna.activation={activation!r} is not one of ['elu', 'softplus']")
        if normalize not in ("weights", "length"):
            raise ValueError(f"luna.normalize={normalize!r} is not one of ['weights', 'length']")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        self.n_heads, self.d_model, self.d_head = n_heads, d_model, d_model // n_heads
        self.causal, self.dropout, self.proj_len, self.chunk_len = causal, dropout, proj_len, chunk_len
        self.activation, self.share, self.normalize = activation, share_projections, normalize
        if layer_index == 0:  # the learned initial P and its own position embedding
            self.p_init = nn.Parameter(torch.randn(proj_len, d_model) * d_model**-0.5)
            self.p_pos = nn.Parameter(torch.randn(proj_len, d_model) * 0.02)
        self.pack_q = nn.Linear(d_model, d_model, bias=False)  # from P
        # from X, one GEMM: [unpack query | pack key | pack value(s)]; causal untied: two packed values
        # (unpack keys, unpack values); bidirectional shared: the pack key is also the pack value
        self.n_x = (3 if share_projections else 4) if causal else (2 if share_projections else 3)
        self.in_proj = nn.Linear(d_model, self.n_x * d_model, bias=False)
        if not causal:
            self.unpack_kv = nn.Linear(d_model, (1 if share_projections else 2) * d_model, bias=False)  # from Y_p
            self.p_norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState | None:
        if not self.causal:
            return None
        h, l, e = self.n_heads, self.proj_len, self.d_head
        n_values = 1 if self.share else 2
        return LayerState(
            {
                "num": torch.zeros(batch_size, h, l, n_values * e, device=device, dtype=torch.float32),  # sum a c
                "den": torch.zeros(batch_size, h, l, device=device, dtype=torch.float32),  # sum a, or t
            }
        )

    def _phi(self, scores: Tensor) -> Tensor:
        # softplus with the reference's beta ln 2: log2(1 + 2^x), 1 at 0 as elu + 1 is
        return F.elu(scores) + 1.0 if self.activation == "elu" else F.softplus(scores, beta=math.log(2.0))

    def _p(self, carry: Tensor | None, batch: int) -> Tensor:
        if carry is not None:
            return carry
        if not hasattr(self, "p_init"):
            raise ValueError("a Luna layer after the first needs the previous layer's P (carry)")
        return (self.p_init + self.p_pos).expand(batch, -1, -1)

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        b, t, d = x.shape
        if d != self.d_model:
            raise ValueError(f"LunaAttention expects d_model={self.d_model}, got x of width {d}")
        p = self._p(carry, b)  # (B, l, D)
        pq = split_heads(self.pack_q(p), self.n_heads)  # (B, H, l, E)
        if self.causal:
            if state is None:
                state = self.init_state(b, x.device, x.dtype)
            y, state = self._causal(x, pq, pad_mask, state)
            return AttentionOutput(self.out(y), state, None, p)
        return self._bidirectional(x, pq, p, pad_mask)

    # ------------------------------------------------------------------ bidirectional
    def _bidirectional(self, x, pq, p, pad_mask) -> AttentionOutput:
        b, t, _ = x.shape
        h, e = self.n_heads, self.d_head
        parts = self.in_proj(x).view(b, t, self.n_x, h, e).permute(2, 0, 3, 1, 4).unbind(0)  # n_x x (B, H, T, E)
        q, k, v = parts[0], parts[1], parts[-1]  # shared: the pack key is the pack value
        drop = self.dropout if self.training else 0.0
        mask = pad_mask[:, None, None, :] if pad_mask is not None else None  # padded tokens pack nothing
        packed = merge_heads(F.scaled_dot_product_attention(pq, k, v, attn_mask=mask, dropout_p=drop))  # Y_p (B, l, D)
        ukv = self.unpack_kv(packed).view(b, self.proj_len, -1, h, e).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, l, E)
        y = F.scaled_dot_product_attention(q, ukv[0], ukv[-1], dropout_p=drop)  # (B, H, T, E)
        return AttentionOutput(self.out(merge_heads(y)), None, None, self.p_norm(packed + p))

    # ------------------------------------------------------------------ causal
    def _causal(self, x, pq, pad_mask, state: LayerState):
        b, t, d = x.shape
        h, e, l = self.n_heads, self.d_head, self.proj_len
        c = min(self.chunk_len, t)
        n = -(-t // c)
        w = self.in_proj.weight  # rows: [unpack query | pack key | values]
        pq = pq * e**-0.5
        fold = h * l < d  # pack scores x W_k pq^T as x (W_k pq^T): a (D, H*l) product instead of (D, D)
        if fold:
            w_scores = torch.einsum("hed,bhje->bdhj", w[d : 2 * d].view(h, e, d), pq.to(w.dtype)).reshape(b, d, h * l)
            proj = F.linear(x, torch.cat([w[:d], w[2 * d :]]))  # (B, T, (n_x - 1) * D): [q | values]
        else:
            proj = self.in_proj(x)  # (B, T, n_x * D): [q | k | values]
        proj = proj.to(torch.promote_types(proj.dtype, torch.float32))  # prefix sums in >= float32 (bf16 autocast)
        if n * c != t:
            proj = F.pad(proj, (0, 0, 0, n * c - t))
        tokens = proj.view(b, n * c, -1, h, e)  # (B, N*C, parts, H, E)
        if fold:
            scores = (x @ w_scores).to(proj.dtype).view(b, t, h, l)
        else:  # the pack key part, token-major: (B, N*C, H, E) x (B, H, l, E) -> (B, N*C, H, l)
            scores = torch.einsum("bthe,bhje->bthj", tokens[:, :t, 1], pq.to(proj.dtype))
        scores = F.pad(scores, (0, 0, 0, 0, 0, n * c - t))
        # chunk-major layout (N, B, H, C, .): a block of chunks is then one contiguous slab, so the
        # blocks below are views that every matmul takes as they are (no copy saved per block).
        # (B, N*C, parts, H, E) -> parts x (N, B, H, C, E): the one copy of the projections
        # (unbind, not indexing: its backward is one stack instead of a zero-filled copy per part)
        parts = tokens.view(b, n, c, -1, h, e).permute(3, 1, 0, 4, 2, 5).contiguous().unbind(0)
        q, vals = parts[0], parts[-1] if self.share else torch.cat(parts[-2:], dim=-1)  # (N, B, H, C, E | 2E)
        a = self._phi(scores.view(b, n, c, h, l).permute(1, 0, 3, 2, 4).contiguous())  # (N, B, H, C, l), >= 0
        counts = None  # normalize "length": every real token counts 1 in the denominators, (N, B, 1, C, 1)
        if pad_mask is not None or n * c != t:  # padding (ours or the caller's) packs nothing
            valid = pad_mask if pad_mask is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
            counts = F.pad(valid, (0, n * c - t)).to(a.dtype).view(b, n, c).transpose(0, 1)[:, :, None, :, None]
            a = a * counts
        if self.normalize == "length" and counts is None:
            counts = a.new_ones(n, b, 1, c, 1)
        num, den, ys = state["num"], state["den"], []
        # blocks of BLOCK_TOKENS, carrying the sums: every block's (and its backward's) temporaries
        # stay cache-sized, so the cost per token does not grow with T (a loop over blocks, not tokens)
        step = max(1, BLOCK_TOKENS // c)
        # split, not slicing: the backward of a split is one concatenation, a slice's a zero-filled full copy
        norm_weights = counts.split(step) if self.normalize == "length" else [None] * -(-n // step)
        for q_i, a_i, vals_i, n_i in zip(q.split(step), a.split(step), vals.split(step), norm_weights, strict=True):
            y_i, num, den = causal_luna(q_i, a_i, vals_i, num, den, e, n_i)
            ys.append(y_i)
        y = ys[0] if len(ys) == 1 else torch.cat(ys)  # (N, B, H, C, E)
        y = y.permute(1, 0, 3, 2, 4).reshape(b, n * c, h * e)[:, :t].to(x.dtype)  # (B, T, D)
        return F.dropout(y, self.dropout, self.training), state.replace(num=num, den=den)


def causal_luna(
    q: Tensor, a: Tensor, vals: Tensor, num: Tensor, den: Tensor, d_key: int, norm_weights: Tensor | None = None
):
    """Causal pack + unpack by chunked prefix sums, every chunk at once (no loop over tokens or chunks).

    Chunk-major shapes: q (N, B, H, C, E) unpack queries; a (N, B, H, C, l) pack weights (zero for
    padding); vals (N, B, H, C, E) the packed tokens c (unpack keys = values), or (N, B, H, C, 2E) the
    unpack key and value tokens side by side; num (B, H, l, E or 2E) / den (B, H, l) sums over earlier
    chunks; d_key = E scales the unpack scores; norm_weights: what den sums, broadcastable to a (None: a
    itself, a weighted mean; 1 per real token: division by t, the reference's). Returns y (N, B, H, C, E)
    and the new sums.

    With packed_t[j] = num_t[j] / den_t[j] and num_t[j] = num_before_chunk[j] + sum_{s<=t in chunk} a_s[j] c_s:
        score_t[j] = q_t . packed_t[j] = ((G a)[t, j] + q_t . num_before[j]) / den_t[j],  G = tril(q c^T)
        y_t = sum_j w_t[j] packed_t[j] = (tril(w' a^T) c)_t + (w' num_before)_t,  w' = softmax(score) / den_t
    so only (C x C) and (C x l) blocks are formed, never the (T, l, E) packed contexts.
    """
    e = q.shape[-1]
    keys, values = (vals, vals) if vals.shape[-1] == e else vals.split(e, dim=-1)
    chunk = q.shape[-2]
    at = a.transpose(-1, -2)  # (N, B, H, l, C)
    chunk_num = at @ vals  # (N, B, H, l, E | 2E) sums inside each chunk
    weights = a if norm_weights is None else norm_weights
    chunk_den = weights.sum(-2)  # (N, B, H, l), or (N, B, 1, 1) for counts
    num_all = chunk_num.cumsum(0)
    num_before = num + num_all - chunk_num  # exclusive prefix over chunks
    den_all = chunk_den.cumsum(0)
    den_before = den + den_all - chunk_den
    inv_den = 1.0 / (den_before[..., None, :] + weights.cumsum(-2)).clamp(min=1e-6)  # (N, B, H, C, l)
    nb_keys, nb_values = (num_before, num_before) if keys is vals else num_before.split(e, dim=-1)
    causal = torch.ones(chunk, chunk, dtype=q.dtype, device=q.device).tril()
    g = (q @ keys.transpose(-1, -2)) * causal  # (N, B, H, C, C)
    scores = _add_matmul(q @ nb_keys.transpose(-1, -2), g, a) * (inv_den * d_key**-0.5)  # (N, B, H, C, l)
    w = scores.softmax(dim=-1) * inv_den
    m = (w @ at) * causal  # (N, B, H, C, C)
    y = _add_matmul(w @ nb_values, m, values)  # (N, B, H, C, E)
    return y, num + num_all[-1], den + den_all[-1]


def _add_matmul(acc: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """acc + x @ y over any leading dims, in one fused batched GEMM (baddbmm): no separate addition pass."""
    lead = x.shape[:-2]
    out = torch.baddbmm(acc.reshape(-1, *acc.shape[-2:]), x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:]))
    return out.view(*lead, *out.shape[-2:])
