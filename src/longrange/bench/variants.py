"""Attention variants the benchmarks time: name -> builder(d_model, n_heads, causal) -> (module, run).

``run(module, x)`` performs the forward pass the way a user would on a sequence x (B, L, D) and
returns the output; mechanisms add their own entries here (one line each).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from longrange.attention.compressive import CompressiveAttention
from longrange.attention.full import FullAttention
from longrange.attention.knn import KNNAttention
from longrange.attention.local import LocalAttention
from longrange.attention.lsh import LSHAttention
from longrange.attention.luna import LunaAttention
from longrange.attention.xl import XLAttention

XL_SEGMENT = 512  # XL reads a long sequence in segments of this length, memory of the same length


def _one_pass(module: nn.Module, x: Tensor) -> Tensor:
    return module(x, state=None, doc_start=None).out


def _segments(segment: int) -> Callable[[nn.Module, Tensor], Tensor]:
    """Run a stateful mechanism segment by segment over x, carrying (detached) state."""

    def run(module: nn.Module, x: Tensor) -> Tensor:
        state, outs = module.init_state(x.shape[0], x.device, x.dtype), []
        for start in range(0, x.shape[1], segment):
            out = module(x[:, start : start + segment], state=state, doc_start=None)
            state = out.state.detach()
            outs.append(out.out)
        return torch.cat(outs, dim=1)

    return run


Builder = Callable[[int, int, bool], tuple[nn.Module, Callable[[nn.Module, Tensor], Tensor]]]


def _lsh(n_hashes: int) -> Builder:
    def build(d: int, h: int, causal: bool):
        attn = LSHAttention(
            d,
            h,
            0.0,
            causal,
            0,
            n_hashes=n_hashes,
            bucket_size=64,
            n_buckets=None,
            chunks_before=1,
            chunks_after=0 if causal else 1,
            dedup=True,
            hash_seed=None,
        )
        return attn, _one_pass

    return build


def _luna(proj_len: int, chunk_len: int) -> Builder:
    """Luna as in the paper's experiments: keys and values share a projection (``share_projections``)."""

    def build(d: int, h: int, causal: bool):
        return LunaAttention(
            d, h, 0.0, causal, 0, proj_len=proj_len, activation="elu", share_projections=True, chunk_len=chunk_len
        ), _one_pass

    return build


class _Stack(nn.Module):
    """A Reformer layer stack over embeddings, reversible or plain (for the depth-memory benchmark)."""

    def __init__(self, d: int, h: int, depth: int, reversible: bool):
        super().__init__()
        from longrange.config import ModelConfig
        from longrange.model.build import build_model

        cfg = ModelConfig(
            d_model=d,
            n_heads=h,
            layers=["local", "lsh"] * (depth // 2),
            reversible=True,
            lsh={"bucket_size": 64, "n_hashes": 2},
            local={"chunk_len": 64},
        )
        self.lm = build_model(cfg)
        self.lm.reversible_backward = reversible

    def forward(self, x: Tensor) -> Tensor:
        state = self.lm.init_state(x.shape[0], x.device)
        return self.lm.run_blocks(x, state, None, None)[0]


def _stack(depth: int, reversible: bool) -> Builder:
    return lambda d, h, causal: (_Stack(d, h, depth, reversible), lambda m, x: m(x))


VARIANTS: dict[str, Builder] = {
    "full": lambda d, h, causal: (FullAttention(d, h, 0.0, causal, 0, rotary=False), _one_pass),
    "xl": lambda d, h, causal: (XLAttention(d, h, 0.0, True, 0, mem_len=XL_SEGMENT), _segments(XL_SEGMENT)),
    "lsh-1": _lsh(1),
    "lsh-2": _lsh(2),
    "lsh-4": _lsh(4),
    "lsh-8": _lsh(8),
    "local": lambda d, h, causal: (
        LocalAttention(d, h, 0.0, causal, 0, chunk_len=64, chunks_before=1, chunks_after=0 if causal else 1),
        _one_pass,
    ),
    "luna-16": _luna(16, chunk_len=32),  # chunk ~ sqrt(proj_len * head width): the fastest on CPU
    "luna-128": _luna(128, chunk_len=64),
    "compressive": lambda d, h, causal: (
        CompressiveAttention(
            d,
            h,
            0.0,
            True,
            0,
            mem_len=XL_SEGMENT // 2,
            cmem_len=XL_SEGMENT // 2,
            rate=4,
            compression="conv",
            loss="attention",
            loss_weight=1.0,
        ),
        _segments(XL_SEGMENT),
    ),
    "knn": lambda d, h, causal: (
        KNNAttention(d, h, 0.0, True, 0, memory_size=8192, topk=32, backend="exact", mem_len=XL_SEGMENT),
        _segments(XL_SEGMENT),
    ),
    **{f"{kind}-depth{n}": _stack(n, kind == "reversible") for kind in ("reversible", "plain") for n in (2, 4, 8)},
}
