"""A new mechanism is one class plus one registration: it trains, evaluates, generates and compares.

The mechanism, its config section and its preset are defined here, in the test, and registered at run
time; no file of the library is touched (the registry is the one source for mechanisms).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import longrange
from longrange.attention import register, unregister
from longrange.attention.base import AttentionModule, AttentionOutput, merge_heads, split_heads
from longrange.config import PRESETS, ConfigError, register_preset


@dataclass
class WindowConfig:
    window: int = 8  # each token attends to itself and to the `window` tokens before it


class WindowAttention(AttentionModule):
    """Sliding-window softmax attention: the toy mechanism (stateless, so generation recomputes)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool, layer_index: int, window: int):
        super().__init__()
        self.n_heads, self.window, self.causal = n_heads, window, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, *, state, doc_start, pad_mask=None, carry=None) -> AttentionOutput:
        q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, E)
        pos = torch.arange(x.shape[1], device=x.device)
        back = pos[:, None] - pos[None, :]  # (T, T): how far key j lies behind query i
        allowed = (back <= self.window) & ((back >= 0) if self.causal else (back >= -self.window))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return AttentionOutput(self.proj(merge_heads(out)), None)


@pytest.fixture
def window_mechanism():
    register("window", WindowAttention, WindowConfig, memory_size_key="window", bench={"window-4": {"window": 4}})
    register_preset(
        "window-tiny", {"d_model": 32, "n_heads": 2, "layers": ["window", "window"], "segment_len": 32, "window": {}}
    )
    yield
    unregister("window")
    PRESETS.pop("window-tiny", None)


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(12):
        (root / f"d{i:02d}.txt").write_bytes(f"doc {i}: key={i * 7919 % 1000:03d}\n".encode() * 6)
    return str(root)


def test_new_mechanism_trains_evaluates_generates_and_compares(window_mechanism, corpus, tmp_path):
    """About 5 s: four tiny trainings of two steps (API, compare, CLI train, CLI compare), each path end to end."""
    from longrange.bench.variants import VARIANTS
    from longrange.cli import main
    from longrange.compare import CompareConfig, compare
    from longrange.eval.evaluate import evaluate
    from longrange.generate import generate
    from longrange.train import TrainConfig, train

    # the config accepts the kind, its section (constructor, dotted overrides, YAML) and checks its types
    cfg = longrange.ModelConfig.from_name("window-tiny", **{"window.window": 6})
    assert cfg.window.window == 6 and not cfg.stateful
    assert longrange.ModelConfig(layers=["window"], window={"window": 3}).window.window == 3
    cfg.to_file(tmp_path / "window.yaml")
    assert "window:\n  window: 6" in (tmp_path / "window.yaml").read_text()
    assert longrange.ModelConfig.from_file(tmp_path / "window.yaml") == cfg
    with pytest.raises(ConfigError, match=r"window.window='wide' must be an integer"):
        cfg.replace(**{"window.window": "wide"})

    # public API: train, load, evaluate, generate
    run = tmp_path / "run"
    train(cfg, TrainConfig(steps=2, batch_size=2, warmup_steps=1, log_every=1, progress=False), corpus, run)
    model = longrange.load(run)
    assert isinstance(model.blocks[0].attention, WindowAttention) and model.blocks[0].attention.window == 6
    result = evaluate(model, [b"doc 1: key=919\n" * 4], batch_size=1)
    assert math.isfinite(result["bpb"]) and 0 < result["bpb"] < 9
    assert len(generate(model, list(b"doc "), 5, seed=0)) == 5

    # compare: the memory ablation reads the registration's memory_size_key
    out = compare(
        CompareConfig(systems=["window"], steps=2, data=corpus, eval_docs=1, eval_bytes=64),
        tmp_path / "cmp",
        isolate=False,
    )
    ablations = json.loads((out / "results.json").read_text())["window"]["ablations"]
    assert [(a["key"], a["value"]) for a in ablations] == [("window.window", v) for v in (0, 4, 8, 16)]

    # the benchmark variant declared by the registration
    module, run_variant = VARIANTS["window-4"](32, 2, True)
    assert module.window == 4 and run_variant(module, torch.randn(1, 16, 32)).shape == (1, 16, 32)

    # the command line
    cli_run = str(tmp_path / "cli-run")
    assert main(["train", "--preset", "window-tiny", "--data", corpus, "--out", cli_run, "--steps", "2"]) == 0
    assert main(["eval", cli_run, "--docs", "1"]) == 0
    assert main(["generate", cli_run, "--prompt", "doc ", "--max-new-tokens", "4", "--seed", "0"]) == 0
    compare_args = ["--steps", "2", "--data", corpus, "--eval-docs", "1", "--eval-bytes", "64", "--in-process"]
    assert main(["compare", "--systems", "window", *compare_args, "--out", str(tmp_path / "cli-cmp")]) == 0
    assert (tmp_path / "cli-cmp" / "runs" / "window" / "done").exists()


def test_new_mechanism_registration_is_checked_and_undone(window_mechanism):
    from longrange.attention import MECHANISMS, REGISTRY
    from longrange.config import sections

    assert REGISTRY["window"] is WindowAttention and MECHANISMS["window"].section is WindowConfig
    assert sections()["window"].memory_size_key == "window" and not sections()["window"].stateful
    for kind, match in [("layers", "no ModelConfig field"), ("replace", "no ModelConfig field"), ("a-b", "identifier")]:
        with pytest.raises(ValueError, match=match):
            register(kind, WindowAttention, WindowConfig)
    with pytest.raises(ValueError, match="'size' is not a field of WindowConfig"):
        register("window2", WindowAttention, WindowConfig, memory_size_key="size")
    unregister("window")
    with pytest.raises(ConfigError, match=r"layers\[0\]='window' is not allowed"):
        longrange.ModelConfig(layers=["window"])


@dataclass
class CacheConfig:
    size: int = 8  # tokens the toy memory keeps
    on_disk: bool = False
    folder: str | None = None

    def reach(self) -> tuple[int, str]:
        return 3 * self.size, "3 x size"

    def run_files(self, folder: Path) -> dict:
        return {"folder": str(folder / "cache")} if self.on_disk and self.folder is None else {}


class CacheAttention(WindowAttention):
    """A stateful toy: only its registered facts are read here, no model is built."""

    stateful = True

    def __init__(self, d_model, n_heads, dropout, causal, layer_index, size, on_disk, folder):
        super().__init__(d_model, n_heads, dropout, causal, layer_index, window=size)


@pytest.fixture
def cache_mechanism():
    # registered after kNN but ranked below it, as XL's cache is: the rank, not the order, picks the ablation
    register(
        "cache",
        CacheAttention,
        CacheConfig,
        memory_size_key="size",
        memory_rank=0,
        reach=CacheConfig.reach,
        whole_row=True,
        run_files=CacheConfig.run_files,
        flops=lambda section, d_model, segment_len: 1000.0 * section.size,
        search_flops=lambda section, d_model: 10.0 * section.size,
    )
    register_preset("cache-tiny", {"d_model": 32, "n_heads": 2, "layers": ["cache"], "segment_len": 32})
    yield
    unregister("cache")
    PRESETS.pop("cache-tiny", None)


def test_the_programs_read_a_mechanisms_facts_from_its_registration(cache_mechanism, tmp_path):
    from longrange.compare import CompareConfig, memory_key, reach, whole_row_systems

    cfg = longrange.ModelConfig(layers=["cache", "cache"], segment_len=16, cache={"size": 4})
    assert reach(cfg) == (16 + 2 * 12, "segment + 2 x 3 x size")  # the declared reach, per layer
    # the ablated memory: the highest rank (kNN over the cache registered after it), then the upper layer
    assert memory_key(longrange.ModelConfig(layers=["knn", "cache"])) == "knn.memory_size"
    assert memory_key(longrange.ModelConfig(layers=["cache", "xl"])) == "xl.mem_len"
    assert memory_key(longrange.ModelConfig(layers=["xl", "cache"])) == "cache.size"
    # whole-row reading: a system whose every layer is registered for one pass
    assert whole_row_systems("tiny") == ["reformer", "luna", "cache"]
    assert CompareConfig(size="tiny").whole_row == ["reformer", "luna", "cache"]
    assert CompareConfig(size="tiny", whole_row=[]).whole_row == []
    # files the mechanism keeps in a run folder
    assert cfg.with_run_files(tmp_path) is cfg
    on_disk = cfg.replace(**{"cache.on_disk": True}).with_run_files(tmp_path)
    assert on_disk.cache.folder == str(tmp_path / "cache")
    # model FLOPs: the declared term per layer; the search only on request, at the memory size asked for
    from longrange.bench.mfu import matmul_params_per_token, model_flops_per_token

    linears = 6 * matmul_params_per_token(cfg)
    assert model_flops_per_token(cfg) == linears + 2 * 4000
    assert model_flops_per_token(cfg, include_search=True, memory_size=5) == linears + 2 * (4000 + 50)


def test_the_built_in_facts():
    from longrange.compare import CompareConfig, memory_key, reach

    assert CompareConfig(size="small").whole_row == ["reformer", "luna"]
    cfg = longrange.ModelConfig.from_name("memorizing-tiny")  # XL layers and one kNN layer: the kNN memory is ablated
    assert memory_key(cfg) == "knn.memory_size"
    assert reach(longrange.ModelConfig.from_name("compressive-tiny")) == (
        64 + 2 * (32 + 8 * 4),
        "segment + 2 x (mem_len + cmem_len x rate)",
    )
    disk = cfg.replace(**{"knn.storage": "disk"})
    assert cfg.with_run_files("run") is cfg
    assert disk.with_run_files("run").knn.storage_dir == str(Path("run") / "knn-memory")
