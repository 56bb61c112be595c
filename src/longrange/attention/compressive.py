"""Compressive Transformer attention (Rae et al. 2020): XL memory plus a compressed memory.

Shape legend: B batch, T segment tokens, M memory slots (n_m), S compressed slots (n_cm),
P pending states (< c), L = S + M + T keys, D model width, H heads, E head width, c rate.

Each layer attends over [compressed memory ; memory ; segment] with Transformer-XL relative
positions (one position per slot). When the segment enters the memory, the T oldest states are
evicted and compressed by rate c into T / c slots appended to the compressed memory, whose oldest
slots are dropped in turn. Evicted states that do not fill a whole group of c (e.g. one token at a
time during generation) wait in a small pending buffer, so no state is lost or invented. Each row counts
its own pending states (a row reset to a new document starts with none, exactly like a fresh row), so
rows of one batch may complete different numbers of groups: the buffer has a fixed c - 1 slots and the
per-row appends skip the filler slots of rows with fewer groups (static shapes, no host sync).

The compression network is trained only by its own loss and the LM only by its loss (the paper's
stop-gradients in both directions): compression reads detached states, and the compressed memory
the main attention uses is detached. Losses (`aux_loss`, weighted by `loss_weight`):
- ``attention``: the attention of the current segment's queries over the evicted states vs over
  their compression (content attention with the layer's own projections, all detached);
- ``autoencoding``: a learned linear decoder reconstructs the evicted states from the compression.
Both see only what the main attention sees: invalid compressed slots are masked (and, in the target, the
states they were made from), so the first segments after a document start train on real states only.
Compressions without parameters (max, mean, most-used) have no loss.

Validity masks make per-row document resets exact; a compressed slot is valid when every state
it was made from was valid (a group that straddles a reset is dropped; most-used: the state it keeps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import (
    AttentionModule,
    AttentionOutput,
    fifo_live,
    merge_heads,
    newest,
    split_heads,
    zero_gradient_anchor,
)
from longrange.attention.memory_attention import (
    RelativePositionScores,
    explicit_relative_attention,
    memory_segment_mask,
    project,
    shifted_position_scores,
)
from longrange.memory.compress import Compressor
from longrange.memory.state import LayerState


@dataclass
class CompressiveConfig:
    """Compressive Transformer (Rae et al. 2020): XL memory plus compressed memory."""

    mem_len: int = 128  # n_m
    cmem_len: int = 128  # n_cm, compressed slots
    rate: int = 4  # c
    compression: Literal["max", "mean", "conv", "dilated_conv", "most_used"] = "conv"
    loss: Literal["attention", "autoencoding"] = "attention"
    loss_weight: float = 1.0

    def reach(self) -> tuple[int, str]:
        """The memory, then the compressed slots, each `rate` tokens (Rae et al. 2020)."""
        return self.mem_len + self.cmem_len * self.rate, "(mem_len + cmem_len x rate)"

    def flops(self, d_model: int, segment_len: int) -> float:
        """Training FLOPs per token (`longrange.bench.mfu`): as XL's with mem_len -> cmem_len + mem_len; plus the
        compression of T evicted states into T / c slots (a kernel-c, stride-c convolution: ``6 d^2`` per token;
        none for max/mean/most-used) and the attention reconstruction loss: T queries over the T evicted and the
        T / c compressed states (``12 d (T + T / c)``, non-causal) with the compressed slots' keys/values
        projected (``12 d^2 / c``); autoencoding instead decodes each slot to its c states (``6 d^2``)."""
        d, t, c = d_model, segment_len, self.rate
        n_prev = self.mem_len + self.cmem_len
        flops = 18 * d * (n_prev + (t + 1) / 2) + 6 * d * d * (n_prev + t + 1) / t  # content + position scores; W_R
        if self.compression in ("conv", "dilated_conv"):
            flops += 6 * d * d  # the convolution: d x (c d) weights on T / c groups
            if self.loss == "attention":
                flops += 12 * d * (t + t / c) + 12 * d * d / c
            else:
                flops += 6 * d * d
        return flops


class CompressiveAttention(AttentionModule):
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
        cmem_len: int,
        rate: int,
        compression: str,
        loss: str,
        loss_weight: float,
    ):
        super().__init__()
        if mem_len < 1 or cmem_len < 0:
            raise ValueError(f"compressive.mem_len={mem_len} must be >= 1 and compressive.cmem_len={cmem_len} >= 0")
        if loss not in ("attention", "autoencoding"):
            raise ValueError(f"compressive.loss={loss!r} is not one of ['attention', 'autoencoding']")
        self.n_heads, self.d_model, self.dropout, self.causal = n_heads, d_model, dropout, causal
        self.mem_len, self.cmem_len, self.rate, self.loss_kind, self.loss_weight = (
            mem_len,
            cmem_len,
            rate,
            loss,
            loss_weight,
        )
        # the same names as XLAttention, so weights move between the two
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.u_bias = nn.Parameter(torch.zeros(n_heads, d_model // n_heads))
        self.rel = RelativePositionScores(d_model, n_heads)
        self.compressor = Compressor(compression, d_model, rate)
        if loss == "autoencoding" and self.compressor.learned:
            self.decoder = nn.Linear(d_model, rate * d_model)  # one compressed slot -> its c states
        self.record_attention = False  # analysis mode: keep the last attention weights by region
        self.last_attention: dict | None = None

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        def zeros(n, *shape, kind=dtype):
            return torch.zeros(batch_size, n, *shape, device=device, dtype=kind)

        return LayerState(
            {
                "cmem": zeros(self.cmem_len, self.d_model),  # (B, S, D)
                "cmem_valid": zeros(self.cmem_len, kind=torch.bool),  # (B, S)
                "mem": zeros(self.mem_len, self.d_model),  # (B, M, D)
                "mem_valid": zeros(self.mem_len, kind=torch.bool),  # (B, M)
                "mem_usage": zeros(self.mem_len, kind=torch.float32),  # (B, M) attention received (most-used)
                "mem_age": zeros(self.mem_len, kind=torch.float32),  # (B, M) segments spent in memory
                # (B, c - 1, D) evicted, waiting for a full group: the last `pending_len` (B,) slots, newest last
                "pending": zeros(self.rate - 1, self.d_model),
                "pending_valid": zeros(self.rate - 1, kind=torch.bool),
                "pending_usage": zeros(self.rate - 1, kind=torch.float32),
                "pending_len": torch.zeros(batch_size, dtype=torch.long, device=device),
            },
            live={"cmem": 0, "mem": 0},  # nothing written yet (see `LayerState.live`)
        )

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        if pad_mask is not None:
            raise ValueError("compressive attention reads whole segments; padded batches are not supported")
        b, t, _ = x.shape
        if state is None:
            state = self.init_state(b, x.device, x.dtype)
        # only the newest slots that may hold states take part (older ones were never written: masked anyway)
        n_cmem, n_mem = state.live_slots("cmem"), state.live_slots("mem")
        cmem, mem = newest(state["cmem"], n_cmem).to(x.dtype), newest(state["mem"], n_mem).to(x.dtype)
        n_prev = n_cmem + n_mem
        q, k, v = project(self.q, self.kv, x, torch.cat([cmem, mem], dim=1), self.n_heads)  # keys [cmem ; mem ; x]
        prev_valid = torch.cat([newest(state["cmem_valid"], n_cmem), newest(state["mem_valid"], n_mem)], 1)
        mask = memory_segment_mask(prev_valid, n_prev, t, x.device)  # (B, 1, T, L)
        position = shifted_position_scores(self.rel, q, n_prev, q.shape[-1] ** -0.5)  # (B, H, T, L), scaled
        y, weights = explicit_relative_attention(
            q, k, v, position, mask, self.u_bias, self.dropout, self.training, rel_scaled=True
        )
        full_weights = None
        if self.record_attention or self.compressor.kind == "most_used":
            full_weights = self._weights_over_every_slot(weights, n_cmem, n_mem)
        if self.record_attention:
            self.last_attention = {"weights": full_weights.detach(), "cmem": self.cmem_len, "mem": self.mem_len}

        # the evicted states' keys/values were projected for this attention when the whole memory took part
        evicted_kv = (k[:, :, n_cmem : n_cmem + t], v[:, :, n_cmem : n_cmem + t]) if n_mem == self.mem_len else None
        next_state, aux = self._update_memories(state, x, q, evicted_kv, full_weights)
        return AttentionOutput(self.out(merge_heads(y)), next_state, aux)

    def _weights_over_every_slot(self, weights: Tensor, n_cmem: int, n_mem: int) -> Tensor:
        """Attention weights (B, H, T, n_cmem + n_mem + T) over the live slots -> (B, H, T, S + M + T) over every
        slot, the never-written ones at 0 (most-used compression and the attention analysis index by slot)."""
        cmem_part, mem_part, segment = weights.split([n_cmem, n_mem, weights.shape[-1] - n_cmem - n_mem], -1)
        pad_cmem, pad_mem = self.cmem_len - n_cmem, self.mem_len - n_mem
        if pad_cmem == 0 and pad_mem == 0:
            return weights
        return torch.cat([F.pad(cmem_part, (pad_cmem, 0)), F.pad(mem_part, (pad_mem, 0)), segment], -1)

    # ------------------------------------------------------------------ memories
    def _update_memories(
        self, state: LayerState, x: Tensor, q: Tensor, evicted_kv: tuple[Tensor, Tensor] | None, weights: Tensor | None
    ):
        """The memories after segment x (B, T, D): the T oldest states leave the memory and are compressed.

        ``evicted_kv``: the evicted states' keys and values (B, H, T, E) when the attention computed them (None:
        projected here); ``weights`` (B, H, T, S + M + T): the attention, for most-used compression.
        """
        b, t, _ = x.shape
        s = state["cmem"].shape[1]
        all_states = torch.cat([state["mem"], x], 1)  # (B, M + T, D)
        all_valid = torch.cat([state["mem_valid"], torch.ones(b, t, dtype=torch.bool, device=x.device)], 1)
        n_evict = t  # the T oldest leave the memory
        evicted, evicted_valid = all_states[:, :n_evict], all_valid[:, :n_evict]
        if self.compressor.kind == "most_used":  # attention received by [memory ; segment], mean over heads, queries
            received = weights[..., s:].float().mean(dim=(1, 2))  # (B, M + T)
            usage = torch.cat([state["mem_usage"], torch.zeros(b, t, device=x.device)], 1) + received
            age = torch.cat([state["mem_age"], torch.zeros(b, t, device=x.device)], 1) + 1
            evicted_usage = (usage / age)[:, :n_evict]  # average attention weight while in memory
            usage, age = usage[:, n_evict:], age[:, n_evict:]
        else:  # nothing reads the usage: carry the (zero) bookkeeping unchanged, skip the work
            usage, age, evicted_usage = (
                state["mem_usage"],
                state["mem_age"],
                all_valid.new_zeros(b, t, dtype=torch.float),
            )

        # join the pending states; compress whole groups of c, keep the rest pending. Each row has its own
        # number of pending states (a row reset to a new document has none, like a fresh row), so the pending
        # buffer has a fixed c - 1 slots, newest last, the last `pending_len` of them in use.
        c, n_pending = self.rate, state["pending_len"]  # (B,) int64
        stream = torch.cat([state["pending"].to(x.dtype), evicted], 1)  # (B, c - 1 + T, D)
        stream_valid = torch.cat([state["pending_valid"], evicted_valid], 1)
        stream_usage = torch.cat([state["pending_usage"], evicted_usage], 1)
        n_groups = torch.div(n_pending + t, c, rounding_mode="floor")  # (B,) whole groups per row
        g = (c - 1 + t) // c  # the most any row can have: rows with fewer get invalid filler slots in front
        # row r's groups end where its pending remainder begins: (c - 1 - n_pending) + n_groups * c
        end = (c - 1 - n_pending) + n_groups * c
        index = (end[:, None] - g * c + torch.arange(g * c, device=x.device)).clamp(min=0)  # (B, g * c)
        to_compress = _take(stream, index).detach()  # stop-gradient: the LM loss never trains compression
        compressed, compressed_valid = self.compressor.compress(  # (B, g, D), (B, g); fillers invalid
            to_compress, stream_valid.gather(1, index), stream_usage.gather(1, index), n_groups
        )
        # host-side bound (`LayerState.live`): how many of the T evicted states may have held a state. While none
        # may, no pending state may either (a written state is evicted only once the memory is full, and from
        # then on every segment evicts written states), so this segment's compressed slots are all invalid
        n_mem = state.live_slots("mem")
        may_compress_states = n_mem + t > self.mem_len
        aux = None
        if g and self.compressor.learned and not may_compress_states:
            # every compressed slot is invalid, so the loss is 0 with gradient 0: skip its attentions
            aux = zero_gradient_anchor(self._loss_parameters())
        elif g and self.compressor.learned:
            old_kv = None
            if self.loss_kind == "attention" and evicted_kv is not None:
                # the evicted states' keys/values come from this segment's attention; only the (c - 1) pending
                # states need projecting
                pending_k, pending_v = (
                    split_heads(z, self.n_heads) for z in self.kv(state["pending"].to(x.dtype)).chunk(2, dim=-1)
                )
                old_kv = tuple(
                    _take(torch.cat([old, now], 2), index, dim=2)
                    for old, now in zip((pending_k, pending_v), evicted_kv, strict=True)
                )
            aux = self._compression_loss(to_compress, compressed, compressed_valid, q, old_kv)

        cmem, cmem_valid = _append_rows(
            state["cmem"], state["cmem_valid"], compressed.detach(), compressed_valid, n_groups
        )
        next_state = state.replace(
            cmem=cmem,
            cmem_valid=cmem_valid,
            mem=all_states[:, n_evict:],
            mem_valid=all_valid[:, n_evict:],
            mem_usage=usage,
            mem_age=age,
            pending=stream[:, stream.shape[1] - (c - 1) :],  # the remainder is always the newest states
            pending_valid=stream_valid[:, stream.shape[1] - (c - 1) :],
            pending_usage=stream_usage[:, stream.shape[1] - (c - 1) :],
            pending_len=(n_pending + t) % c,
            live={
                "mem": fifo_live(n_mem, t, self.mem_len),
                "cmem": min(s, state.live_slots("cmem") + (g if may_compress_states else 0)),
            },
        )
        return next_state, aux

    def _loss_parameters(self) -> list[nn.Parameter]:
        """The parameters the compression loss trains: the compressor's (and the autoencoder's decoder)."""
        decoder = list(self.decoder.parameters()) if hasattr(self, "decoder") else []
        return [*self.compressor.parameters(), *decoder]

    def _compression_loss(
        self,
        old: Tensor,
        compressed: Tensor,
        compressed_valid: Tensor,
        q: Tensor,
        old_kv: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """The reconstruction loss of one compression of old (B, N, D) into compressed (B, N/c, D).

        ``compressed_valid`` (B, N/c): the slots the main attention may read; an invalid slot (and the states it
        was made from) takes no part, as in the main attention. ``old_kv``: the old states' (B, H, N, E) keys/values.
        """
        kept = compressed_valid.repeat_interleave(self.rate, dim=1)  # (B, N) states behind a valid slot
        if self.loss_kind == "autoencoding":
            b, n, d = old.shape
            decoded = self.decoder(compressed).view(b, n, d)
            error, weight = (decoded - old).square().mean(-1), kept.float()  # (B, N)
        else:  # attention reconstruction with the layer's own (detached) projections, content only
            q = q.detach()
            w_k, w_v = (w.detach() for w in self.kv.weight.chunk(2, dim=0))

            def project(memory: Tensor) -> tuple[Tensor, Tensor]:
                return split_heads(F.linear(memory, w_k), self.n_heads), split_heads(
                    F.linear(memory, w_v), self.n_heads
                )

            # a row with no valid slot attends to all (finite values, no fully masked softmax) and weighs 0
            empty = ~compressed_valid.any(-1, keepdim=True)  # (B, 1)
            old_k, old_v = (z.detach() for z in old_kv) if old_kv is not None else project(old)
            target = F.scaled_dot_product_attention(q, old_k, old_v, attn_mask=(kept | empty)[:, None, None, :])
            mask = (compressed_valid | empty)[:, None, None, :]
            error = (
                (F.scaled_dot_product_attention(q, *project(compressed), attn_mask=mask) - target)
                .square()
                .mean(dim=(1, 3))
            )  # (B, T)
            weight = (~empty).float().expand_as(error)
        return self.loss_weight * (error * weight).sum() / weight.sum().clamp(min=1)


def _take(x: Tensor, index: Tensor, dim: int = 1) -> Tensor:
    """x (B, [H,] N, E) at per-row positions index (B, K) along `dim` -> (B, [H,] K, E)."""
    if dim == 2:
        index = index[:, None].expand(-1, x.shape[1], -1)
    return x.gather(dim, index[..., None].expand(*index.shape, x.shape[-1]))


def _append_rows(memory: Tensor, valid: Tensor, new: Tensor, new_valid: Tensor, counts: Tensor):
    """Per-row FIFO: append the last counts[r] of new[r] (B, G, D) to memory[r] (B, S, D), keep the newest S.

    The G - counts[r] slots in front are fillers (rows with fewer whole groups than others) and take no space.
    """
    s, g = memory.shape[1], new.shape[1]
    k = counts[:, None] + torch.arange(s, device=memory.device)  # (B, S): position in [memory ; kept new]
    index = torch.where(k < s, k, k + g - counts[:, None])  # ... skipping the fillers
    return _take(torch.cat([memory, new], 1), index), torch.cat([valid, new_valid], 1).gather(1, index)
