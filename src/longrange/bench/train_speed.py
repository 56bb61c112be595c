"""Training throughput (tokens/s) per preset on the built-in corpus, with the first preset as baseline."""

from __future__ import annotations

import time

import torch

from longrange.bench.mfu import matmul_ceiling, mfu, model_flops_per_token
from longrange.config import ModelConfig
from longrange.data.corpus import load_corpus
from longrange.model.build import build_model
from longrange.runtime import peak_memory_mib, synchronize
from longrange.train.config import TrainConfig
from longrange.train.trainer import Trainer


def train_tokens_per_s(
    preset: str,
    steps: int,
    batch_size: int,
    threads: int,
    warmup: int = 2,
    overrides: dict | None = None,
    runtime: dict | None = None,
) -> dict:
    """Tokens/s of whole training steps; `runtime`: TrainConfig's device / precision / compile (default: the CPU,
    precision auto; the row says which precision ran).

    Also the model FLOPs per token, the fp32 matmul ceiling measured in this process right after the timed steps
    (at the model's shapes, same threads and device) and their ratio, the model-FLOPs utilisation ``mfu``.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    runtime = runtime or {}
    cfg = ModelConfig.from_name(preset, **(overrides or {}))
    documents = load_corpus(None).split("train")
    trainer = Trainer(
        build_model(cfg),
        TrainConfig(steps=steps + warmup, batch_size=batch_size, progress=False, **{"device": "cpu", **runtime}),
        documents,
        None,
        "unused",
    )
    for _ in range(warmup):
        trainer.train_step()
    synchronize(trainer.device)
    tokens, start = 0, time.perf_counter()
    for _ in range(steps):
        tokens += trainer.train_step()["tokens"]
    synchronize(trainer.device)
    elapsed = time.perf_counter() - start
    tokens_per_s = tokens / elapsed
    flops = model_flops_per_token(cfg)
    ceiling = matmul_ceiling(cfg, batch_size * cfg.segment_len, threads, device=trainer.device)
    return {
        "preset": preset,
        "threads": threads,
        "batch_size": batch_size,
        "segment_len": cfg.segment_len,
        "params": build_model(cfg).num_parameters(),
        "tokens_per_s": tokens_per_s,
        "model_flops_per_token": flops,
        "ceiling_gflops": ceiling["gflops"],
        "mfu": mfu(flops, tokens_per_s, ceiling["gflops"]),
        "device": str(trainer.device),
        "precision": trainer.cfg.precision,
        "peak_mib": peak_memory_mib(trainer.device),
        "step_s": elapsed / steps,
    }
