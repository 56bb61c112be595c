"""Log-likelihood of a continuation given a context, as lm-evaluation-harness asks it of a causal LM.

The harness scores ``(context, continuation)`` by one call on ``(context + continuation)[:-1]`` and sums the
log-probabilities of the continuation's tokens at the last ``len(continuation)`` positions. Through
`LongRangeForCausalLM` that call is a scoring call (`longrange eval`'s reading: the text from its start, segment by
segment, memories carried), so the sum over a whole document equals minus `longrange eval`'s total loss on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from longrange.hf.modeling import LongRangeForCausalLM


@torch.no_grad()
def loglikelihood(
    model: LongRangeForCausalLM,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), whether greedy decoding gives the continuation)`` per request.

    Token ids in, one request per call (no padding, which would enter the memories). ``max_length`` keeps the last
    ``max_length`` input tokens (the harness's left truncation); None keeps them all, which a model with memories
    reads segment by segment at any length.
    """
    results = []
    device = model.device
    for context, continuation in requests:
        if not context or not continuation:
            raise ValueError("a request needs at least one context token and one continuation token")
        whole = list(context) + list(continuation)
        inputs = whole[:-1] if max_length is None else whole[-(max_length + 1) : -1]
        logits = model(torch.tensor([inputs], device=device)).logits[0, -len(continuation) :]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(continuation, device=device)
        total = logprobs.gather(-1, target[:, None]).sum()
        greedy = (logprobs.argmax(-1) == target).all()
        results.append((float(total), bool(greedy)))
    return results
