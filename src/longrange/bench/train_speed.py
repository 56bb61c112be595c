"""Training throughput (tokens/s) per preset on the built-in corpus, with the first preset as baseline.

`train_tokens_per_s` times whole training steps at one batch size; `sweep_batch_sizes` doubles the batch size
until the device runs out of memory, a cap or a time budget, and `best_point` keeps the fastest; `profile_steps`
writes torch.profiler's table of time by kernel for a few steps.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from longrange.bench.mfu import matmul_ceiling, mfu, model_flops_per_token
from longrange.config import ModelConfig
from longrange.data.corpus import load_corpus
from longrange.model.build import build_model
from longrange.runtime import autocast_dtype, peak_memory_mib, synchronize
from longrange.train.optim import build_optimizer
from longrange.train.trainer import TrainConfig, Trainer

PROFILE_ROWS = 40  # rows of the profile table (the kernels that take the most time)


def make_trainer(
    preset: str,
    batch_size: int,
    steps: int,
    overrides: dict | None = None,
    runtime: dict | None = None,
    fused_adamw: bool = False,
) -> Trainer:
    """A trainer of `preset` on the built-in corpus that writes nothing (no run folder, no metrics).

    `runtime`: TrainConfig's device / precision / compile (default: the CPU, precision auto). `fused_adamw`: the
    optimiser is torch's fused AdamW (one kernel for all parameters) instead of the default implementation."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(preset, **(overrides or {}))
    documents = load_corpus(None).split("train")
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, progress=False, **{"device": "cpu", **(runtime or {})})
    trainer = Trainer(build_model(cfg), train_cfg, documents, None, "unused")
    if fused_adamw:
        train_cfg = trainer.cfg
        trainer.optimizer = build_optimizer(
            trainer.model,
            kind=train_cfg.optimizer,
            lr=train_cfg.lr,
            weight_decay=train_cfg.weight_decay,
            betas=tuple(train_cfg.betas),
            fused=True,
        )
    return trainer


def train_tokens_per_s(
    preset: str,
    steps: int,
    batch_size: int,
    threads: int,
    warmup: int = 2,
    overrides: dict | None = None,
    runtime: dict | None = None,
    fused_adamw: bool = False,
) -> dict:
    """Tokens/s of whole training steps (see `make_trainer` for `runtime` and `fused_adamw`; the row says which
    precision ran).

    Also the model FLOPs per token, the matmul ceiling measured in this process right after the timed steps (at
    the model's shapes, same threads and device, in the dtype the run's autocast computes in: bf16 for a bf16
    run) and their ratio, the model-FLOPs utilisation ``mfu``; the peak memory of the device (CUDA) from the
    trainer's start, and the seconds of the warm-up steps (with ``compile``: the compilation).
    """
    torch.set_num_threads(threads)
    device = torch.device(str((runtime or {}).get("device", "cpu")))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = make_trainer(preset, batch_size, steps + warmup, overrides, runtime, fused_adamw)
    cfg = trainer.model.config
    start = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    synchronize(trainer.device)
    warmup_s = time.perf_counter() - start
    tokens, start = 0, time.perf_counter()
    for _ in range(steps):
        tokens += trainer.train_step()["tokens"]
    synchronize(trainer.device)
    elapsed = time.perf_counter() - start
    peak = peak_memory_mib(trainer.device)
    tokens_per_s = tokens / elapsed
    flops = model_flops_per_token(cfg)
    dtype = autocast_dtype(trainer.cfg.precision) or torch.float32
    ceiling = matmul_ceiling(cfg, batch_size * cfg.segment_len, threads, device=trainer.device, dtype=dtype)
    return {
        "preset": preset,
        "threads": threads,
        "batch_size": batch_size,
        "segment_len": cfg.segment_len,
        "params": trainer.model.num_parameters(),
        "tokens_per_s": tokens_per_s,
        "model_flops_per_token": flops,
        "ceiling_gflops": ceiling["gflops"],
        "ceiling_dtype": ceiling["dtype"],
        "mfu": mfu(flops, tokens_per_s, ceiling["gflops"]),
        "device": str(trainer.device),
        "precision": trainer.cfg.precision,
        "compile": trainer.cfg.compile,
        "fused_adamw": fused_adamw,
        "peak_mib": peak,
        "step_s": elapsed / steps,
        "warmup_s": warmup_s,
    }


def is_out_of_memory(error: BaseException) -> bool:
    """A device (or host) allocation that failed: CUDA's OutOfMemoryError, or the CPU allocator's error."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def sweep_batch_sizes(
    preset: str,
    steps: int,
    start: int,
    cap: int,
    threads: int,
    *,
    seconds: float = 0.0,
    on_point: Callable[[dict], None] | None = None,
    **options,
) -> list[dict]:
    """`train_tokens_per_s` (`options`: its keywords) at batch sizes start, 2 start, 4 start ... up to `cap`.

    The sweep stops at the first batch size that runs out of memory (a row with status "out of memory"), at the
    cap, or (``seconds`` > 0) when the next point, taking about twice the last one, would end past ``seconds``
    from the sweep's start. Each row has a status ("ok", "out of memory"); `on_point` sees each as it is done.
    """
    if start < 1 or cap < start:
        raise ValueError(f"batch sizes from {start} to {cap}: need 1 <= --batch-size <= --max-batch-size")
    rows: list[dict] = []
    began, batch = time.perf_counter(), start
    while batch <= cap:
        point_start = time.perf_counter()
        try:
            row = {**train_tokens_per_s(preset, steps, batch, threads, **options), "status": "ok"}
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            row = {"preset": preset, "batch_size": batch, "status": "out of memory"}
        _release_memory()  # the failed point's tensors, before the next (or the next preset) allocates
        rows.append(row)
        if on_point is not None:
            on_point(row)
        if row["status"] != "ok":
            break
        took, batch = time.perf_counter() - point_start, batch * 2
        if seconds > 0 and time.perf_counter() - began + 2 * took > seconds:
            break
    return rows


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def best_point(rows: list[dict]) -> dict | None:
    """The fastest measured row (tokens/s) of a sweep, with the batch sizes tried and why the sweep stopped."""
    measured = [r for r in rows if r.get("status") == "ok"]
    if not measured:
        return None
    best = max(measured, key=lambda r: r["tokens_per_s"])
    stopped = rows[-1]["status"] if rows[-1].get("status") != "ok" else "cap or time"
    return {**best, "batch_sizes_tried": [r["batch_size"] for r in rows], "sweep_stopped": stopped}


def profile_steps(trainer: Trainer, steps: int, out_dir: Path, name: str, rows: int = PROFILE_ROWS) -> Path:
    """torch.profiler over `steps` training steps of `trainer` (after one warm-up step): time by kernel.

    Writes ``NAME.txt`` (torch.profiler's table, sorted by self CUDA time on a GPU, self CPU time on the CPU)
    and ``NAME.json`` (the same rows: name, calls, self milliseconds, share of the total). Returns the table's path.
    """
    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trainer.train_step()  # warm-up (allocators, autotuning, compilation)
    synchronize(trainer.device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        synchronize(trainer.device)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = events.table(sort_by=key, row_limit=rows)
    total = sum(getattr(e, key) for e in events) or 1.0
    top = sorted(events, key=lambda e: -getattr(e, key))[:rows]
    record = {
        "time": "self CUDA time" if cuda else "self CPU time",
        "steps": steps,
        "total_ms": total / 1e3,
        "rows": [
            {"name": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total}
            for e in top
        ],
    }
    (out_dir / f"{name}.txt").write_text(f"{name}: {steps} training steps, {record['time']}\n{table}\n")
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
    return out_dir / f"{name}.txt"
