"""Reformer LSH attention (Kitaev et al. 2020).

Shape legend: B batch, H heads, T tokens (padded to Tp, a multiple of the chunk length C),
R hash rounds, K buckets, S = R * Tp sorted items, N = S / C chunks, W = 2C keys per chunk
(own chunk + `chunks_before` previous ones + `chunks_after` following), E head width, D model width.

1. Shared query/key projection: keys are the queries normalised to unit length.
2. Angular LSH: random rotations Rot (E, R, K/2); bucket = argmax([x Rot ; -x Rot]) per round.
3. Sort items by (round, bucket, position), cut into chunks of C; each chunk attends to itself and
   its neighbouring chunks (no T x T matrix: memory O(T * R * W)).
4. Masks: a query attends to keys of its own bucket (the paper's P_i = {j : h(q_i) = h(k_j)}) that
   lie at most C items away in sorted order; causal by original position; a token attends to
   itself only when nothing else is visible (its score is set to -1e5, not -inf, as in the
   paper); padding never attended.
   Deliberate deviation: the paper lets a query see every item of its chunk and the previous one,
   whatever their bucket. Chunk boundaries move when a *future* token lands in a lower bucket, so
   that version leaks information from the future into past outputs. Restricting the window to the
   query's own bucket and to a fixed distance in sorted order makes it exactly causal at the same
   cost (a bucket larger than C is truncated, as chunking truncates it in the paper).
5. Rounds are merged with weights softmax(logsumexp of each round); optionally (``dedup``) scores
   of a pair that shares a bucket in several rounds are divided by that count (the paper's
   correction, counting shared buckets as a proxy for shared chunks).

Speed: on CPU the attention of the sorted items runs in a fused kernel that computes exactly this
mechanism. Where a C compiler is available it is the native one (`kernel_native`, C source
in ``csrc/lsh_band.c``: each query visits exactly its band of sorted items, rows are read in place, no score
tensors, gradients summed in place; registered as the custom operator ``longrange::lsh_band``, so torch.compile
and the meta device see through it); otherwise the PyTorch one (`kernel_torch`: band
bounds, one additive bias, PyTorch's flash-attention CPU kernel). Both use exact gradients through the round
merge and read the projections in their natural (B, Tp, H, E) layout. The plain masked-softmax path (`kernel_plain`)
serves attention dropout in training and every other device (CUDA, meta: the fused kernels are CPU code), and
is the kernels' test twin (``fused = False``).

Hashing (`hashing`): rotations are drawn fresh from torch's RNG in training and from a generator
seeded with ``hash_seed`` otherwise, so evaluation is deterministic. ``n_buckets`` None picks 2 * Tp / C
rounded to an even number, as in the paper; a list of even factors [K1, K2] hashes with K = K1 * K2 buckets
factorised that way.

Decode cache (``decode_cache``, streaming generation): causal layers with an explicit ``n_buckets``
keep every past (unit-norm key, value, buckets per round) in a `LayerState`; a new token (or a
segment) then attends exactly as in one full pass over the whole sequence, without re-running it
(`decode`). The first segment of a fresh cache runs the sorted one pass.
It needs fixed buckets, so it works in evaluation mode only (training draws fresh rotations; a
given empty state is passed through unchanged) and is refused for ``n_buckets`` null (the count
would follow each call's padded length), ``chunks_before`` 0 (the window would follow chunk
boundaries) and the ``hf`` convention (not causal-exact).

``convention``: ``"longrange"`` (the default, everything above) or ``"hf"``: reproduce Hugging Face
transformers' Reformer exactly (paper's chunk window without the same-bucket restriction, per-head
rotations, its key scaling and masks), for converted checkpoints; see `hf`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput, merge_heads, pad_to_length, split_heads
from longrange.attention.lsh import kernel_native
from longrange.attention.lsh.decode import cached_lsh_attention
from longrange.attention.lsh.hashing import draw_rotations, factorise, hash_buckets, product
from longrange.attention.lsh.hf import hf_lsh_attention
from longrange.attention.lsh.kernel_plain import plain_lsh_attention
from longrange.attention.lsh.kernel_torch import band_bounds, sorted_lsh_attention
from longrange.memory.state import LayerState


@dataclass
class LSHConfig:
    """Reformer angular-LSH attention (Kitaev et al. 2020)."""

    n_hashes: int = 4  # hash rounds; more rounds approach full attention
    bucket_size: int = 64  # chunk length after sorting by bucket
    n_buckets: int | list[int] | None = None  # None: 2 * padded_length / bucket_size (paper); [K1, K2]: factorised
    chunks_before: int = 1  # each chunk also attends to this many previous chunks
    chunks_after: int = 0  # ... and to this many following chunks (bidirectional only)
    dedup: bool = True  # paper's correction for a pair attended in several rounds
    hash_seed: int | None = None  # fixed rotations (evaluation, tests, HF interop); None: fresh per call
    # "hf": reproduce Hugging Face transformers' Reformer LSH exactly (converted checkpoints; see attention/lsh/hf.py)
    convention: Literal["longrange", "hf"] = "longrange"

    def flops(self, d_model: int, segment_len: int) -> float:
        """Training FLOPs per token (`longrange.bench.mfu`): n_hashes rounds, each query attending its chunk of
        bucket_size b (causal: (b + 1) / 2) and chunks_before (+ chunks_after) whole chunks:
        K = n_hashes (b (before + after) + (b + 1) / 2); plus the hashing, forward only (no gradient through argmax):
        ``2 d n_hashes n_buckets / 2`` (random rotations to n_buckets / 2 directions)."""
        b = self.bucket_size
        k = self.n_hashes * (b * (self.chunks_before + self.chunks_after) + (b + 1) / 2)
        n_buckets = self.n_buckets if self.n_buckets is not None else 2 * math.ceil(segment_len / b)
        if isinstance(n_buckets, list):
            n_buckets = math.prod(n_buckets)
        return 12 * d_model * k + 2 * d_model * self.n_hashes * n_buckets / 2


class LSHAttention(AttentionModule):
    decode_cache = True  # when the settings allow it (see `no_cache_reason`; set per instance)
    fused = True  # CPU: a fused kernel (False: the plain masked-softmax path, their test twin)
    native = True  # the fused kernel is the C one of `kernel_native` where it builds (False: `kernel_torch`'s)

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        causal: bool,
        layer_index: int,
        n_hashes: int,
        bucket_size: int,
        n_buckets: int | None,
        chunks_before: int,
        chunks_after: int,
        dedup: bool,
        hash_seed: int | None,
        convention: str = "longrange",
    ):
        super().__init__()
        if n_hashes < 1 or bucket_size < 1:
            raise ValueError("lsh.n_hashes and lsh.bucket_size must be >= 1")
        self.factors = list(n_buckets) if isinstance(n_buckets, (list, tuple)) else None
        if self.factors is not None:
            if not self.factors or any(f < 2 or f % 2 for f in self.factors):
                raise ValueError(f"lsh.n_buckets={n_buckets}: every factor of a bucket list must be an even number")
            n_buckets = product(self.factors)
        elif n_buckets is not None and (n_buckets < 1 or (n_buckets > 1 and n_buckets % 2)):
            raise ValueError(f"lsh.n_buckets={n_buckets} must be 1 or an even number (or null for automatic)")
        if convention not in ("longrange", "hf"):
            raise ValueError(f"lsh.convention={convention!r} is not allowed; choose 'longrange' or 'hf'")
        if convention == "hf" and n_buckets == 1:
            raise ValueError("lsh.convention='hf' hashes into an even number of buckets; set lsh.n_buckets >= 2")
        if convention == "hf" and dedup:
            raise ValueError("lsh.convention='hf' has no duplicate-pair correction; set lsh.dedup: false")
        self.convention = convention
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.n_hashes, self.chunk, self.n_buckets, self.dedup, self.hash_seed = (
            n_hashes,
            bucket_size,
            n_buckets,
            dedup,
            hash_seed,
        )
        self.before, self.after = chunks_before, 0 if causal else chunks_after
        self.qk = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.decode_cache = self.no_cache_reason() is None

    def buckets_for(self, tp: int) -> int:
        return self.n_buckets or max(2, 2 * (tp // self.chunk))  # even by construction

    def bucket_factors(self, n_buckets: int) -> list[int]:
        return self.factors or factorise(n_buckets)

    def rotations(self, dim: int, n_rotations: int, device, dtype) -> Tensor:
        return draw_rotations((dim, self.n_hashes, n_rotations), self.training, self.hash_seed, device, dtype)

    def no_cache_reason(self) -> str | None:
        """Why this layer cannot keep an exact decode cache (None: it can)."""
        if not self.causal:
            return "an LSH decode cache needs causal attention (a decoder)"
        if self.convention != "longrange":
            return "lsh.convention='hf' is not causal-exact, so it has no decode cache; use 'longrange'"
        if self.n_buckets is None:
            return (
                "lsh.n_buckets is null: the bucket count follows each call's padded length, so cached decoding "
                "cannot match a recomputation; set lsh.n_buckets to an even number (e.g. 2 * segment_len / bucket_size)"
            )
        if self.before < 1:
            return "lsh.chunks_before=0 makes the window follow chunk boundaries; set lsh.chunks_before >= 1"
        return None

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState | None:
        """Empty decode cache: unit-norm ``key`` and ``value`` (B, H, L, E), ``buckets`` (B, H, L, R)
        and ``valid`` (B, L) for L = 0 past items (None when this layer cannot keep one)."""
        if not self.decode_cache:
            return None
        b, h, e, r = batch_size, self.n_heads, self.qk.in_features // self.n_heads, self.n_hashes
        return LayerState(
            {
                "key": torch.zeros(b, h, 0, e, device=device, dtype=dtype),
                "value": torch.zeros(b, h, 0, e, device=device, dtype=dtype),
                "buckets": torch.zeros(b, h, 0, r, dtype=torch.long, device=device),
                "valid": torch.zeros(b, 0, dtype=torch.bool, device=device),
            }
        )

    def _forward_cached(self, x: Tensor, state: LayerState, pad_mask: Tensor | None) -> AttentionOutput:
        """x (B, T, D) after the L items in the cache -> output and the cache with T more items."""
        reason = self.no_cache_reason()
        if reason is not None:
            raise ValueError(reason)
        cached = state["key"].shape[2]
        if self.training:  # fresh rotations per call: a cache would not match the next call's buckets
            if cached:
                raise ValueError("the LSH decode cache is filled in evaluation mode (fixed rotations); call .eval()")
            return AttentionOutput(self.forward(x, state=None, pad_mask=pad_mask).out, state)
        b, t, _ = x.shape
        real = torch.ones(b, t, dtype=torch.bool, device=x.device) if pad_mask is None else pad_mask.bool()
        qk = split_heads(self.qk(x), self.n_heads)  # (B, H, T, E)
        v = split_heads(self.v(x), self.n_heads)
        buckets = self.hash(qk, self.n_buckets).transpose(2, 3)  # (B, H, T, R)
        keys = torch.cat([state["key"], F.normalize(qk, dim=-1)], 2)  # (B, H, L + T, E)
        values = torch.cat([state["value"], v], 2)
        key_buckets = torch.cat([state["buckets"], buckets], 2)  # (B, H, L + T, R)
        valid = torch.cat([state["valid"], real], 1)  # (B, L + T)
        new_state = state.replace(key=keys, value=values, buckets=key_buckets, valid=valid)
        if cached == 0:  # nothing before this segment: the sorted one pass
            return AttentionOutput(self.forward(x, state=None, pad_mask=pad_mask).out, new_state)
        y = cached_lsh_attention(qk, buckets, keys, values, key_buckets, valid, chunk=self.chunk, dedup=self.dedup)
        return AttentionOutput(self.out(merge_heads(y)), new_state)

    @torch.no_grad()
    def hash(self, qk: Tensor, n_buckets: int) -> Tensor:
        """qk (B, H, Tp, E) -> buckets (B, H, R, Tp) in [0, K).

        Buckets are integers, so hashing needs no gradient. Many buckets are factorised as
        K = K1 * K2 (bucket = b1 + K1 * b2, each from its own random rotation), as the Reformer does
        for long sequences, so the rotated vectors cost (K1 + K2) / 2 instead of K / 2 per item.
        """
        if n_buckets == 1:  # one bucket: plain (chunked) shared-QK attention; the test oracle
            return qk.new_zeros((qk.shape[0], qk.shape[1], self.n_hashes, qk.shape[2]), dtype=torch.long)
        factors = self.bucket_factors(n_buckets)
        rot = self.rotations(qk.shape[-1], sum(f // 2 for f in factors), qk.device, qk.dtype)  # (E, R, sum K_i / 2)
        return hash_buckets(qk, rot, factors)

    def kernel(self, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
        """Which kernel attends the sorted items: ``"native"`` (the C one), ``"torch"`` (the fused PyTorch one) or
        ``"plain"`` (masked softmax over sorted chunks). The fused kernels are CPU code without attention dropout
        (and `kernel_torch` counts shared rounds in int8), so every other case takes the plain path."""
        if not self.fused or device.type != "cpu" or self.n_hashes >= 128 or (self.training and self.dropout > 0):
            return "plain"
        # the C kernel where it builds for qk's dtype (not x's: under autocast they differ)
        return "native" if self.native and kernel_native.available(dtype, head_dim) else "torch"

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        if state is not None:
            return self._forward_cached(x, state, pad_mask)
        if self.convention == "hf":
            return self._forward_hf(x, pad_mask)
        b, t, _ = x.shape
        c, r = self.chunk, self.n_hashes
        tp = -(-t // c) * c
        x, real = pad_to_length(x, pad_mask, tp)
        qk_rows, v_rows = self.qk(x), self.v(x)  # (B, Tp, D)
        qk = split_heads(qk_rows, self.n_heads)  # (B, H, Tp, E), a transposed view
        v = split_heads(v_rows, self.n_heads)
        e = qk.shape[-1]
        n_buckets = self.buckets_for(tp)
        buckets, round_bucket, order = sort_by_bucket(self.hash(qk, n_buckets), real, n_buckets)
        window = (self.before, self.after) if r * tp // c > 1 else (0, 0)  # one chunk: itself only
        kernel = self.kernel(x.device, qk_rows.dtype, e)
        if kernel == "plain":
            dropout = self.dropout if self.training else 0.0
            y = plain_lsh_attention(
                qk,
                v,
                buckets,
                round_bucket,
                order,
                c=c,
                window=window,
                causal=self.causal,
                dedup=self.dedup,
                dropout=dropout,
            )
            return AttentionOutput(self.out(merge_heads(y[:, :, :t])), None)
        # the fused kernels read the projections' own (B, Tp, H, E) layout: no head transposes are copied
        qk_4d, v_4d = qk_rows.view(b, tp, self.n_heads, e), v_rows.view(b, tp, self.n_heads, e)
        order_rows = order.flatten(0, 1)  # (BH, S)
        bucket_s = round_bucket.gather(2, order).flatten(0, 1)  # (BH, S) sorted (round, bucket) ids
        by_pos = buckets.transpose(2, 3).flatten(0, 1) if self.dedup and r > 1 else None  # (BH, Tp, R)
        if kernel == "native":  # exactly each query's band
            lo, hi = band_bounds(bucket_s, c, window, self.causal)
            y = kernel_native.band_attention(qk_4d, v_4d, order_rows, lo, hi, by_pos)
        else:
            y = sorted_lsh_attention(qk_4d, v_4d, order_rows, bucket_s, by_pos, c=c, window=window, causal=self.causal)
        y = y.flatten(2)  # (B, Tp, D)
        return AttentionOutput(self.out(y[:, :t] if t < tp else y), None)  # a full slice would copy its gradient

    def _forward_hf(self, x: Tensor, pad_mask: Tensor | None) -> AttentionOutput:
        """x (B, T, D) -> out (B, T, D) in transformers' convention (module docstring of `hf`)."""
        b, t, _ = x.shape
        tp = t if t <= self.chunk else -(-t // self.chunk) * self.chunk
        x, real = pad_to_length(x, pad_mask, tp)
        qk = split_heads(self.qk(x), self.n_heads)  # (B, H, Tp, E)
        v = split_heads(self.v(x), self.n_heads)
        y = hf_lsh_attention(
            qk,
            v,
            real,
            factors=self.bucket_factors(self.buckets_for(tp)),
            n_hashes=self.n_hashes,
            chunk=self.chunk,
            before=self.before,
            after=self.after,
            causal=self.causal,
            seed=self.hash_seed,
            dropout=self.dropout if self.training else 0.0,
        )
        return AttentionOutput(self.out(merge_heads(y[:, :, :t])), None)


def sort_by_bucket(buckets: Tensor, real: Tensor, n_buckets: int) -> tuple[Tensor, Tensor, Tensor]:
    """buckets (B, H, R, Tp), real (B, Tp) -> buckets with padding in bucket K, round_bucket (B, H, S) ids unique
    per round in time order, and order (B, H, S): the sort by (round, bucket, position)."""
    tp, r = buckets.shape[-1], buckets.shape[2]
    # padding gets its own bucket K, so no real query ever shares a bucket with it
    buckets = buckets.masked_fill(~real[:, None, None, :], n_buckets)
    rounds = torch.arange(r, device=buckets.device)[:, None]
    round_bucket = (rounds * (n_buckets + 1) + buckets).flatten(2)  # (B, H, S) bucket id, unique per round
    # sort key = (round * (K + 1) + bucket) * Tp + position
    order = (round_bucket * tp + torch.arange(tp, device=buckets.device).repeat(r)).argsort(dim=-1)
    return buckets, round_bucket, order
