"""Attention mechanisms behind one protocol; the registry maps a config `kind` to everything about it.

Each mechanism is registered here by one explicit `register` call (no import magic): its class, its
config section (a dataclass defined beside the class, in the mechanism's module), and the facts the
programs read instead of testing the kind by name: which of the section's keys sets its memory size and
how it ranks among a model's memories (the comparison's memory ablations), how far back it lets a
prediction see (reach), whether it is built to read a long sequence in one pass, which files it keeps
in a run folder, and the variants the benchmarks time. Whether it carries state across segments is read
from the class (``stateful``). `register` also declares the section and its facts to `longrange.config`,
so `ModelConfig` accepts the kind in ``layers`` and as a section key: a shipped mechanism, like one of
your own, is one file plus one `register` call (see docs/architecture.md, "Adding a mechanism").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrange import config
from longrange.attention.base import AttentionModule, AttentionOutput
from longrange.attention.compressive import CompressiveAttention, CompressiveConfig
from longrange.attention.full import FullAttention, FullConfig
from longrange.attention.knn import KNNAttention, KNNConfig
from longrange.attention.local import LocalAttention, LocalConfig
from longrange.attention.lsh import LSHAttention, LSHConfig
from longrange.attention.luna import LunaAttention, LunaConfig
from longrange.attention.xl import XLAttention, XLConfig

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
    facts: config.Section | None = None  # what the config and the programs read (reach, whole row, ...)

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
    memory_rank: int = 1,
    reach: Callable[[Any], tuple[int, str]] | None = None,
    whole_row: bool = False,
    run_files: Callable[[Any, Path], dict[str, Any]] | None = None,
    flops: Callable[[Any, int, int], float] | None = None,
    search_flops: Callable[[Any, int], float] | None = None,
    bench: Mapping[str, BenchSettings] | None = None,
) -> Mechanism:
    """Register attention `kind`: the model builds `cls` for it, configured by dataclass `section`.

    The keyword arguments are the mechanism's facts, documented on `longrange.config.Section`; `bench` maps a
    benchmark variant's name to its section settings.
    """
    facts = config.register_section(
        kind,
        section,
        stateful=cls.stateful,
        memory_size_key=memory_size_key,
        memory_rank=memory_rank,
        reach=reach,
        whole_row=whole_row,
        run_files=run_files,
        flops=flops,
        search_flops=search_flops,
    )
    mechanism = Mechanism(kind, cls, section, memory_size_key, dict(bench or {}), facts)
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


# Benchmark memories match the benchmarks' segment of 512 tokens (`longrange.bench.variants.XL_SEGMENT`).
register("full", FullAttention, FullConfig, flops=FullConfig.flops, bench={"full": {"rotary": False}})
register(
    "xl",
    XLAttention,
    XLConfig,
    memory_size_key="mem_len",
    memory_rank=0,  # the cache that compressed and kNN memories extend: ablate theirs in a model with both
    reach=XLConfig.reach,
    flops=XLConfig.flops,
    bench={"xl": {"mem_len": 512}},
)
register(
    "lsh",
    LSHAttention,
    LSHConfig,
    whole_row=True,
    flops=LSHConfig.flops,
    bench={f"lsh-{n}": _bidirectional_chunks(n_hashes=n, bucket_size=64, n_buckets=None) for n in (1, 2, 4, 8)},
)
register(
    "local",
    LocalAttention,
    LocalConfig,
    whole_row=True,  # the Reformer's other layer: linear in the length, read in one pass with LSH
    flops=LocalConfig.flops,
    bench={"local": _bidirectional_chunks(chunk_len=64)},
)
register(
    "luna",
    LunaAttention,
    LunaConfig,
    whole_row=True,
    flops=LunaConfig.flops,
    # chunk ~ sqrt(proj_len * head width): the fastest on CPU; keys and values share a projection, as in the paper
    bench={"luna-16": {"proj_len": 16, "chunk_len": 32}, "luna-128": {"proj_len": 128, "chunk_len": 64}},
)
register(
    "compressive",
    CompressiveAttention,
    CompressiveConfig,
    memory_size_key="cmem_len",
    reach=CompressiveConfig.reach,
    flops=CompressiveConfig.flops,
    bench={"compressive": {"mem_len": 256, "cmem_len": 256, "rate": 4, "compression": "conv"}},
)
register(
    "knn",
    KNNAttention,
    KNNConfig,
    memory_size_key="memory_size",
    reach=KNNConfig.reach,
    run_files=KNNConfig.run_files,
    flops=KNNConfig.flops,
    search_flops=KNNConfig.search_flops,
    bench={"knn": {"memory_size": 8192, "topk": 32, "backend": "exact", "mem_len": 512}},
)

__all__ = [
    "MECHANISMS",
    "REGISTRY",
    "AttentionModule",
    "AttentionOutput",
    "CompressiveAttention",
    "CompressiveConfig",
    "FullAttention",
    "FullConfig",
    "KNNAttention",
    "KNNConfig",
    "LSHAttention",
    "LSHConfig",
    "LocalAttention",
    "LocalConfig",
    "LunaAttention",
    "LunaConfig",
    "Mechanism",
    "XLAttention",
    "XLConfig",
    "register",
    "unregister",
]
