"""Streaming generation that carries every memory.

The prompt is read segment by segment into the model state (XL and compressed memories, the kNN
store, Luna's prefix sums, Reformer's decode caches); sampling then feeds one token at a time and
the memories keep updating. Models whose layers keep no state (plain full attention) recompute
over a sliding window of the last `segment_len` tokens instead, the context they were trained on.

`stream_generate` yields each token as soon as it is sampled (a caller prints as it goes);
`generate` collects them. Sampling options are checked first (`check_sampling`): temperature >= 0
(0 is greedy), top_k >= 1, top_p in (0, 1], max_new_tokens >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from longrange.model.lm import LongRangeLM
from longrange.train.runtime import autocast, maybe_compile


class NonFiniteLogits(ValueError):
    """The model produced NaN or infinite logits, so no token can be sampled."""


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> None:
    """ValueError (one line naming the option) for sampling settings that cannot mean what they say."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens (--max-new-tokens) must be >= 0, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature (--temperature) must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k (--top-k) must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p (--top-p) must be in (0, 1], got {top_p}")


def carries_state(model: LongRangeLM) -> bool:
    """True when every layer keeps a memory or a decode cache, so token-by-token decoding is exact."""
    return all(b.attention.stateful or b.attention.decode_cache for b in model.blocks)


def sample_next(logits: Tensor, *, temperature: float, top_k: int | None, top_p: float | None, generator) -> int:
    """Sample one token from logits (V,): temperature, then top-k, then nucleus (top-p) filtering."""
    if not torch.isfinite(logits).all():  # generation syncs once per token anyway (the sampled id)
        raise NonFiniteLogits("the model produced NaN or infinite logits; its weights are broken (a diverged run?)")
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def generate(model: LongRangeLM, prompt_tokens: list[int], max_new_tokens: int, **options) -> list[int]:
    """Returns the `max_new_tokens` sampled tokens that follow `prompt_tokens` (see `stream_generate`)."""
    return list(stream_generate(model, prompt_tokens, max_new_tokens, **options))


def stream_generate(
    model: LongRangeLM,
    prompt_tokens: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    segment_len: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> Iterator[int]:
    """Yields the `max_new_tokens` tokens that follow `prompt_tokens`, each as soon as it is sampled
    (deterministic with a seed).

    Sampling draws from a private CPU `torch.Generator`, so the same seed gives the same tokens on any
    device and global RNG state is left alone. ``device`` moves the model there (default: where it is).
    ``precision`` runs the model under autocast; ``compile`` through `torch.compile`.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if not prompt_tokens:
        raise ValueError("the prompt is empty; give at least one token")
    if device is not None:
        model.to(device)
    model.eval()
    device = model.embed.weight.device
    forward = maybe_compile(model, compile)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed if seed is not None else torch.seed())
    segment_len = segment_len or model.config.segment_len
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    def run(tokens: Tensor, state=None):
        with torch.no_grad(), autocast(device, precision):
            return forward(tokens, state=state)

    if carries_state(model):
        state = model.init_state(1, device)
        prompt = torch.tensor([prompt_tokens], dtype=torch.long, device=device)
        for start in range(0, prompt.shape[1], segment_len):  # stream the prompt into every memory
            out = run(prompt[:, start : start + segment_len], state)
            state = out.state
        logits = out.logits[0, -1]
        for _ in range(max_new_tokens):
            token = sample_next(logits.cpu(), **sample)
            yield token
            out = run(torch.tensor([[token]], device=device), state)
            state, logits = out.state, out.logits[0, -1]
        return
    context = list(prompt_tokens)
    for _ in range(max_new_tokens):
        window = torch.tensor([context[-segment_len:]], dtype=torch.long, device=device)
        token = sample_next(run(window).logits[0, -1].cpu(), **sample)
        yield token
        context.append(token)
