"""Model FLOPs per training token and the measured fp32 matmul ceiling: model-FLOPs utilisation (MFU).

MFU = model FLOPs per token x tokens/s / matmul FLOP/s measured on this machine in the same run, as nanoGPT's
``estimate_mfu`` does (there against a GPU's datasheet peak; CPUs have no trustworthy datasheet figure, and
these machines are shared, so the ceiling is measured: fp32 ``torch.mm`` at the model's own shapes on the run's
thread count).

Model FLOPs (PaLM appendix B, nanoGPT): the FLOPs the model's definition needs, counted as 3x the forward
(forward 1x, backward 2x), with no recomputation (a reversible stack recomputes its forward in backward: that is
hardware FLOPs, not model FLOPs) and no elementwise work. Per token, with d = d_model:

    6 N_tok                              every nn.Linear applied to each token (Q/K/V/out, feed-forward, LM head);
                                         embeddings are lookups and cost nothing
  + sum over layers of attention(layer)

where a layer's attention costs ``12 d K`` for K keys attended per query on average (scores q.k and the weighted
sum of values: 2 x 2dK forward, x 3), with a per-mechanism K and extras (T = segment length):

- full: K = (T + 1) / 2 (causal; nanoGPT counts K = T, which doubles this term).
- xl: K = mem_len + (T + 1) / 2, plus the relative position scores (q + v) . R over the same keys (another
  ``6 d K``), plus W_R applied to the L + 1 distances of a segment: ``6 d^2 (L + 1) / T`` with L = mem_len + T;
  with ``positions: t5`` a looked-up bias replaces both (``12 d K`` only).
- compressive: as xl with mem_len -> cmem_len + mem_len; plus the compression of T evicted states into T / c
  slots (a kernel-c, stride-c convolution: ``6 d^2`` per token; none for max/mean/most-used) and the attention
  reconstruction loss: T queries over the T evicted and the T / c compressed states (``12 d (T + T / c)``,
  non-causal) with the compressed slots' keys/values projected (``12 d^2 / c``); autoencoding instead decodes
  each slot to its c states (``6 d^2``).
- knn: local attention over K = mem_len + (T + 1) / 2 (a T5 bias, no matmul) plus attention over the top-k
  retrieved pairs (``12 d k``). The search itself (``2 d M`` per token over M stored keys, forward only) is not
  counted by default: it is retrieval, not the model's arithmetic; ``include_search=True`` adds it.
- lsh: n_hashes rounds, each query attending its chunk of bucket_size b (causal: (b + 1) / 2) and chunks_before
  (+ chunks_after) whole chunks: K = n_hashes (b (before + after) + (b + 1) / 2); plus the hashing, forward only
  (no gradient through argmax): ``2 d n_hashes n_buckets / 2`` (random rotations to n_buckets / 2 directions).
- local: K = chunk_len (before + after) + (chunk_len + 1) / 2.
- luna (causal): pack (l slots over the prefix) and unpack (the token over l packed slots): K = 2 l; the pack
  queries' projection runs on the l slots of P per segment (``6 d^2 l / T``).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from longrange.config import ModelConfig

# Linear layers whose rows are not the segment's tokens: counted in the mechanism's term instead of 6 N_tok
_PER_SEGMENT_LINEARS = ("r_proj", "pack_q", "decoder")


def _attention_flops(cfg: ModelConfig, kind: str, t: int, include_search: bool, memory_size: int | None) -> float:
    """Training FLOPs per token of one layer of attention `kind` (see the module docstring)."""
    d = cfg.d_model
    causal_k = (t + 1) / 2
    if kind == "full":
        return 12 * d * causal_k
    if kind in ("xl", "compressive"):
        sec = getattr(cfg, kind)
        n_prev = sec.mem_len + (sec.cmem_len if kind == "compressive" else 0)
        k = n_prev + causal_k
        if kind == "xl" and sec.positions == "t5":  # a looked-up bias: no position scores, no W_R
            return 12 * d * k
        flops = 18 * d * k + 6 * d * d * (n_prev + t + 1) / t  # content + position scores, values; W_R
        if kind == "compressive" and sec.compression in ("conv", "dilated_conv"):
            c = sec.rate
            flops += 6 * d * d  # the convolution: d x (c d) weights on T / c groups
            if sec.loss == "attention":
                flops += 12 * d * (t + t / c) + 12 * d * d / c
            else:
                flops += 6 * d * d
        return flops
    if kind == "knn":
        sec = cfg.knn
        flops = 12 * d * (sec.mem_len + causal_k) + 12 * d * sec.topk
        if include_search:
            flops += 2 * d * (sec.memory_size if memory_size is None else memory_size)
        return flops
    if kind == "lsh":
        sec = cfg.lsh
        b = sec.bucket_size
        k = sec.n_hashes * (b * (sec.chunks_before + sec.chunks_after) + (b + 1) / 2)
        n_buckets = sec.n_buckets if sec.n_buckets is not None else 2 * math.ceil(t / b)
        if isinstance(n_buckets, list):
            n_buckets = math.prod(n_buckets)
        return 12 * d * k + 2 * d * sec.n_hashes * n_buckets / 2
    if kind == "local":
        sec = cfg.local
        return 12 * d * (sec.chunk_len * (sec.chunks_before + sec.chunks_after) + (sec.chunk_len + 1) / 2)
    if kind == "luna":
        sec = cfg.luna
        return 12 * d * 2 * sec.proj_len + 6 * d * d * sec.proj_len / t
    known = "full, xl, compressive, knn, lsh, local, luna"
    raise ValueError(f"no FLOP formula for attention kind {kind!r}; known: {known}")


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weights of the nn.Linear layers applied to every token (N_tok); the model is built on the meta device."""
    from longrange.model.build import build_model

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
    cfg: ModelConfig, tokens: int, threads: int, seconds: float = 0.6, device: str | torch.device = "cpu"
) -> dict:
    """fp32 matmul FLOP/s at the model's shapes: (tokens x d) @ (d x 4d) and (tokens x 4d) @ (4d x d).

    The best of the shapes is the ceiling (GFLOP/s); each shape is timed in repeats of ~`seconds` / 6 s and
    its fastest repeat kept, since a shared machine only ever slows a repeat down. On CUDA the timings are
    synchronised (fp32 there may use TF32 if the run allows it, as the model's matmuls then do too).
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
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        out = torch.empty(m, n, device=device)
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
    return {"gflops": max(best.values()), "by_shape": best, "threads": threads}


def mfu(flops_per_token: float, tokens_per_s: float, ceiling_gflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the measured matmul ceiling."""
    return flops_per_token * tokens_per_s / (ceiling_gflops * 1e9)
