"""Model FLOPs per training token and the measured matmul ceiling: model-FLOPs utilisation (MFU).

MFU = model FLOPs per token x tokens/s / matmul FLOP/s measured on this machine in the same run, as nanoGPT's
``estimate_mfu`` does (there against a GPU's datasheet peak; CPUs have no trustworthy datasheet figure, and
these machines are shared, so the ceiling is measured: ``torch.mm`` at the model's own shapes on the run's
thread count, in fp32, or in bf16 / fp16 for a run under that autocast).

Model FLOPs (PaLM appendix B, nanoGPT): the FLOPs the model's definition needs, counted as 3x the forward
(forward 1x, backward 2x), with no recomputation (a reversible stack recomputes its forward in backward: that is
hardware FLOPs, not model FLOPs) and no elementwise work. Per token, with d = d_model:

    6 N_tok                              every nn.Linear applied to each token (Q/K/V/out, feed-forward, LM head);
                                         embeddings are lookups and cost nothing
  + sum over layers of attention(layer)

where a layer's attention costs ``12 d K`` for K keys attended per query on average (scores q.k and the weighted
sum of values: 2 x 2dK forward, x 3), with a per-mechanism K and extras. Each mechanism declares its term when it
registers (``flops``: the ``flops`` method of each built-in config section under `longrange.attention`, with the
formula in its docstring), and a search it does besides (``search_flops``: the kNN search, ``2 d M`` per token over
M stored keys, forward only), which is retrieval, not the model's arithmetic, and is counted only on request.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import nn

from longrange.config import ModelConfig, sections
from longrange.model.build import build_model

# Linear layers whose rows are not the segment's tokens: counted in the mechanism's term instead of 6 N_tok
_PER_SEGMENT_LINEARS = ("r_proj", "pack_q", "decoder")


def _attention_flops(cfg: ModelConfig, kind: str, t: int, include_search: bool, memory_size: int | None) -> float:
    """Training FLOPs per token of one layer of attention `kind`: its registered ``flops`` (and ``search_flops``)."""
    facts = sections()[kind]
    if facts.flops is None:
        known = ", ".join(k for k, s in sections().items() if s.flops is not None)
        raise ValueError(f"no FLOP formula registered for attention kind {kind!r}; registered: {known}")
    section = cfg.section(kind)
    flops = facts.flops(section, cfg.d_model, t)
    if include_search and facts.search_flops is not None:
        if memory_size is not None and facts.memory_size_key:
            section = dataclasses.replace(section, **{facts.memory_size_key: memory_size})
        flops += facts.search_flops(section, cfg.d_model)
    return flops


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weights of the nn.Linear layers applied to every token (N_tok); the model is built on the meta device."""
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in _PER_SEGMENT_LINEARS
    )


def model_flops_per_token(
    cfg: ModelConfig, segment_len: int | None = None, include_search: bool = False, memory_size: int | None = None
) -> float:
    """Training FLOPs per token (forward + backward) of `cfg` at `segment_len` (default cfg.segment_len).

    The formula per mechanism is in this module's docstring. `include_search` adds the kNN search over
    `memory_size` stored keys (default the configured size).
    """
    t = segment_len or cfg.segment_len
    flops = 6 * matmul_params_per_token(cfg)
    return float(flops + sum(_attention_flops(cfg, kind, t, include_search, memory_size) for kind in cfg.layers))


def matmul_ceiling(
    cfg: ModelConfig,
    tokens: int,
    threads: int,
    seconds: float = 0.6,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Matmul FLOP/s in `dtype` at the model's shapes: (tokens x d) @ (d x 4d) and (tokens x 4d) @ (4d x d).

    The best of the shapes is the ceiling (GFLOP/s); each shape is timed in repeats of ~`seconds` / 6 s and
    its fastest repeat kept, since a shared machine only ever slows a repeat down. On CUDA the timings are
    synchronised (fp32 there may use TF32 if the run allows it, as the model's matmuls then do too). A run under
    bf16 (fp16) autocast is judged against the bf16 (fp16) rate: its matrix products run in that dtype.
    """
    torch.set_num_threads(threads)
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    d, f = cfg.d_model, cfg.d_ff
    shapes = [(tokens, d, f), (tokens, f, d), (tokens, d, 3 * d)]
    best: dict[str, float] = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up
        sync()
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        one = max(time.perf_counter() - start, 1e-6)
        reps = max(1, int(seconds / len(shapes) / 3 / one))
        fastest = math.inf
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            sync()
            fastest = min(fastest, (time.perf_counter() - start) / reps)
        best[f"{m}x{k}x{n}"] = 2 * m * k * n / fastest / 1e9
    return {
        "gflops": max(best.values()),
        "by_shape": best,
        "threads": threads,
        "dtype": str(dtype).removeprefix("torch."),
    }


def mfu(flops_per_token: float, tokens_per_s: float, ceiling_gflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the measured matmul ceiling."""
    return flops_per_token * tokens_per_s / (ceiling_gflops * 1e9)
