"""`build_model(cfg)`: the only reader of `ModelConfig`; everything below takes plain arguments."""

from __future__ import annotations

import dataclasses

from longrange.attention import REGISTRY
from longrange.attention.base import AttentionModule
from longrange.config import ConfigError, ModelConfig
from longrange.model.blocks import Block
from longrange.model.lm import EMBED_INIT_STD, LongRangeLM
from longrange.model.positions import AbsolutePositions, AxialPositions


def build_attention(cfg: ModelConfig, kind: str, layer_index: int, causal: bool = True) -> AttentionModule:
    """One attention module of registry `kind`, configured from the config section of that name."""
    if kind not in REGISTRY:
        raise ConfigError(f"attention kind {kind!r} is not available; registered kinds: {sorted(REGISTRY)}")
    section = dataclasses.asdict(cfg.section(kind))
    return REGISTRY[kind](
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        dropout=cfg.dropout,
        causal=causal,
        layer_index=layer_index,
        **section,
    )


def build_positions(cfg: ModelConfig, sinusoid_scale: float = 1.0):
    """The absolute positions `cfg` asks for (None: none); `sinusoid_scale`: the RMS of the token embeddings they
    are added to (`AbsolutePositions`)."""
    if cfg.positions == "none":
        return None
    if cfg.positions == "axial":
        return AxialPositions(cfg.d_model, list(cfg.axial_shape), cfg.axial_dims)
    return AbsolutePositions(cfg.positions, cfg.d_model, cfg.max_len, sinusoid_scale)


def build_blocks(cfg: ModelConfig, causal: bool = True) -> list[Block]:
    return [
        Block(
            build_attention(cfg, kind, i, causal),
            cfg.d_model,
            cfg.d_ff,
            cfg.dropout,
            cfg.ff_chunks,
            activation=cfg.ff_activation,
            norm_eps=cfg.norm_eps,
        )
        for i, kind in enumerate(cfg.layers)
    ]


def build_model(cfg: ModelConfig) -> LongRangeLM:
    """A `LongRangeLM` for `cfg` (a `ModelConfig`, or a preset name)."""
    if isinstance(cfg, str):
        cfg = ModelConfig.from_name(cfg)
    return LongRangeLM(
        build_blocks(cfg),
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        dropout=cfg.dropout,
        positions=build_positions(cfg, sinusoid_scale=EMBED_INIT_STD),
        head_chunks=cfg.head_chunks,
        tie_embeddings=cfg.tie_embeddings,
        reversible=cfg.reversible,
        readout=cfg.reversible_readout,
        head_bias=cfg.head_bias,
        norm_eps=cfg.norm_eps,
        eval_padding=(cfg.eval_pad_multiple, cfg.eval_pad_min, cfg.pad_token),
        config=cfg,
    )
