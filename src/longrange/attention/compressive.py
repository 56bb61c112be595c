"""Compressive Transformer attention (Rae et al. 2020): XL memory plus a compressed memory.

Shape legend: B batch, T segment tokens, M memory slots (n_m), S compressed slots (n_cm),
P pending states (< c), L = S + M + T keys, D model width, H heads, E head width, c rate.

Each layer attends over [compressed memory ; memory ; segment] with Transformer-XL relative
positions (one position per slot). When the segment enters the memory, the T oldest states are
evicted and compressed by rate c into T / c slots appended to the compressed memory, whose oldest
slots are dropped in turn. Evicted states that do not fill a whole group of c (e.g. one token at a
time during generation) wait in a small pending buffer, so no state is lost or invented.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import AttentionModule, AttentionOutput, fifo_append, merge_heads, split_heads
from longrange.attention.xl import RelativePositionScores
from longrange.memory.compress import Compressor
from longrange.memory.state import LayerState
from longrange.model.positions import sinusoid


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
                "pending": zeros(0, self.d_model),  # (B, P, D) evicted, waiting for a full group
                "pending_valid": zeros(0, kind=torch.bool),
                "pending_usage": zeros(0, kind=torch.float32),
            }
        )

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        if pad_mask is not None:
            raise ValueError("compressive attention reads whole segments; padded batches are not supported")
        b, t, _ = x.shape
        if state is None:
            state = self.init_state(b, x.device, x.dtype)
        cmem, mem = state["cmem"].to(x.dtype), state["mem"].to(x.dtype)
        n_prev = cmem.shape[1] + mem.shape[1]
        keys_in = torch.cat([cmem, mem, x], dim=1)  # (B, L, D)
        q = split_heads(self.q(x), self.n_heads)  # (B, H, T, E)
        k, v = (split_heads(z, self.n_heads) for z in self.kv(keys_in).chunk(2, dim=-1))  # (B, H, L, E)
        prev_valid = torch.cat([state["cmem_valid"], state["mem_valid"]], dim=1)  # (B, S + M)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        mask = torch.cat([prev_valid[:, None, None, :].expand(b, 1, t, n_prev), causal.expand(b, 1, t, t)], -1)
        y, weights = _attention(
            q, k, v, _position_scores(self.rel, q, n_prev), mask, self.u_bias, self.dropout, self.training
        )
        if self.record_attention:
            self.last_attention = {"weights": weights.detach(), "cmem": cmem.shape[1], "mem": mem.shape[1]}

        next_state, aux = self._update_memories(
            state, x, q, k, v, weights if self.compressor.kind == "most_used" else None
        )
        return AttentionOutput(self.out(merge_heads(y)), next_state, aux)

    # ------------------------------------------------------------------ memories
    def _update_memories(self, state: LayerState, x: Tensor, q: Tensor, k: Tensor, v: Tensor, weights: Tensor | None):
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

        # join the pending states; compress whole groups of c, keep the rest pending
        n_pending = state["pending"].shape[1]
        group = torch.cat([state["pending"].to(x.dtype), evicted], 1) if n_pending else evicted
        group_valid = torch.cat([state["pending_valid"], evicted_valid], 1) if n_pending else evicted_valid
        group_usage = torch.cat([state["pending_usage"], evicted_usage], 1) if n_pending else evicted_usage
        n_full = (group.shape[1] // self.rate) * self.rate
        to_compress = group[:, :n_full].detach()  # stop-gradient: the LM loss never trains compression
        # (B, n_full / c, D) and (B, n_full / c)
        compressed, compressed_valid = self.compressor.compress(
            to_compress, group_valid[:, :n_full], group_usage[:, :n_full]
        )
        aux = None
        if n_full and self.compressor.learned:
            # keys/values of the evicted states were computed for this segment's attention (keys [cmem ; mem ; x],
            # the evicted ones at [S, S + T)); reuse them when no pending state precedes them (always in training)
            old_kv = (k[:, :, s : s + n_full], v[:, :, s : s + n_full]) if n_pending == 0 else None
            aux = self._compression_loss(to_compress, compressed, compressed_valid, q, old_kv)

        cmem, cmem_valid = fifo_append(
            state["cmem"], state["cmem_valid"], compressed.detach(), self.cmem_len, compressed_valid
        )
        next_state = state.replace(
            cmem=cmem,
            cmem_valid=cmem_valid,
            mem=all_states[:, n_evict:],
            mem_valid=all_valid[:, n_evict:],
            mem_usage=usage,
            mem_age=age,
            pending=group[:, n_full:],
            pending_valid=group_valid[:, n_full:],
            pending_usage=group_usage[:, n_full:],
        )
        return next_state, aux

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


def _position_scores(rel: RelativePositionScores, q: Tensor, n_prev: int) -> Tensor:
    """The XL position term (q + v) . W_R R[i - j] for keys [previous slots ; segment], unscaled (B, H, T, L).

    Equal to ``rel(q, n_prev)`` (`RelativePositionScores`, the same parameters) on every key a query may attend
    to; entries of future keys (j > P + i) hold arbitrary finite values that the causal mask removes. Instead of
    gathering each query's distances (an index tensor, and a scatter-add over (B, H, T, L) backward), the scores
    are computed for the L + 1 distances L, L - 1, ..., 0 and row i is shifted left by T - i by reading the
    (T, L + 1) rows as (L + 1, T) and dropping the first T entries (the shift of the Transformer-XL paper's
    appendix B, here with no padding copy: the extra distance column plays the padding's part). A view, no copy.
    """
    b, h, t, e = q.shape
    n_keys = n_prev + t
    distance = torch.arange(n_keys, -1, -1, device=q.device)  # column c holds distance L - c
    r = rel.r_proj(sinusoid(distance, rel.d_model).to(q.dtype)).view(n_keys + 1, h, e).permute(1, 2, 0)  # (H, E, L+1)
    by_distance = (q + rel.v_bias[:, None, :]) @ r  # (B, H, T, L + 1)
    # out[i, j] = by_distance[i, j + T - i], i.e. distance L - (j + T - i) = (P + i) - j, for every j <= P + i
    return by_distance.view(b, h, n_keys + 1, t)[:, :, 1:].view(b, h, t, n_keys)


def _attention(
    q: Tensor, k: Tensor, v: Tensor, rel: Tensor, mask: Tensor, u_bias: Tensor, dropout: float, training: bool
) -> tuple[Tensor, Tensor]:
    """XL attention computed explicitly: returns (out (B, H, T, E), weights (B, H, T, L) before dropout).

    The same function as `relative_attention` (xl.py). ``F.scaled_dot_product_attention`` with a bias that needs a
    gradient falls back on CPU to its math path, which copies and checks the (B, H, T, L) scores several times;
    here the scores are built once and edited in place (content + position, scale, mask bias), which is faster, and the
    weights come for free (most-used compression and the attention analysis read them).
    """
    scale = q.shape[-1] ** -0.5
    scores = ((q + u_bias[:, None, :]) * scale) @ k.transpose(-1, -2)  # (B, H, T, L)
    # the mask as an additive bias: (B|1, 1, T, L), H times smaller than the scores, and its backward is free
    bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~mask, float("-inf"))
    scores = scores.add_(rel, alpha=scale).add_(bias)
    weights = scores.softmax(-1)
    dropped = F.dropout(weights, dropout) if training and dropout > 0 else weights
    return dropped @ v, weights
