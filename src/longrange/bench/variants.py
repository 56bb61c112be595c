"""Attention variants the benchmarks time: name -> builder(d_model, n_heads, causal) -> (module, run).

``run(module, x)`` performs the forward pass the way a user would on a sequence x (B, L, D) and
returns the output. The variants of each mechanism come from its registration
(`longrange.attention.register(..., bench=...)`): its section's defaults plus the variant's settings,
run in one pass, or segment by segment with its state carried when the mechanism is stateful. The
reversible/plain depth stacks are defined here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from longrange.attention import MECHANISMS, Mechanism
from longrange.config import ModelConfig
from longrange.model.build import build_model

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


def _registered(mechanism: Mechanism, settings: Any) -> Builder:
    """A variant of a registered mechanism: its section's defaults updated with `settings`."""

    def build(d: int, h: int, causal: bool):
        causal = causal or mechanism.cls.causal_only  # XL-style memories are causal only
        overrides = settings(causal) if callable(settings) else settings
        kwargs = {**dataclasses.asdict(mechanism.section()), **overrides}
        module = mechanism.cls(d_model=d, n_heads=h, dropout=0.0, causal=causal, layer_index=0, **kwargs)
        return module, _segments(XL_SEGMENT) if mechanism.stateful else _one_pass

    return build


class _Stack(nn.Module):
    """A Reformer layer stack over embeddings, reversible or plain (for the depth-memory benchmark)."""

    def __init__(self, d: int, h: int, depth: int, reversible: bool):
        super().__init__()
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


def _stacks() -> dict[str, Builder]:
    return {f"{kind}-depth{n}": _stack(n, kind == "reversible") for kind in ("reversible", "plain") for n in (2, 4, 8)}


class _Variants(Mapping[str, Builder]):
    """name -> builder, read from the registry at each use (a mechanism registered later is included)."""

    def _table(self) -> dict[str, Builder]:
        table = {
            name: _registered(mechanism, settings)
            for mechanism in MECHANISMS.values()
            for name, settings in mechanism.bench.items()
        }
        return {**table, **_stacks()}

    def __getitem__(self, name: str) -> Builder:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


VARIANTS: Mapping[str, Builder] = _Variants()
