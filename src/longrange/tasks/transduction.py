"""Generated transduction tasks whose answer needs the whole input: reverse or sort a sequence of symbols.

Shape legend: B batch, L the longest source (``max_len``); targets are one longer (EOS).
Tokens: PAD 0, BOS 1, EOS 2, then ``n_symbols`` symbols. A source of n symbols (``min_len`` <= n <= ``max_len``,
uniform) is padded to L; the decoder reads BOS + answer and predicts answer + EOS; target positions after EOS
hold `IGNORE` (not scored). Reversal: the first output symbol is the last input one, so every output needs a
different input position; sorting: every output depends on the counts of the whole input.
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3
IGNORE = -100
TASKS = ("reverse", "sort")


def transduction_batch(
    task: str, batch: int, min_len: int, max_len: int, n_symbols: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> source (B, L), source_mask (B, L) bool, target_in (B, L + 1), target_out (B, L + 1), on `gen`'s device
    (whatever the default device is: a CPU generator cannot draw CUDA tensors)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {list(TASKS)}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"min_len={min_len} and max_len={max_len} need 1 <= min_len <= max_len")
    with torch.device(gen.device):
        lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)  # (B,)
        symbols = torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + n_symbols, (batch, max_len), generator=gen)
        positions = torch.arange(max_len)
        mask = positions[None, :] < lengths[:, None]  # (B, L)
        source = symbols.masked_fill(~mask, PAD)
        if task == "reverse":  # answer[i] = source[n - 1 - i]
            index = (lengths[:, None] - 1 - positions[None, :]).clamp(min=0)
            answer = source.gather(1, index)
        else:  # padding sorts last: give it a key above every symbol
            answer = source.masked_fill(~mask, FIRST_SYMBOL + n_symbols).sort(1).values
        answer = answer.masked_fill(~mask, PAD)
        target_out = torch.cat([answer, torch.full((batch, 1), PAD)], 1)  # (B, L + 1)
        target_out.scatter_(1, lengths[:, None], EOS)
        target_out = target_out.masked_fill(
            positions.new_tensor(range(max_len + 1))[None, :] > lengths[:, None], IGNORE
        )
        target_in = torch.cat([torch.full((batch, 1), BOS), target_out[:, :-1].clamp(min=PAD)], 1)
        return source, mask, target_in, target_out


def exact_match(predicted: Tensor, target_out: Tensor) -> Tensor:
    """predicted, target_out (B, L + 1) -> (B,) bool: every scored position (answer and EOS) right."""
    scored = target_out != IGNORE
    return ((predicted == target_out) | ~scored).all(1)
