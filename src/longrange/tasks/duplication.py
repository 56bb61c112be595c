"""The Reformer paper's duplication task: sequences ``0 w 0 w``.

w is a string of L symbols drawn uniformly from 1..127; the model must copy it, so the loss and
accuracy are measured on the second w only. Solving it needs attention from each position of the
second copy to the matching position of the first, L + 1 tokens back: LSH attention can do it only
when the two copies hash to the same bucket, which more hash rounds make likelier (the paper's
Table 2: models trained with LSH reach ~100% with 2+ evaluation hashes, 1 hash is clearly worse).
"""

from __future__ import annotations

import torch
from torch import Tensor

VOCAB = 128


def duplication_batch(batch_size: int, length: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """tokens (B, 2L + 2) = [0, w, 0, w] and targets (B, 2L + 2) with -100 outside the second w."""
    device = generator.device if generator is not None else None  # a CPU generator cannot draw CUDA tensors
    w = torch.randint(1, VOCAB, (batch_size, length), generator=generator, device=device)
    zero = w.new_zeros(batch_size, 1)
    tokens = torch.cat([zero, w, zero, w], dim=1)
    targets = torch.full_like(tokens, -100)
    targets[:, length + 1 : 2 * length + 1] = w  # predicting w[i] from position L + 1 + i
    return tokens, targets


def duplication_accuracy(logits: Tensor, targets: Tensor) -> float:
    """Fraction of second-copy symbols predicted correctly (argmax)."""
    scored = targets != -100
    return float((logits.argmax(-1)[scored] == targets[scored]).float().mean())
