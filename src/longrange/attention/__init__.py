"""Attention mechanisms behind one protocol; the registry maps a config `kind` to everything about it.

Each mechanism is registered here by one explicit `register` call (no import magic): its class, its
config section (a dataclass in `longrange.config`, or anywhere for a mechanism of your own), which of
the section's keys sets its memory size (the comparison's memory ablations) and the variants the
benchmarks time. Whether it carries state across segments is read from the class (``stateful``).
`register` also declares the section to `longrange.config`, so `ModelConfig` accepts the kind in
``layers`` and as a section key: a new mechanism is one file plus one `register` call (see
docs/architecture.md, "Adding a mechanism").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from longrange import config
from longrange.attention.base import AttentionModule, AttentionOutput
from longrange.attention.compressive import CompressiveAttention
from longrange.attention.full import FullAttention
from longrange.attention.knn import KNNAttention
from longrange.attention.local import LocalAttention
from longrange.attention.lsh import LSHAttention
from longrange.attention.luna import LunaAttention
from longrange.attention.xl import XLAttention
from longrange.config import (
    CompressiveConfig,
    FullConfig,
    KNNConfig,
    LocalConfig,
    LSHConfig,
    LunaConfig,
    XLConfig,
)

# settings of one benchmark variant: section overrides, or a function of `causal` returning them
BenchSettings = Mapping[str, Any] | Callable[[bool], Mapping[str, Any]]


@dataclass(frozen=True)
class Mechanism:
    """One registry entry. The benchmarks build ``cls(**section defaults, **bench[name])`` per variant."""

    kind: str
    cls: type[AttentionModule]
    section: type  # config dataclass; its fields are `cls`'s keyword arguments after the shared ones
    memory_size_key: str | None = None  # field of `section` that sets the memory size; None: no memory
    bench: Mapping[str, BenchSettings] = field(default_factory=dict)  # variant name -> settings

    @property
    def stateful(self) -> bool:
        return bool(self.cls.stateful)


MECHANISMS: dict[str, Mechanism] = {}
REGISTRY: dict[str, type[AttentionModule]] = {}  # kind -> class (what `build_model` instantiates)


def register(
    kind: str,
    cls: type[AttentionModule],
    section: type,
    *,
    memory_size_key: str | None = None,
    bench: Mapping[str, BenchSettings] | None = None,
) -> Mechanism:
    """Register attention `kind`: the model builds `cls` for it, configured by dataclass `section`."""
    config.register_section(kind, section, stateful=cls.stateful, memory_size_key=memory_size_key)
    mechanism = Mechanism(kind, cls, section, memory_size_key, dict(bench or {}))
    MECHANISMS[kind] = mechanism
    REGISTRY[kind] = cls
    return mechanism


def unregister(kind: str) -> None:
    """Remove attention `kind` from the registry and the config (tests that add a mechanism for a while)."""
    MECHANISMS.pop(kind, None)
    REGISTRY.pop(kind, None)
    config.unregister_section(kind)


def _bidirectional_chunks(**settings: Any) -> Callable[[bool], dict[str, Any]]:
    """Settings for chunked mechanisms: a bidirectional layer also looks one chunk ahead."""
    return lambda causal: {**settings, "chunks_after": 0 if causal else 1}


# Order matters for the comparison's memory ablation: when a model's layers have several memories, the
# mechanism registered last is ablated (kNN memory over XL caches, compressed memory over XL memory).
# Benchmark memories match the benchmarks' segment of 512 tokens (`longrange.bench.variants.XL_SEGMENT`).
register("full", FullAttention, FullConfig, bench={"full": {"rotary": False}})
register("xl", XLAttention, XLConfig, memory_size_key="mem_len", bench={"xl": {"mem_len": 512}})
register(
    "lsh",
    LSHAttention,
    LSHConfig,
    bench={f"lsh-{n}": _bidirectional_chunks(n_hashes=n, bucket_size=64, n_buckets=None) for n in (1, 2, 4, 8)},
)
register("local", LocalAttention, LocalConfig, bench={"local": _bidirectional_chunks(chunk_len=64)})
register(
    "luna",
    LunaAttention,
    LunaConfig,
    # chunk ~ sqrt(proj_len * head width): the fastest on CPU; keys and values share a projection, as in the paper
    bench={"luna-16": {"proj_len": 16, "chunk_len": 32}, "luna-128": {"proj_len": 128, "chunk_len": 64}},
)
register(
    "compressive",
    CompressiveAttention,
    CompressiveConfig,
    memory_size_key="cmem_len",
    bench={"compressive": {"mem_len": 256, "cmem_len": 256, "rate": 4, "compression": "conv"}},
)
register(
    "knn",
    KNNAttention,
    KNNConfig,
    memory_size_key="memory_size",
    bench={"knn": {"memory_size": 8192, "topk": 32, "backend": "exact", "mem_len": 512}},
)

__all__ = [
    "MECHANISMS",
    "REGISTRY",
    "AttentionModule",
    "AttentionOutput",
    "CompressiveAttention",
    "FullAttention",
    "KNNAttention",
    "LSHAttention",
    "LocalAttention",
    "LunaAttention",
    "Mechanism",
    "XLAttention",
    "register",
    "unregister",
]
