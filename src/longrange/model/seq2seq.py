"""`Seq2Seq`: an encoder-decoder built from the library's attention (Luna's machine-translation setting).

Shape legend: B batch, S source tokens, T target tokens, D model width, V vocabulary.

Encoder: the configured attention in its bidirectional form (`build_blocks(causal=False)`, Luna's P carried
from layer to layer). Decoder layer (pre-norm, as `Block`): causal self-attention of the configured kind, then
softmax cross-attention to the encoder's output, then the feed-forward. With ``layers: [luna, ...]`` this is the
Luna paper's setting (Ma et al. 2021, section 4.2: bidirectional Luna encoder, causal Luna decoder); with
``[full, ...]`` the standard Transformer it is compared with.

Choice stated: the cross-attention is ordinary softmax attention over the encoder's S outputs, as in the
reference implementation's decoder layer (its ``encoder_attn`` is a standard multi-head attention); Luna replaces
the self-attentions. Each decoder layer's causal Luna packs with its own learned P, as the library's causal form
does (see `longrange.attention.luna`).

Greedy decoding (`greedy`) carries each decoder layer's state from token to token: for causal Luna the prefix
sums (O(1) per token in the target length), for a stateless attention (full) it recomputes the whole prefix at
every step; the two give the same tokens as a full recomputation (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import merge_heads, split_heads
from longrange.config import ModelConfig
from longrange.model.blocks import run_blocks
from longrange.model.build import build_attention, build_blocks, build_positions
from longrange.model.feedforward import FeedForward


class CrossAttention(nn.Module):
    """Softmax attention of target positions over the encoder's outputs (padded source tokens hidden)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        """x (B, T, D), memory (B, S, D), memory_mask (B, S) bool (True = real) -> (B, T, D)."""
        q = split_heads(self.q(x), self.n_heads)  # (B, H, T, E)
        k, v = (split_heads(t, self.n_heads) for t in self.kv(memory).chunk(2, dim=-1))  # (B, H, S, E)
        mask = memory_mask[:, None, None, :] if memory_mask is not None else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(merge_heads(y))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str, layer_index: int):
        super().__init__()
        d = cfg.d_model
        self.self_norm, self.cross_norm, self.ff_norm = (nn.LayerNorm(d, eps=cfg.norm_eps) for _ in range(3))
        self.attention = build_attention(cfg, kind, layer_index, causal=True)
        self.cross = CrossAttention(d, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(d, cfg.d_ff, cfg.dropout, cfg.ff_chunks, cfg.ff_activation)
        self.dropout = cfg.dropout

    def forward(self, x, memory, memory_mask, state, carry):
        """x (B, T, D) -> (x, the self-attention's next state, its carry)."""
        a = self.attention(self.self_norm(x), state=state, carry=carry)
        x = x + F.dropout(a.out, self.dropout, self.training)
        x = x + F.dropout(self.cross(self.cross_norm(x), memory, memory_mask), self.dropout, self.training)
        x = x + F.dropout(self.ff(self.ff_norm(x)), self.dropout, self.training)
        return x, a.state, a.carry


class Seq2Seq(nn.Module):
    """Encoder-decoder over one shared vocabulary; ``cfg.layers`` gives the encoder's and the decoder's kinds."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = build_positions(cfg)
        self.encoder = nn.ModuleList(build_blocks(cfg, causal=False))
        self.encoder_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.decoder = nn.ModuleList(DecoderLayer(cfg, kind, i) for i, kind in enumerate(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def _embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        h = self.embed(tokens)
        if self.positions is not None:
            b, t = tokens.shape
            pos = torch.arange(offset, offset + t, device=tokens.device).expand(b, t)
            h = h + self.positions(pos).to(h.dtype)
        return F.dropout(h, self.config.dropout, self.training)

    def encode(self, source: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """source (B, S) -> memory (B, S, D)."""
        h, _, _ = run_blocks(self.encoder, self._embed(source), [None] * len(self.encoder), None, source_mask)
        return self.encoder_norm(h)

    def decode(self, target: Tensor, memory: Tensor, source_mask, states: list | None = None, offset: int = 0):
        """target (B, T) -> (logits (B, T, V), next states); `states` None starts every layer fresh."""
        h = self._embed(target, offset)
        states = states if states is not None else [None] * len(self.decoder)
        new_states, carry = [], None
        for layer, state in zip(self.decoder, states, strict=True):
            h, state, carry = layer(h, memory, source_mask, state, carry)
            new_states.append(state)
        return self.head(self.norm(h)), new_states

    def forward(self, source: Tensor, target_in: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: source (B, S), target_in (B, T) (BOS + target[:-1]) -> logits (B, T, V)."""
        return self.decode(target_in, self.encode(source, source_mask), source_mask)[0]

    @torch.no_grad()
    def greedy(self, source: Tensor, source_mask: Tensor | None, bos: int, steps: int) -> Tensor:
        """Greedy decoding of `steps` tokens after BOS -> (B, steps).

        A stateful decoder (causal Luna) reads one token per step into its recurrent state; a stateless one
        (full attention has no cache) recomputes the prefix. Runs all `steps` (no host sync to stop at EOS).
        """
        memory = self.encode(source, source_mask)
        b = source.shape[0]
        token = torch.full((b, 1), bos, dtype=torch.long, device=source.device)
        states = [layer.attention.init_state(b, memory.device, memory.dtype) for layer in self.decoder]
        recurrent = all(s is not None for s in states)
        prefix, out = token, []
        for t in range(steps):
            if recurrent:
                logits, states = self.decode(token, memory, source_mask, states, offset=t)
            else:
                logits, _ = self.decode(prefix, memory, source_mask)
            token = logits[:, -1:].argmax(-1)  # (B, 1)
            out.append(token)
            prefix = torch.cat([prefix, token], 1)
        return torch.cat(out, 1)
