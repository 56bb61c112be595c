"""Optimiser and learning-rate schedule: linear warmup from `init_lr` to `lr`, cosine decay to `min_lr`."""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, *, lr: float, min_lr: float, init_lr: float, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return init_lr + (lr - init_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module,
    *,
    kind: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """AdamW (decay on matrices only) or Adam (the Compressive paper's recipe, no decay).

    ``fused``: torch's fused implementation (one kernel for every parameter's update, on CUDA and on the CPU);
    None leaves torch's default (the foreach implementation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
