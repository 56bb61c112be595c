"""`LongRangeLM`: token embeddings -> blocks (one attention kind per layer) -> LM head.

Shape legend: B batch, T tokens, D model width, V vocabulary.

    out = model(tokens (B, T), state=state, doc_start=doc_start (B,) bool, targets=None)
    out.logits (B, T, V), out.state (ModelState), out.aux_loss (scalar or None), out.loss (if targets)

The state is explicit: pass the returned state into the next segment's call. At the start of a
call the rows in `doc_start` are cleared (every layer's memory, the kNN store rows, the position
counter), so a new document never sees its predecessor.

Layers that keep only a decode cache for streaming generation (Reformer LSH/local) build it when
the caller passes a state (``model.init_state(B)``, as `longrange.generate` does); a call without
one builds none, so training and evaluation of whole sequences pay nothing for it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.memory.state import ModelState
from longrange.model.blocks import Block, run_blocks
from longrange.model.feedforward import apply_chunked
from longrange.model.reversible import plain_reversible, reversible, reversible_with_state

IGNORE_INDEX = -100  # targets with this value (padding) count in no loss


class LMOutput(NamedTuple):
    logits: Tensor | None  # (B, T, V); None when the head ran chunked inside the loss
    state: ModelState
    aux_loss: Tensor | None  # sum of the layers' auxiliary losses
    aux_losses: dict[str, Tensor]  # per layer, e.g. {"layer3/compression": ...}, for logging
    loss: Tensor | None = None  # mean cross-entropy over targets != IGNORE_INDEX


class LongRangeLM(nn.Module):
    def __init__(
        self,
        blocks: list[Block],
        vocab_size: int,
        d_model: int,
        dropout: float = 0.0,
        positions: nn.Module | None = None,
        head_chunks: int = 1,
        tie_embeddings: bool = False,
        reversible: bool = False,
        config=None,
        readout: str = "mean",
        head_bias: bool = False,
        norm_eps: float = 1e-5,
        eval_padding: tuple[int, int, int] = (1, 0, 0),
    ):
        super().__init__()
        self.config = config  # the ModelConfig it was built from (saved beside checkpoints)
        if readout not in ("mean", "concat") or (readout == "concat" and (not reversible or tie_embeddings)):
            raise ValueError(
                f"reversible_readout={readout!r}: choose 'mean' or 'concat' ('concat' needs reversible: true "
                "and tie_embeddings: false)"
            )
        self.readout = readout  # reversible stack: "mean" (Y1 + Y2) / 2 or "concat" [Y1 ; Y2] (2D wide)
        width = 2 * d_model if readout == "concat" else d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        self.positions = positions
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.head = nn.Linear(width, vocab_size, bias=head_bias)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        self.dropout, self.head_chunks = dropout, head_chunks
        self.reversible = reversible  # reversible residual stack (Reformer); see model/reversible.py
        self.reversible_backward = True  # False: the plain twin (same function, ordinary autograd)
        # (multiple, minimum length, token): ModelConfig.eval_pad_multiple / eval_pad_min / pad_token
        self.eval_padding = eval_padding
        if reversible and self.stateful:
            raise ValueError("reversible blocks cannot carry memories across segments; set reversible: false")
        self.apply(_init_weights)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device: torch.device | str | None = None, caches: bool = True) -> ModelState:
        """Empty memories for `batch_size` rows; ``caches=False``: None for decode-cache-only layers."""
        device = torch.device(device) if device is not None else self.embed.weight.device
        dtype = self.embed.weight.dtype
        layers = [
            b.attention.init_state(batch_size, device, dtype) if caches or b.attention.stateful else None
            for b in self.blocks
        ]
        return ModelState(layers, torch.zeros(batch_size, dtype=torch.long, device=device))

    @property
    def stateful(self) -> bool:
        return any(b.attention.stateful for b in self.blocks)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        tokens: Tensor,
        state: ModelState | None = None,
        doc_start: Tensor | None = None,
        targets: Tensor | None = None,
        pad_mask: Tensor | None = None,
    ) -> LMOutput:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, time) int64, got shape {tuple(tokens.shape)}")
        multiple, shortest, pad_token = self.eval_padding
        extra = -tokens.shape[1] % multiple
        if extra and tokens.shape[1] > shortest and state is None and not self.training and not self.stateful:
            return self._forward_padded(tokens, extra, pad_token, doc_start, targets, pad_mask)
        b, t = tokens.shape
        if state is None:  # memories start empty; decode caches are built only for a given state
            state = self.init_state(b, tokens.device, caches=False)
        elif state.batch_size != b:
            raise ValueError(f"state is for batch size {state.batch_size}, tokens have batch size {b}")
        state = state.reset(doc_start)

        h = self.embed(tokens)  # (B, T, D)
        if self.positions is not None:
            h = h + self.positions(state.pos[:, None] + torch.arange(t, device=tokens.device)).to(h.dtype)
        h = F.dropout(h, self.dropout, self.training)
        h, layer_states, aux_losses = self.run_blocks(h, state, doc_start, pad_mask)
        h = self.norm(h)

        n_real = pad_mask.sum(1) if pad_mask is not None else torch.full_like(state.pos, t)
        new_state = ModelState(layer_states, state.pos + n_real)
        aux_loss = torch.stack(list(aux_losses.values())).sum() if aux_losses else None
        if targets is None:
            return LMOutput(self.head(h), new_state, aux_loss, aux_losses)
        if self.head_chunks > 1:  # bound the (B, T, V) logits to one chunk at a time
            loss_sum = apply_chunked(self._loss_sum, self.head_chunks, 1, h, targets).sum()
            loss = loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1)
            return LMOutput(None, new_state, aux_loss, aux_losses, loss)
        logits = self.head(h)
        return LMOutput(logits, new_state, aux_loss, aux_losses, lm_loss(logits, targets))

    def _forward_padded(
        self,
        tokens: Tensor,
        extra: int,
        pad_token: int,
        doc_start: Tensor | None,
        targets: Tensor | None,
        pad_mask: Tensor | None,
    ) -> LMOutput:
        """`forward` on tokens followed by `extra` masked pad tokens (ModelConfig.eval_pad_multiple; the caller's
        pad_mask, if any, extended), their targets ignored and their logits dropped: only their effect on the
        real tokens' attention remains (models without memories only, so no state keeps the padding)."""
        b, t = tokens.shape
        real = torch.ones(b, t, dtype=torch.bool, device=tokens.device) if pad_mask is None else pad_mask.bool()
        padded_targets = None if targets is None else F.pad(targets, (0, extra), value=IGNORE_INDEX)
        out = self.forward(
            F.pad(tokens, (0, extra), value=pad_token), None, doc_start, padded_targets, F.pad(real, (0, extra))
        )
        return out._replace(logits=None if out.logits is None else out.logits[:, :t])

    def run_blocks(
        self, h: Tensor, state: ModelState, doc_start: Tensor | None, pad_mask: Tensor | None
    ) -> tuple[Tensor, list, dict[str, Tensor]]:
        """Run every block, threading each layer's state and the attention carry (Luna's P)."""
        if self.reversible:
            if not torch.is_grad_enabled() and any(s is not None for s in state.layers):
                # streaming generation: thread each layer's decode cache (no backward pass to save memory for)
                h, layers = reversible_with_state(self.blocks, h, state.layers, self.readout, pad_mask)
                return h, layers, {}
            use_custom = self.reversible_backward and torch.is_grad_enabled()
            run = reversible if use_custom else plain_reversible
            h = run(self.blocks, h, self.readout, pad_mask)
            return h, list(state.layers), {}
        return run_blocks(self.blocks, h, state.layers, doc_start, pad_mask)

    def _loss_sum(self, h: Tensor, targets: Tensor) -> Tensor:
        logits = self.head(h)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return loss.view(1, 1)  # concatenable along dim 1

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy (nats) over targets != IGNORE_INDEX; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


EMBED_INIT_STD = 0.02  # embeddings and linear weights start at N(0, 0.02^2); absolute sinusoids are scaled to it


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=EMBED_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=EMBED_INIT_STD)
