"""One trainer for every system, readable top to bottom.

A step is one parameter update made of `accumulate` micro-batches (segments). Stateful models
(XL, Compressive, Memorizing) carry their memories from segment to segment, detached between
segments (truncated backpropagation through time); auxiliary losses (the Compressive
reconstruction loss) are added to the LM loss and logged per layer. A bad step (a non-finite or
exploding loss) is skipped and, too many in a row, stops the run (`longrange.train.guards`).
Metrics go to the run's sinks (`longrange.train.metrics`); checkpoints hold everything needed to
resume exactly: weights, optimiser, step, data position, RNG states and the carried memories.

`train` is a run from start to end around a `Trainer` (the run folder, the corpus, ``--init-from``,
the resume checks, the run config): `longrange.train.run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from longrange.config import ModelConfig
from longrange.data.stream import IGNORE_INDEX, DocumentStream
from longrange.eval.evaluate import evaluate
from longrange.memory.state import ModelState
from longrange.model.lm import LongRangeLM
from longrange.runtime import autocast, configure_device, maybe_compile, resolve_device, resolve_precision
from longrange.train.checkpoint import BEST, LATEST, find_checkpoint, read_checkpoint, read_weights, write_checkpoint
from longrange.train.config import TrainConfig
from longrange.train.distributed import DistInfo
from longrange.train.guards import DivergenceGuard
from longrange.train.metrics import MetricSink, metric_sinks
from longrange.train.optim import build_optimizer, lr_at
from longrange.train.run import run_training
from longrange.train.run_folder import METRICS, truncate_metrics
from longrange.train.sharding import (
    full_optimizer_state,
    full_weights,
    load_full_optimizer_state,
    load_full_weights,
    local_value,
    spread_over_ranks,
)
from longrange.train.signals import StopSignals, TrainingInterrupted

log = logging.getLogger(__name__)


class Trainer:
    """Trains `model` on `train_docs` into `out_dir`: `fit` runs the loop (`train_step` is one update), `save` and
    `resume` write and read checkpoints, `validate` measures bits per byte on `valid_docs`. Under torchrun each rank
    has its own trainer (`dist_info`)."""

    def __init__(
        self,
        model: LongRangeLM,
        cfg: TrainConfig,
        train_docs: list[bytes],
        valid_docs: list[bytes] | None,
        out_dir: str | Path,
        dist_info: DistInfo | None = None,
    ):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.dist = dist_info or DistInfo()
        self.device = resolve_device(cfg.device, local_rank=self.dist.local_rank)
        if cfg.precision == "auto":  # decided here when the caller did not (`train` decides before recording it)
            self.cfg = cfg = dataclasses.replace(cfg, precision=resolve_precision("auto", self.device, model.config))
        configure_device(self.device)
        self.model = model.to(self.device)
        self.fsdp = self.dist.enabled and cfg.shard == "fsdp"
        self.ddp = spread_over_ranks(self.model, self.dist, self.device, cfg.shard)  # before the optimiser (FSDP)
        self.forward = maybe_compile(self.ddp or self.model, cfg.compile)
        self.segment_len = cfg.segment_len or model.config.segment_len
        self.stream = DocumentStream(
            train_docs,
            cfg.batch_size,
            self.segment_len,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.valid_docs = valid_docs or []
        self.optimizer = build_optimizer(
            model, kind=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
        )
        # fp16 needs loss scaling (its range underflows small gradients); bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.divergence = DivergenceGuard(cfg.max_bad_steps, cfg.spike_factor, model.config.vocab_size)
        self.best_valid: float | None = None
        self.state: ModelState | None = None
        self.history: list[dict] = []
        self.sinks: list[MetricSink] = metric_sinks(cfg, self.out_dir) if self.dist.is_main else []

    # -- checkpointing ---------------------------------------------------------------
    def save(self, name: str = LATEST, valid_bpb: float | None = None) -> Path | None:
        """Write a checkpoint (every rank its shard); refused when the weights are not finite."""
        weights = full_weights(self.model) if self.fsdp else None  # gathered to rank 0 (a collective)
        tensors = weights.values() if weights is not None else self.model.parameters()
        finite = not self.dist.any(not all(bool(torch.isfinite(t).all()) for t in tensors))
        if not finite:
            log.error("step %d: the weights are not finite; keeping the last checkpoint", self.step)
            return None
        trainer_state = {
            "step": self.step,
            "stream": self.stream.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "model_state": self.state.state_dict() if self.state is not None else None,
            "bad_steps": self.divergence.bad_steps,
            "best_valid": self.best_valid,
            "recent_losses": self.divergence.spikes.state_dict(),
        }
        optimizer = full_optimizer_state(self.model, self.optimizer) if self.fsdp else self.optimizer.state_dict()
        if self.dist.is_main:  # the optimiser state is the same on every rank (DDP) or gathered (FSDP): one copy
            trainer_state["optimizer"] = optimizer
            trainer_state["scaler"] = self.scaler.state_dict()
        meta = {"step": self.step, "valid_bpb": valid_bpb}
        return write_checkpoint(
            self.out_dir,
            self.model,
            self.cfg.to_dict(),
            trainer_state,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            meta=meta,
            keep=self.cfg.keep_checkpoints,
            name=name,
            barrier=self.dist.barrier,
            weights=weights,
        )

    def resume(self) -> bool:
        """Continue from the run's last checkpoint; False when there is none."""
        path = find_checkpoint(self.out_dir)
        if path is None:
            return False
        target = None if self.fsdp else self.model  # FSDP: the full weights are scattered from rank 0 below
        saved = read_checkpoint(path, target, self.dist.rank, self.dist.world_size)
        shared = saved if self.dist.is_main else read_checkpoint(path, None, 0, self.dist.world_size)
        self.step = int(saved["step"])
        if self.fsdp:
            load_full_weights(self.model, read_weights(path) if self.dist.is_main else {})
            load_full_optimizer_state(self.model, self.optimizer, shared["optimizer"] if self.dist.is_main else {})
        else:
            self.optimizer.load_state_dict(shared["optimizer"])
        if shared.get("scaler"):
            self.scaler.load_state_dict(shared["scaler"])
        self.stream.load_state_dict(saved["stream"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        self.state = None
        if saved["model_state"] is not None:  # the carried memories, into a fresh state of this model
            self.state = self.model.init_state(self.stream.batch_size, self.device)
            self.state.load_state_dict(saved["model_state"])
        self.divergence.bad_steps = int(saved.get("bad_steps", 0))
        self.divergence.spikes.load_state_dict(saved.get("recent_losses"))
        self.best_valid = saved.get("best_valid")
        if self.dist.is_main:
            truncate_metrics(self.out_dir / METRICS, self.step)
        log.info("resumed %s at step %d", path, self.step)
        return True

    # -- one update --------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One update; a bad step (non-finite, or a loss spike) skips it (no update, memories as before)."""
        cfg = self.cfg
        lr = lr_at(
            self.step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            init_lr=cfg.init_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        state_before = self.state
        aux_names: list[str] = []
        sums: Tensor | None = None  # [token-weighted loss, tokens, aux losses ...], summed over ranks below
        for micro in range(cfg.accumulate):
            batch = self.stream.next_batch()
            local_tokens = int((batch.targets != IGNORE_INDEX).sum())  # a CPU tensor: no device sync
            counts = self.dist.sum_(torch.tensor([float(local_tokens)], device="cpu"))  # host-side: gloo
            # DDP averages gradients over ranks; weighting each rank's mean loss by its share of the tokens makes
            # the update the mean over every token of the global batch, as one process computes it
            weight = local_tokens * self.dist.world_size / max(float(counts[0]), 1.0)
            last = micro == cfg.accumulate - 1
            sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
            with sync:
                with autocast(self.device, cfg.precision):
                    out = self.forward(
                        batch.tokens.to(self.device),
                        state=self.state,
                        doc_start=batch.doc_start.to(self.device),
                        targets=batch.targets.to(self.device),
                    )
                    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
                self.scaler.scale(loss * (weight / cfg.accumulate)).backward()
            if self.model.stateful:
                self.state = out.state.detach()  # truncated BPTT: memories carry values, not gradients
            aux_names = list(out.aux_losses)
            values = [out.loss.detach().float() * local_tokens, torch.tensor(float(local_tokens), device=self.device)]
            values += [out.aux_losses[name].detach().float() * local_tokens for name in aux_names]
            micro_sums = torch.stack([v.to(self.device) for v in values])
            sums = micro_sums if sums is None else sums + micro_sums
        assert sums is not None
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = local_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        totals = self.dist.sum_(torch.cat([sums, grad_norm.detach().float().reshape(1).to(self.device)]))
        totals[-1] /= self.dist.world_size  # the norm is the same on every rank after DDP's all-reduce
        values = totals.tolist()  # the one host sync of a step
        tokens = max(values[1], 1.0)
        metrics = {"loss": values[0] / tokens}
        metrics.update({name: values[2 + i] / tokens for i, name in enumerate(aux_names)})
        problem = self.divergence.judge(metrics["loss"], values[-1], scaled=self.scaler.is_enabled())
        if problem is None:
            self.scaler.step(self.optimizer)  # skips the update itself when fp16 gradients overflowed
        else:
            self.state = state_before  # the memories of a bad step are not kept either
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if problem is not None:
            self.divergence.after_bad_step(self.step, problem, self.out_dir)  # raises TrainingDiverged past the limit
        if cfg.grad_clip > 0:
            metrics["grad_norm"] = values[-1]
        return {**metrics, "lr": lr, "tokens": int(values[1]), "skipped": int(problem is not None)}

    # -- the loop ----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        cfg = self.cfg
        self.model.train()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and self.dist.is_main),
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        window_tokens, window_start = 0, time.perf_counter()
        with StopSignals() as stop:
            while self.step < cfg.steps:
                metrics = self.train_step()
                window_tokens += metrics["tokens"]
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    self.log_metrics({"step": self.step, **metrics, "tokens_per_s": window_tokens / max(elapsed, 1e-9)})
                    if not cfg.progress and self.dist.is_main:
                        log.info("step %d  loss %.4f  lr %.2e", self.step, metrics["loss"], metrics["lr"])
                    window_tokens, window_start = 0, time.perf_counter()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self._validate_and_keep_best()
                if self.step % cfg.checkpoint_every == 0 and self.divergence.bad_steps and self.step < cfg.steps:
                    # its weights are those that just went wrong: writing it would rotate a good checkpoint away
                    log.warning("step %d: no checkpoint during bad steps; the kept ones stay", self.step)
                elif self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if self.dist.any(stop.signum is not None):
                    bar.close()
                    path = self.save() if self.step % cfg.checkpoint_every else find_checkpoint(self.out_dir)
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, self.step, path)
        bar.close()
        return self.history

    # -- validation and the best checkpoint ------------------------------------------------
    def _validate_and_keep_best(self) -> None:
        result = self.validate(self.cfg.eval_segments)
        if result:
            self.log_metrics({"step": self.step, **result})
        bpb = result.get("valid_bpb")
        better = bpb is not None and math.isfinite(bpb) and (self.best_valid is None or bpb < self.best_valid)
        if self.dist.any(better):  # rank 0 validates; every rank writes its shard of the best checkpoint
            self.best_valid = bpb if self.dist.is_main else self.best_valid
            self.save(BEST, valid_bpb=bpb)

    def validate(self, max_segments: int | None = None) -> dict[str, float]:
        if not self.valid_docs or not (self.dist.is_main or self.fsdp):  # FSDP: every rank runs the shards
            return {}
        # in the run's precision: an autocast around evaluate() was undone by its own (fp32 unless told otherwise)
        result = evaluate(
            self.model,
            self.valid_docs,
            batch_size=min(4, len(self.valid_docs)),
            segment_len=self.segment_len,
            device=self.device,
            max_segments=max_segments,
            precision=self.cfg.precision,
        )
        self.model.train()
        return {"valid_bpb": result["bpb"]} if self.dist.is_main else {}

    # -- metrics -------------------------------------------------------------------------
    def log_metrics(self, record: dict) -> None:
        """Keep `record` in `history` (every rank) and send it to the run's sinks (the main process's)."""
        self.history.append(record)
        for sink in self.sinks:
            sink.log(record)
        log.debug("%s", record)

    def close(self) -> None:
        """Close the metric sinks (the run is over)."""
        for sink in self.sinks:
            sink.close()


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: str | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    tokenizer: str | None = None,
) -> Path:
    """Train `model_cfg` on corpus `data` into `out_dir`; returns the run directory.

    With ``resume=True`` the run's last checkpoint is continued exactly; without it the folder must
    be new or empty (``overwrite=True`` replaces an earlier run's files). The folder is locked for
    the run. ``init_from`` (a run or checkpoint folder) starts a new run from its weights only (fine-tuning,
    e.g. a transformer-xl run into a memorizing model): tensors it lacks start fresh and are listed,
    tensors this model has no place for are skipped and listed, mis-shaped ones are an error.
    ``tokenizer``: bytes (None), ``bpe:VOCAB`` or a FILE.json (`longrange.data.tokenizer`), kept in the run.
    Raises `TrainingDiverged` and `TrainingInterrupted` (after writing a checkpoint).
    The run around the trainer is `longrange.train.run.run_training`.
    """
    return run_training(
        Trainer,
        model_cfg,
        train_cfg,
        data,
        out_dir,
        resume=resume,
        overwrite=overwrite,
        init_from=init_from,
        tokenizer=tokenizer,
    )
