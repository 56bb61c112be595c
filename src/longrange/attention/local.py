"""Chunked local attention, which the Reformer interleaves with its LSH layers.

Shape legend: B batch, T tokens (padded to Tp, a multiple of C), C chunk length, N = Tp / C chunks,
W = C * (before + 1 + after) keys per chunk, H heads, E head width, D model width.

Each chunk of C positions attends to itself and to `chunks_before` previous (and, bidirectionally,
`chunks_after` following) chunks; causal masking by position; padding (internal or the user's
`pad_mask`) is never attended. Memory O(T * W) instead of O(T^2).

Decode cache (causal only, ``decode_cache``): a `LayerState` holding the keys/values a future query
can still see, i.e. those of its own chunk and the `chunks_before` previous ones (the chunk of
absolute position p is p // C), at most W = C * (before + 1) slots, with their absolute positions
and the row's next position. Given a state, a segment (one token or many) attends to
[cache ; segment] with the same masks as one full pass, so streaming equals the one-pass output.
Positions in the cached path count real tokens only (as the model's position counter does): a
right-padded row matches the one pass exactly; padding in front or inside a row is skipped rather
than occupying a position. The cache is filled in evaluation mode only (streaming generation); in
training mode a given, empty state is passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput, merge_heads, pad_to_length, split_heads
from longrange.memory.state import LayerState

QUERY_BLOCK = 256  # queries per step of the cached path (keys: cache + at most W + QUERY_BLOCK tokens)


def look_around(x: Tensor, before: int, after: int, fill: float | bool) -> Tensor:
    """x (B, H, N, C, ...) -> (B, H, N, C * (before + 1 + after), ...): each chunk with its neighbours."""
    padded = F.pad(x.movedim(2, -1), [before, after], value=fill).movedim(-1, 2)  # pad the chunk axis
    n = x.shape[2]
    return torch.cat([padded[:, :, i : i + n] for i in range(before + 1 + after)], dim=3)


@dataclass
class LocalConfig:
    """Chunked local attention, interleaved with LSH layers in the Reformer."""

    chunk_len: int = 64
    chunks_before: int = 1
    chunks_after: int = 0

    def flops(self, d_model: int, segment_len: int) -> float:
        """Training FLOPs per token (`longrange.bench.mfu`): K = chunk_len (before + after) + (chunk_len + 1) / 2."""
        return 12 * d_model * (self.chunk_len * (self.chunks_before + self.chunks_after) + (self.chunk_len + 1) / 2)


class LocalAttention(AttentionModule):
    decode_cache = True  # causal layers only (set per instance)

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        causal: bool,
        layer_index: int,
        chunk_len: int,
        chunks_before: int,
        chunks_after: int,
    ):
        super().__init__()
        if chunk_len < 1 or chunks_before < 0 or chunks_after < 0:
            raise ValueError("local.chunk_len must be >= 1 and local.chunks_before/after >= 0")
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.chunk_len, self.before, self.after = chunk_len, chunks_before, 0 if causal else chunks_after
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.decode_cache = causal

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState | None:
        """Empty decode cache: W = C * (before + 1) slots of keys/values (B, H, W, E), their absolute
        positions ``key_pos`` (B, W), ``valid`` (B, W) and the row's next position ``pos`` (B,)."""
        if not self.causal:
            return None
        w, e = self.chunk_len * (self.before + 1), self.qkv.in_features // self.n_heads
        kv = torch.zeros(batch_size, self.n_heads, w, e, device=device, dtype=dtype)
        return LayerState(
            {
                "key": kv,
                "value": kv.clone(),
                "key_pos": torch.zeros(batch_size, w, dtype=torch.long, device=device),
                "valid": torch.zeros(batch_size, w, dtype=torch.bool, device=device),
                "pos": torch.zeros(batch_size, dtype=torch.long, device=device),
            }
        )

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        if state is not None:
            return self._forward_cached(x, state, pad_mask)
        b, t, d = x.shape
        c = self.chunk_len
        tp = -(-t // c) * c
        x, real = pad_to_length(x, pad_mask, tp)
        q, k, v = (split_heads(z, self.n_heads) for z in self.qkv(x).chunk(3, -1))  # (B, H, Tp, E)
        n, e = tp // c, q.shape[-1]
        q, k, v = (z.view(b, self.n_heads, n, c, e) for z in (q, k, v))  # (B, H, N, C, E)
        k, v = (look_around(z, self.before, self.after, 0.0) for z in (k, v))  # (B, H, N, W, E)
        pos = torch.arange(tp, device=x.device).view(1, 1, n, c)
        key_pos = look_around(pos[..., None], self.before, self.after, -1)[..., 0]  # (1, 1, N, W), -1 = outside
        key_real = look_around(real.view(b, 1, n, c, 1), self.before, self.after, False)[..., 0]  # (B, 1, N, W)
        mask = key_real[:, :, :, None, :] & (key_pos[:, :, :, None, :] >= 0)  # (B, 1, N, C, W)
        if self.causal:
            mask = mask & (key_pos[:, :, :, None, :] <= pos[..., None])
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.nan_to_num(0.0).reshape(b, self.n_heads, tp, e)[:, :, :t]  # padded queries with no keys -> 0
        return AttentionOutput(self.out(merge_heads(y)), None)

    def _forward_cached(self, x: Tensor, state: LayerState, pad_mask: Tensor | None) -> AttentionOutput:
        """One segment x (B, T, D) through the decode cache; returns the output and the next cache."""
        if not self.decode_cache:
            raise ValueError("a local-attention decode cache needs causal attention (a decoder); pass state=None")
        if self.training:  # the cache serves streaming generation; training reads whole sequences
            # a misuse check, made only on the CPU where reading the mask back costs no device round trip
            if x.device.type == "cpu" and bool(state["valid"].any()):
                raise ValueError("the local-attention decode cache is filled in evaluation mode; call model.eval()")
            return AttentionOutput(self.forward(x, state=None, pad_mask=pad_mask).out, state)
        b, t, _ = x.shape
        c, w = self.chunk_len, state["key"].shape[2]
        real = torch.ones(b, t, dtype=torch.bool, device=x.device) if pad_mask is None else pad_mask.bool()
        q_pos = state["pos"][:, None] + real.long().cumsum(1) - 1  # (B, T) absolute position of each real token
        q, k, v = (split_heads(z, self.n_heads) for z in self.qkv(x).chunk(3, -1))  # (B, H, T, E)
        keys, values = torch.cat([state["key"], k], 2), torch.cat([state["value"], v], 2)  # (B, H, W + T, E)
        key_pos = torch.cat([state["key_pos"], q_pos], 1)  # (B, W + T)
        key_valid = torch.cat([state["valid"], real], 1)
        # always the cached form, also for fresh rows (where the chunked one pass gives the same): choosing by
        # whether the cache is empty would read it back from the device
        out = self._attend_cached(q, keys, values, key_pos, key_valid, q_pos, padded=pad_mask is not None)

        # keep the newest entries a future query can still see: chunk >= chunk of the next position - before
        next_pos = state["pos"] + real.sum(1)  # (B,)
        keep = key_valid & (key_pos // c >= (next_pos[:, None] // c - self.before))  # (B, W + T), at most W True
        order = (keep.long() * keep.shape[1] + torch.arange(keep.shape[1], device=x.device)).argsort(1)[:, -w:]
        gather_kv = order[:, None, :, None].expand(-1, self.n_heads, -1, keys.shape[-1])  # (B, H, W, E)
        new_state = state.replace(
            key=keys.gather(2, gather_kv),
            value=values.gather(2, gather_kv),
            key_pos=key_pos.gather(1, order),
            valid=keep.gather(1, order),
            pos=next_pos,
        )
        return AttentionOutput(out, new_state)

    def _attend_cached(
        self, q: Tensor, keys: Tensor, values: Tensor, key_pos: Tensor, key_valid: Tensor, q_pos: Tensor, padded: bool
    ) -> Tensor:
        """q (B, H, T, E) against keys/values (B, H, W + T, E) = [cache ; segment] -> (B, T, D).

        key_pos / key_valid (B, W + T), q_pos (B, T): absolute positions. Queries go in blocks, so
        memory is O(QUERY_BLOCK * (2W + QUERY_BLOCK)) without padding (keys more than W tokens before
        a block are outside every window), O(QUERY_BLOCK * (W + T)) with it.
        """
        c, t, w = self.chunk_len, q.shape[2], keys.shape[2] - q.shape[2]
        outs = []
        for s in range(0, t, QUERY_BLOCK):
            e = min(t, s + QUERY_BLOCK)
            lo = w + (0 if padded else max(0, s - w))
            cols = torch.cat([torch.arange(w, device=q.device), torch.arange(lo, w + e, device=q.device)])
            kp, qp = key_pos[:, None, cols], q_pos[:, s:e, None]  # (B, 1, K), (B, Q, 1)
            mask = key_valid[:, None, cols] & (kp <= qp) & (kp // c >= qp // c - self.before)  # (B, Q, K)
            y = F.scaled_dot_product_attention(
                q[:, :, s:e], keys[:, :, cols], values[:, :, cols], attn_mask=mask[:, None]
            )
            outs.append(self.out(merge_heads(y.nan_to_num(0.0))))  # a padded query with no key -> 0
        return torch.cat(outs, 1)
