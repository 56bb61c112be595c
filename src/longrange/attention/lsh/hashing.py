"""Angular LSH of the Reformer (Kitaev et al. 2020): bucket = argmax([x Rot ; -x Rot]) per hash round.

Shape legend: B batch, H heads, T tokens, E head width, R hash rounds, K buckets (K = K1 * K2 ... when factorised).

Rotations are drawn fresh from torch's RNG in training (so the reversible block, which records and restores the RNG
state, re-hashes identically when it recomputes) and from a generator seeded with ``hash_seed`` otherwise (None:
seed 0), so evaluation is deterministic. Many buckets are factorised as K = K1 * K2 (bucket = b1 + K1 * b2, each
from its own random rotation), as the Reformer does for long sequences, so the rotated vectors cost (K1 + K2) / 2
instead of K / 2 per item.
"""

from __future__ import annotations

import torch
from torch import Tensor

HASH_BLOCK = 1024  # positions hashed at once


def draw_rotations(shape: tuple[int, int, int], training: bool, seed: int | None, device, dtype) -> Tensor:
    """Random rotations of `shape` (E, R, sum K_i / 2): torch's RNG in training, else a generator seeded by `seed`."""
    if training:
        return torch.randn(shape, device=device, dtype=dtype)
    g = torch.Generator(device="cpu").manual_seed(seed if seed is not None else 0)
    return torch.randn(shape, generator=g, device="cpu").to(device=device, dtype=dtype)  # same on any device


def hash_buckets(qk: Tensor, rot: Tensor, factors: list[int]) -> Tensor:
    """qk (B, H, T, E), rot (E, R, sum K_i / 2) -> buckets (B, H, R, T) in [0, K1 * K2 ...)."""
    # blocks of positions: the rotated vectors of one block stay in cache between the product and the
    # maxima (the whole (B, H, R, sum K_i / 2, Tp) tensor is 400 MB at 64K: 1.3x slower)
    blocks = [bucket_ids(rot, part, factors) for part in qk.split(HASH_BLOCK, dim=2)]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)


def bucket_ids(rot: Tensor, qk: Tensor, factors: list[int]) -> Tensor:
    """rot (E, R, sum K_i / 2) rotations, qk (B, H, T, E) -> buckets (B, H, R, T), bucket = b1 + K1 * b2 + ..."""
    r, k = rot.shape[1:]
    # (B, H, R, sum K_i / 2, T): positions innermost, so the maxima over rotations are vectorised across them
    rotated = (rot.permute(1, 2, 0).reshape(r * k, -1) @ qk.transpose(-1, -2)).view(*qk.shape[:2], r, k, -1)
    buckets, scale, start = 0, 1, 0
    for f in factors:
        part = rotated[..., start : start + f // 2, :]
        # argmax over [x ; -x] without building it: the largest |x_i|, in the second half when that x_i < 0
        negative = part.amin(-2).neg_() > part.amax(-2)
        index = part.abs_().max(-2).indices + (f // 2) * negative
        buckets, scale, start = buckets + scale * index, scale * f, start + f // 2
    return buckets


def product(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def factorise(n_buckets: int, largest: int = 64) -> list[int]:
    """Even factors of n_buckets (each <= `largest` when possible): [K] or [K1, K2]."""
    if n_buckets <= largest:
        return [n_buckets]
    for k1 in range(largest, 1, -2):
        if n_buckets % k1 == 0 and (n_buckets // k1) % 2 == 0:
            return [k1, n_buckets // k1]
    return [n_buckets]
