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
from longrange.runtime import autocast, maybe_compile, resolve_precision


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
    probabilities = logits.softmax(-1)
    if generator is not None:  # drawn where the generator is (generation's is on the CPU: any device, same tokens)
        probabilities = probabilities.to(generator.device)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def generate(model: LongRangeLM, prompt_tokens: list[int], max_new_tokens: int, **options) -> list[int]:
    """Returns the `max_new_tokens` sampled tokens that follow `prompt_tokens` (see `stream_generate`)."""
    return list(stream_generate(model, prompt_tokens, max_new_tokens, **options))


def generate_batch(
    model: LongRangeLM, prompts: list[list[int]], max_new_tokens: int, *, seed: int | None = None, **options
) -> list[list[int]]:
    """The continuations of several prompts, each row of a batch with its own memories (see `stream_generate`).

    Prompt i samples from its own generator seeded ``seed + i``, so its continuation is the one
    ``generate(model, prompts[i], seed=seed + i)`` gives. Prompts of equal token length share one batch; prompts
    of different lengths run as separate batches, deliberately: a shorter prompt would have to be padded, and
    the padding would enter its memories (XL caches, the kNN store), so it would not continue like the prompt
    alone.
    """
    results: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(len(prompt), []).append(i)
    for rows in groups.values():
        seeds = [None if seed is None else seed + i for i in rows]
        for step in _stream_rows(model, [prompts[i] for i in rows], max_new_tokens, seeds=seeds, **options):
            for i, token in zip(rows, step, strict=True):
                results[i].append(token)
    return results


def stream_generate(
    model: LongRangeLM,
    prompt_tokens: list[int],
    max_new_tokens: int,
    *,
    seed: int | None = None,
    **options,
) -> Iterator[int]:
    """Yields the `max_new_tokens` tokens that follow `prompt_tokens`, each as soon as it is sampled
    (deterministic with a seed).

    Options: ``temperature`` (1.0), ``top_k``, ``top_p``, ``segment_len`` (the model's), ``device``,
    ``precision`` ("fp32"), ``compile`` (False).
    Sampling draws from a private CPU `torch.Generator`, so the same seed gives the same tokens on any
    device and global RNG state is left alone. ``device`` moves the model there (default: where it is).
    ``precision`` runs the model under autocast ("auto": as `resolve_precision` decides for the model and device);
    ``compile`` through `torch.compile`.
    """
    for step in _stream_rows(model, [prompt_tokens], max_new_tokens, seeds=[seed], **options):
        yield step[0]


def _stream_rows(
    model: LongRangeLM,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    seeds: list[int | None],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    segment_len: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> Iterator[list[int]]:
    """Yields, per step, one sampled token for each of the B prompts (all of one length): rows of one batch."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if not prompts or not all(prompts):
        raise ValueError("the prompt is empty; give at least one token")
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts of one batch must have the same length (generate_batch groups them)")
    if device is not None:
        model.to(device)
    model.eval()
    device = model.embed.weight.device
    precision = resolve_precision(precision, device, model.config)
    forward = maybe_compile(model, compile)
    generators = []
    for seed in seeds:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed if seed is not None else torch.seed())
        generators.append(generator)
    segment_len = segment_len or model.config.segment_len
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    batch = len(prompts)

    def run(tokens: Tensor, state=None):
        with torch.no_grad(), autocast(device, precision):
            return forward(tokens, state=state)

    def draw(logits: Tensor) -> list[int]:  # logits (B, V); one host copy per step, then per-row sampling
        logits = logits.cpu()
        return [sample_next(logits[b], generator=generators[b], **sample) for b in range(batch)]

    if carries_state(model):
        state = model.init_state(batch, device)
        prompt = torch.tensor(prompts, dtype=torch.long, device=device)  # (B, L)
        for start in range(0, prompt.shape[1], segment_len):  # stream the prompt into every memory
            out = run(prompt[:, start : start + segment_len], state)
            state = out.state
        logits = out.logits[:, -1]  # (B, V)
        for _ in range(max_new_tokens):
            tokens = draw(logits)
            yield tokens
            out = run(torch.tensor(tokens, device=device)[:, None], state)
            state, logits = out.state, out.logits[:, -1]
        return
    context = torch.tensor(prompts, dtype=torch.long)  # (B, L + generated)
    for _ in range(max_new_tokens):
        window = context[:, -segment_len:].to(device)
        tokens = draw(run(window).logits[:, -1])
        yield tokens
        context = torch.cat([context, torch.tensor(tokens)[:, None]], dim=1)
